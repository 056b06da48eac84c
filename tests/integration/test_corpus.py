"""Reading text corpora (with every repair counted) and the prepared TFDS dataset of documents."""

import gzip
import os
import subprocess
import sys

import numpy as np
import pytest

from bert_jax.data import corpus, input_pipeline
from bert_jax.data.corpus import reader
from bert_jax.data.tokenization import WordPieceTokenizer
from bert_jax.errors import UserError

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def tokenizer():
    return WordPieceTokenizer.from_vocab(input_pipeline.BUNDLED_VOCAB)


def _write(path, data: bytes):
    path.write_bytes(data)
    return str(path)


@pytest.fixture
def messy_files(tmp_path):
    """Two files exercising every repair; expected results are spelled out in the tests."""
    first = _write(
        tmp_path / "a.txt",
        b"In the beginning God created the heaven.\r\n"  # CRLF endings are fine.
        b"And the earth was without form \xff\xfe and void.\n"  # 2 invalid bytes.
        b"\n\n\n"  # Several blank lines: one boundary.
        b"Jesus wept.\n"  # A one-sentence document.
        b"\n"
        b"\xe2\x80\x8b\n"  # Only a zero-width space: no tokens, skipped, still opens a document.
        b"And God said, Let there be light.\n"
        + b" ".join([b"light"] * 40)  # 239 characters, split at max_line_chars=100.
        + b"\n",  # The file ends: so does its document.
    )
    empty = _write(tmp_path / "empty.txt", b"")
    second = tmp_path / "b.txt.gz"
    with gzip.open(second, "wb") as f:
        f.write(b"The LORD is my shepherd; I shall not want.\nHe maketh me to lie down.")
    return [first, empty, str(second)]


def test_read_corpus_counts_every_repair(messy_files, tokenizer):
    documents, report = corpus.read_corpus(
        messy_files, tokenizer, max_line_chars=100, show_progress=False
    )
    assert report.files == 3 and report.empty_files == [messy_files[1]]
    assert report.invalid_utf8_replaced == 2
    assert report.lines_without_tokens == 1
    assert report.long_lines_split == 1
    assert report.documents == 4 and report.one_sentence_documents == 1
    np.testing.assert_array_equal(documents.document_sizes, [2, 1, 4, 2])
    assert report.sentences == 9 == len(documents.sentence_lengths)
    assert report.tokens == len(documents.tokens) == documents.sentence_lengths.sum()
    pieces = [tokenizer.encode(" ".join(["light"] * n)) for n in (16, 16, 8)]
    np.testing.assert_array_equal(documents.sentence_lengths[4:7], [len(p) for p in pieces])
    first = documents.tokens[: documents.sentence_lengths[0]]
    assert first.tolist() == tokenizer.encode("In the beginning God created the heaven.")
    _, tokens, lengths = next(documents.documents([3]))
    assert tokenizer.decode(tokens[: lengths[0]]).startswith("the lord is my shepherd")
    assert "2 byte sequences" in report.summary() and "empty file" in report.summary()


def test_blocks_give_the_same_documents(messy_files, tokenizer, monkeypatch):
    whole, _ = corpus.read_corpus(messy_files, tokenizer, max_line_chars=100, show_progress=False)
    monkeypatch.setattr(reader, "_BLOCK_BYTES", 5)
    pieces, report = corpus.read_corpus(
        messy_files, tokenizer, max_line_chars=100, show_progress=False
    )
    for name in ("tokens", "sentence_lengths", "document_sizes"):
        np.testing.assert_array_equal(getattr(whole, name), getattr(pieces, name))
    assert report.invalid_utf8_replaced == 2 and report.lines_without_tokens == 1


def test_missing_and_empty_inputs_are_user_errors(tmp_path, tokenizer):
    with pytest.raises(UserError, match="input file not found: .*nope"):
        corpus.resolve_input_files(f"{tmp_path}/nope.txt")
    with pytest.raises(UserError, match="input file not found"):
        corpus.resolve_input_files(f"{tmp_path}/*.txt")
    with pytest.raises(UserError, match="no input files"):
        corpus.resolve_input_files(" , ")
    blank = _write(tmp_path / "blank.txt", b"\n \n\t\n\xe2\x80\x8b\n")
    with pytest.raises(UserError, match="corpus is empty"):
        corpus.read_corpus([blank], tokenizer, show_progress=False)


def test_globs_expand_sorted_and_without_duplicates(tmp_path):
    for name in ("b.txt", "a.txt", "c.md"):
        _write(tmp_path / name, b"x\n")
    files = corpus.resolve_input_files(f"{tmp_path}/c.md,{tmp_path}/*.txt,{tmp_path}/a.txt")
    assert [os.path.basename(f) for f in files] == ["c.md", "a.txt", "b.txt"]


def test_validation_split_is_a_seeded_hash_of_each_document():
    rng = np.random.default_rng(0)
    documents = [rng.integers(5, 8000, rng.integers(5, 300)).astype(np.int32) for _ in range(4000)]
    held = [corpus.is_validation(d, np.array([len(d)], np.int32), 0.05) for d in documents]
    assert 0.04 < np.mean(held) < 0.06  # binomial: 200 +- 14
    again = [corpus.is_validation(d.copy(), np.array([len(d)], np.int32), 0.05) for d in documents]
    assert held == again  # content decides, not position or the process
    assert not any(corpus.is_validation(d, np.array([len(d)], np.int32), 0.0) for d in documents)
    wider = [corpus.is_validation(d, np.array([len(d)], np.int32), 0.2) for d in documents]
    assert all(w for h, w in zip(held, wider, strict=True) if h)  # a larger fraction adds only


