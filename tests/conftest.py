"""Shared test setup: 8 fake CPU devices for mesh tests, and the shared data folder."""

import gzip
import os
import pathlib

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
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


def write_short_documents(path: pathlib.Path, documents: int = 1000) -> pathlib.Path:
    """A corpus of short documents (1 to 3 verses of the bundled KJV each, as reviews or posts),
    for packing: several examples fit in a row of 256."""
    from bert_jax.data.pipeline import BUNDLED_CORPUS

    with gzip.open(BUNDLED_CORPUS, "rt", encoding="utf-8") as f:
        verses = [line.strip() for line in f if line.strip()]
    sizes = np.random.RandomState(0).randint(1, 4, documents)
    ends = np.cumsum(sizes)
    text = ["\n".join(verses[e - s : e]) for s, e in zip(sizes, ends, strict=True)]
    path.write_text("\n\n".join(text) + "\n", encoding="utf-8")
    return path
