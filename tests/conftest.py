"""Shared test setup: 8 fake CPU devices for mesh tests, and the shared data folder."""

import os
import pathlib

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
    """../shared/data beside the repo (dev machines and CI only); skips visibly when absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(
            f"{SHARED_DATA} not found: real-corpus checks need ../shared/data beside the repo"
        )
    return SHARED_DATA


@pytest.fixture(scope="module")
def tf():
    """TensorFlow (the `tf` extra, `make test-tf`); the main suite skips its tests visibly."""
    tf = pytest.importorskip(
        "tensorflow", reason="TensorFlow absent: install the extra with pip install -e '.[tf]'"
    )
    tf.get_logger().setLevel("ERROR")
    return tf