def _prepare(files, data_dir, **kwargs):
    options = {k: kwargs.pop(k) for k in ("max_line_chars", "validation_fraction") if k in kwargs}
    spec = corpus.corpus_spec(files, input_pipeline.BUNDLED_VOCAB, **options)
    return corpus.prepare(spec, str(data_dir), show_progress=False, **kwargs)


def _stored(prepared):
    return {
        split: [{k: v.tolist() for k, v in doc.items()} for doc in prepared.data_source(split)]
        for split in prepared.examples
    }


def test_dataset_round_trip_and_fingerprint(messy_files, tmp_path, tokenizer):
    prepared = _prepare(messy_files, tmp_path / "data", max_line_chars=100, num_workers=1)
    info = prepared.info()
    assert info["built_now"] and info["documents"] == 4 and info["invalid_utf8_replaced"] == 2
    assert info["examples"] == {"train": 3, "validation": 1}
    assert info["vocab_size"] == tokenizer.vocab_size
    documents, _ = corpus.read_corpus(messy_files, tokenizer, max_line_chars=100)
    expected = {"train": [], "validation": []}
    for _, tokens, lengths in documents.documents(range(4)):
        split = "validation" if corpus.is_validation(tokens, lengths, 0.05) else "train"
        expected[split].append({"tokens": tokens.tolist(), "sentence_lengths": lengths.tolist()})
    if not expected["validation"]:  # no document drawn: the last one is held out
        expected["validation"].append(expected["train"].pop())
    assert _stored(prepared) == expected
    assert prepared.tokenizer().fingerprint() == tokenizer.fingerprint()  # its vocab is stored

    def name(**options):
        return corpus.corpus_spec(messy_files, input_pipeline.BUNDLED_VOCAB, **options).name

    assert name(max_line_chars=100) == prepared.meta["name"]
    again = _prepare(messy_files, tmp_path / "data", max_line_chars=100)
    assert again.directory == prepared.directory and not again.built_now
    assert name(max_line_chars=100, lowercase=False) != prepared.meta["name"]
    assert name(max_line_chars=100, validation_fraction=0.1) != prepared.meta["name"]
    with open(messy_files[0], "ab") as f:
        f.write(b"One more verse.\n")
    assert name(max_line_chars=100) != prepared.meta["name"]


def test_tiny_corpora_get_both_splits(tmp_path):
    two = _write(tmp_path / "two.txt", b"In the beginning.\n\nJesus wept.\n")
    for fraction in (0.01, 0.99):  # the hash draws none / both: the last document is moved
        prepared = _prepare([two], tmp_path / f"d{fraction}", validation_fraction=fraction)
        assert prepared.examples == {"train": 1, "validation": 1}, fraction
    one = _write(tmp_path / "one.txt", b"Jesus wept.\n")
    assert _prepare([one], tmp_path / "d1", validation_fraction=0.99).examples == {"train": 1}
    assert _prepare([two], tmp_path / "d0", validation_fraction=0).examples == {"train": 2}


def test_kjv_counts(shared_data, tokenizer):
    documents, report = corpus.read_corpus(
        [str(shared_data / "corpora" / "kjv.txt")], tokenizer, show_progress=False
    )
    assert (report.documents, report.sentences) == (1189, 31102)
    assert report.lines_without_tokens == report.invalid_utf8_replaced == 0
    assert report.unknown_tokens == 0 and report.one_sentence_documents == 0
    assert documents.document_sizes.sum() == 31102


def test_bundled_corpus_is_the_shared_kjv(shared_data):
    with gzip.open(input_pipeline.BUNDLED_CORPUS, "rb") as f:
        bundled = f.read()
    assert bundled == (shared_data / "corpora" / "kjv.txt").read_bytes()
    sizes = [
        os.path.getsize(input_pipeline.BUNDLED_CORPUS),
        os.path.getsize(input_pipeline.BUNDLED_VOCAB),
    ]
    assert sum(sizes) < 2_000_000


def _prepare_cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "bert_jax.data.prepare", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=False,
    )


def test_cli_prints_a_summary(messy_files, tmp_path):
    result = _prepare_cli(
        f"--input_files={messy_files[0]},{os.path.dirname(messy_files[0])}/*.gz",
        f"--vocab_file={input_pipeline.BUNDLED_VOCAB}",
        f"--data_dir={tmp_path / 'data'}",
        "--max_line_chars=100",
    )
    assert result.returncode == 0, result.stderr
    assert "dataset built" in result.stdout
    assert "Downloading" not in result.stdout + result.stderr  # nothing is downloaded
    for line in (
        "documents               4",
        "invalid UTF-8 replaced  2",
        "lines skipped           1",
    ):
        assert line in result.stdout


@pytest.mark.parametrize(
    "input_files,message",
    [("missing.txt", "error: input file not found: missing.txt"), ("EMPTY", "error: the corpus")],
)
def test_cli_reports_bad_input_in_one_line(tmp_path, input_files, message):
    if input_files == "EMPTY":
        input_files = _write(tmp_path / "empty.txt", b"\n\n")
    result = _prepare_cli(
        f"--input_files={input_files}",
        f"--vocab_file={input_pipeline.BUNDLED_VOCAB}",
        f"--data_dir={tmp_path / 'data'}",
    )
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(message)
    assert "Traceback" not in result.stderr
