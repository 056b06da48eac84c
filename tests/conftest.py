"""Shared test setup: 8 fake CPU devices for mesh tests, and the shared data folder."""

import os
import pathlib

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


def demo_config(mode: str = "test"):
    """configs/demo.py's `get_config(mode)`: the tiny pretraining setup the tests share."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("demo_config", REPO_ROOT / "configs" / "demo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(mode)


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


@pytest.fixture(scope="session")
def gcs_emulator(tmp_path_factory):
    """A GCS API on 127.0.0.1 (gcp-storage-emulator, in memory) with one bucket, for the
    session: yields (bucket, env) where env points gcsfs, etils.epath, tensorstore and Orbax at
    it with no credentials. Skips visibly when the emulator or gcsfs is not installed."""
    import importlib.util
    import socket
    import subprocess
    import sys
    import time

    for module in ("gcp_storage_emulator", "gcsfs"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} not installed (pip install -e '.[dev]')")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    bucket = "bert-jax-ci"
    log = tmp_path_factory.mktemp("gcs") / "emulator.log"
    server = subprocess.Popen(
        [sys.executable, str(REPO_ROOT / "tests" / "gcs_emulator.py"), "start"]
        + ["--host=127.0.0.1", f"--port={port}"]
        + ["--in-memory", f"--default-bucket={bucket}", "--quiet"],
        stdout=open(log, "w"),
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    env = {
        "STORAGE_EMULATOR_HOST": url,  # gcsfs (etils.epath's gs:// backend)
        "TENSORSTORE_GCS_HTTP_URL": url,  # tensorstore (Orbax)
        "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",  # no minute-long gRPC bucket-type probe
        "CLOUDSDK_CONFIG": str(tmp_path_factory.mktemp("no_gcloud")),
    }
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                server.kill()
                pytest.fail(f"gcp-storage-emulator did not start: {log.read_text()[-2000:]}")
            time.sleep(0.1)
    saved = {k: os.environ.get(k) for k in [*env, "GOOGLE_APPLICATION_CREDENTIALS"]}
    os.environ.pop("GOOGLE_APPLICATION_CREDENTIALS", None)  # no credentials anywhere
    os.environ.update(env)  # this process's gcsfs / epath too
    try:
        yield bucket, env
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
