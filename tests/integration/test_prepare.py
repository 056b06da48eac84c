"""Streaming preparation in units, on N workers and on Apache Beam, whole-word boundaries from a
word segmenter, and the check that stops a dirty corpus."""

import gzip
import os
import subprocess
import sys

import numpy as np
import pytest
import tqdm
from conftest import REPO_ROOT

from bert_jax.data import corpus, input_pipeline
from bert_jax.data.corpus import reader, words, workers
from bert_jax.data.tokenization import WordPieceTokenizer
from bert_jax.errors import UserError
from bert_jax.pretraining.config import data_config_dict


@pytest.fixture(scope="module")
def tokenizer():
    return WordPieceTokenizer.from_vocab(input_pipeline.BUNDLED_VOCAB)


def _kjv_slice(count: int) -> bytes:
    """The first `count` chapters of the bundled KJV."""
    with gzip.open(input_pipeline.BUNDLED_CORPUS, "rb") as f:
        return b"\n\n".join(f.read().split(b"\n\n")[:count]) + b"\n"


@pytest.fixture(scope="module")
def rough_corpus(tmp_path_factory):
    """Files with every kind of blank line and repair, big enough to be cut into many units."""
    root = tmp_path_factory.mktemp("rough")
    chapters = _kjv_slice(40).split(b"\n\n")
    separators = [b"\n\n", b"\n \t\n", b"\r\n\r\n", b"\n\xe3\x80\x80\n", b"\n\n\n"]  # U+3000: blank
    text = b""
    for i, chapter in enumerate(chapters):
        if i % 7 == 3:
            chapter = chapter.replace(b" the ", b" the \xff\xfe ", 2)  # invalid UTF-8
        if i % 9 == 4:
            chapter += b"\n\xe2\x80\x8b"  # a line without tokens
        if i % 11 == 5:
            chapter += b"\n" + b" ".join([b"light"] * 50)  # split at max_line_chars=100
        text += chapter + separators[i % len(separators)]
    big = root / "big.txt"
    big.write_bytes(text)
    (root / "empty.txt").write_bytes(b"")
    with gzip.open(root / "small.txt.gz", "wb") as f:
        f.write(b"The LORD is my shepherd; I shall not want.\nHe maketh me to lie down.")
    return [str(big), str(root / "empty.txt"), str(root / "small.txt.gz")]


_COUNTED = (
    "files", "empty_files", "bytes", "documents", "sentences", "tokens", "unknown_tokens",
    "one_sentence_documents", "invalid_utf8_replaced", "invalid_utf8_bytes", "long_lines_split",
    "lines_without_tokens", "train_documents", "validation_documents",
)  # fmt: skip


def _counts(info):
    return {k: info[k] for k in _COUNTED}


def test_units_cut_before_blank_lines_and_read_like_whole_files(rough_corpus, tokenizer):
    files = reader.stat_files(rough_corpus)
    units = reader.plan_units(files, unit_bytes=2000)
    data = open(rough_corpus[0], "rb").read()
    cuts = [u.start for u in units if u.file_index == 0 and u.start > 0]
    assert len(cuts) > 10
    for cut in cuts:  # each cut is the start of a blank line, right after a newline
        assert data[cut - 1 : cut] == b"\n" and not data[cut:].split(b"\n", 1)[0].strip()
    assert [u.size for u in units if u.file_index == 0] == list(
        np.diff([0, *cuts, len(data)])
    )  # the units tile the file
    assert [u.file_index for u in units][-2:] == [1, 2]  # small and gzip files stay whole

    whole, whole_report = corpus.read_corpus(rough_corpus, tokenizer, max_line_chars=100)
    report = corpus.CorpusReport(files=3)
    documents = [
        doc
        for unit in units
        for doc in reader.read_unit(unit, tokenizer, report, max_line_chars=100)
    ]
    assert report.documents == whole_report.documents == len(whole.document_sizes) == 40 + 1
    np.testing.assert_array_equal(np.concatenate([d[0] for d in documents]), whole.tokens)
    assert [len(d[1]) for d in documents] == whole.document_sizes.tolist()
    invalid = 2 * data.count(b"\xff\xfe")
    assert whole_report.invalid_utf8_replaced == whole_report.invalid_utf8_bytes == invalid > 6
    lines = data.decode("utf-8", "replace").split("\n")
    assert whole_report.long_lines_split == sum(len(line.strip()) > 100 for line in lines) > 4
    assert whole_report.lines_without_tokens == 4
    for name in ("sentences", "tokens", "invalid_utf8_bytes", "long_lines_split", "lines"):
        assert getattr(report, name) == getattr(whole_report, name), name


def test_reading_streams_documents(monkeypatch, rough_corpus, tokenizer):
    monkeypatch.setattr(reader, "_BLOCK_BYTES", 4096)
    (unit,) = reader.plan_units(reader.stat_files(rough_corpus[:1]), unit_bytes=0)
    read = []
    documents = reader.read_unit(unit, tokenizer, corpus.CorpusReport(), on_bytes=read.append)
    next(documents)
    assert sum(read) <= 8192 < unit.size  # the first document came after two blocks, not all


def _prepare(files, data_dir, **kwargs):
    names = ("max_line_chars", "word_segmenter", "validation_fraction")
    options = {k: kwargs.pop(k) for k in names if k in kwargs}
    spec = corpus.corpus_spec(files, kwargs.pop("vocab", input_pipeline.BUNDLED_VOCAB), **options)
    return corpus.prepare(spec, str(data_dir), show_progress=False, **kwargs)


def _stored(prepared):
    return {
        split: [{k: v.tolist() for k, v in doc.items()} for doc in prepared.data_source(split)]
        for split in prepared.examples
    }


def _shards(prepared):
    names = sorted(n for n in os.listdir(prepared.directory) if ".array_record-" in n)
    return {n: open(os.path.join(prepared.directory, n), "rb").read() for n in names}


def test_workers_and_beam_write_the_same_dataset(rough_corpus, tmp_path):
    options = dict(max_line_chars=100, unit_bytes=2000)
    one = _prepare(rough_corpus, tmp_path / "one", num_workers=1, **options)
    two = _prepare(rough_corpus, tmp_path / "two", num_workers=2, **options)
    assert one.meta["units"] == two.meta["units"] > 10
    assert two.report["workers"] == 2
    assert two.report["peak_rss_bytes"] > one.report["peak_rss_bytes"]  # workers counted
    assert _shards(one) == _shards(two)  # byte for byte, shard for shard
    stored = _stored(one)
    assert _stored(two) == stored and len(stored["validation"]) >= 1
    assert _counts(two.info()) == _counts(one.info())
    assert one.report["empty_files"] == [rough_corpus[1]] and one.report["invalid_utf8_bytes"] > 6

    runner = "runner=DirectRunner,direct_num_workers=2,direct_running_mode=multi_processing"
    beam = _prepare(rough_corpus, tmp_path / "beam", beam_pipeline_options=runner, **options)
    assert beam.meta["runner"].startswith("Beam") and beam.report["workers"] == 0
    assert _stored(beam) == stored
    assert _counts(beam.info()) == _counts(one.info())


def test_progress_bar_counts_every_byte_across_workers(rough_corpus, tmp_path, monkeypatch):
    bars = []

    class Recording(tqdm.tqdm):
        def close(self):
            bars.append((self.n, self.total, self.desc))
            super().close()

    monkeypatch.setattr(workers.tqdm, "tqdm", Recording)
    spec = corpus.corpus_spec(rough_corpus, input_pipeline.BUNDLED_VOCAB)
    corpus.prepare(spec, str(tmp_path), num_workers=2, unit_bytes=2000, show_progress=True)
    total = sum(os.path.getsize(p) for p in rough_corpus)  # gzip: its compressed bytes
    assert bars[0] == (total, total, "tokenizing (2 workers)")


def test_a_failing_worker_is_one_clear_error(tmp_path, monkeypatch):
    path = tmp_path / "a.txt"
    path.write_bytes(_kjv_slice(3))
    spec = corpus.corpus_spec([str(path)], input_pipeline.BUNDLED_VOCAB)
    units = reader.plan_units(spec.files)
    task = corpus.writer.UnitTask(
        tuple(spec.tokenizer.vocab), True, 100, 0.05, "no_such_module:f", str(tmp_path), 1
    )
    with pytest.raises(UserError, match="--word_segmenter=no_such_module:f: cannot import"):
        workers.run_units(task, units * 2, num_workers=2, show_progress=False)


# -- whole-word boundaries ---------------------------------------------------------------------

_ZH_VOCAB = (
    ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    + list("我爱北京天安门很严重年，。")
    + ["play", "##ing", "football", "in", "20", "##24", "co", "##vid", "##19"]
)


@pytest.fixture
def zh_vocab(tmp_path):
    path = tmp_path / "zh_vocab.txt"
    path.write_text("".join(t + "\n" for t in _ZH_VOCAB), encoding="utf-8")
    return str(path)


def _whole_words(tokens, starts):
    words = []
    for token, start in zip(tokens, starts, strict=True):
        if start:
            words.append(token)
        else:
            words[-1] += token.removeprefix("##")
    return words


def test_jieba_word_starts_on_mixed_text(tmp_path, zh_vocab):
    pytest.importorskip("jieba")
    text = tmp_path / "zh.txt"
    text.write_text(
        "我爱北京天安门 playing football in 2024年。\nCOVID19很严重。\n", encoding="utf-8"
    )
    plain = _prepare([str(text)], tmp_path / "plain", vocab=zh_vocab, validation_fraction=0)
    (document,) = _stored(plain)["train"]
    assert "word_starts" not in document and not plain.word_boundaries
    prepared = _prepare([str(text)], tmp_path / "jieba", vocab=zh_vocab, word_segmenter="jieba")
    assert prepared.meta["name"] != plain.meta["name"] and prepared.word_boundaries
    (document,) = _stored(prepared)["train"]
    assert document["tokens"] == _stored(plain)["train"][0]["tokens"]  # ids never change
    tokens = [_ZH_VOCAB[i] for i in document["tokens"]]
    assert " ".join(tokens) == (
        "我 爱 北 京 天 安 门 play ##ing football in 20 ##24 年 。 co ##vid ##19 很 严 重 。"
    )
    assert _whole_words(tokens, document["word_starts"]) == (  # jieba's words, ## kept
        "我 爱 北京 天安门 playing football in 2024 年 。 covid19 很 严重 。".split()
    )
    assert prepared.report["segmenter_words"] == 14 and prepared.report["word_segmenter"] == (
        corpus.corpus_spec([str(text)], zh_vocab, word_segmenter="jieba").settings.word_segmenter
    )

    subword = prepared.tokenizer().subword_mask  # the consumer's one call, either dataset:
    source = prepared.data_source("train")
    assert words.word_starts(source[0], subword).tolist() == document["word_starts"]
    no_boundaries = words.word_starts(plain.data_source("train")[0], subword).tolist()
    assert no_boundaries == [0 if t.startswith("##") else 1 for t in tokens]


def test_any_segmenter_by_import_path(tmp_path, zh_vocab):
    text = tmp_path / "zh.txt"
    text.write_text("我爱 北京 天安门\n", encoding="utf-8")
    prepared = _prepare(
        [str(text)], tmp_path / "d", vocab=zh_vocab, word_segmenter="builtins:str.split"
    )
    (document,) = _stored(prepared)["train"]
    assert document["word_starts"] == [1, 0, 1, 0, 1, 0, 0]
    for spec, message in [
        ("no_such_module:f", "cannot import"),
        ("builtins:nope", "builtins has no nope"),
        ("jiebba", "use none, jieba or module:callable"),
    ]:
        with pytest.raises(UserError, match=f"--word_segmenter={spec}: {message}"):
            corpus.corpus_spec([str(text)], zh_vocab, word_segmenter=spec)


# -- a binary or garbage corpus does not pass silently ----------------------------------------


def _prepare_cli(*args):
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "bert_jax.data.prepare",
            f"--vocab_file={input_pipeline.BUNDLED_VOCAB}",
            *args,
        ],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        check=False,
    )


@pytest.mark.parametrize(
    "flag, message",
    [
        ("--validation_fraction=1.5", "validation_fraction must be in [0, 1), got 1.5"),
        ("--num_workers=-1", "num_workers must be >= 0"),
        ("--data_dir=FILE", "is a file, not a directory: choose another path"),
        ("--word_segmenter=jiebba", "--word_segmenter=jiebba: use none, jieba or module:callable"),
    ],
)
def test_bad_settings_are_one_line(tmp_path, flag, message):
    text = tmp_path / "a.txt"
    text.write_bytes(_kjv_slice(2))
    flag = flag.replace("FILE", str(text))  # a data_dir that is a file
    result = _prepare_cli(f"--input_files={text}", f"--data_dir={tmp_path / 'data'}", flag)
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0] and "Traceback" not in result.stderr


def test_binary_corpus_stops_unless_allowed(tmp_path):
    binary = tmp_path / "model.bin"
    binary.write_bytes(np.random.default_rng(0).integers(0, 256, 30_000, np.uint8).tobytes())
    result = _prepare_cli(f"--input_files={binary}", f"--data_dir={tmp_path / 'data'}")
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.stderr
    assert "of the bytes are not UTF-8 (limit 1%)" in errors[0]
    assert "--allow_dirty_corpus" in errors[0]
    assert not list((tmp_path / "data").rglob("corpus.json"))  # nothing kept
    allowed = _prepare_cli(
        f"--input_files={binary}", f"--data_dir={tmp_path / 'data'}", "--allow_dirty_corpus"
    )
    assert allowed.returncode == 0, allowed.stderr
    assert "WARNING: dirty corpus kept (--allow_dirty_corpus)" in allowed.stderr


def test_wrong_vocabulary_stops_pretraining_on_first_use(tmp_path):
    chinese = tmp_path / "zh.txt"
    chinese.write_text("迈向充满希望的新世纪。\n同胞们、朋友们、女士们、先生们。\n" * 50, "utf-8")
    config = data_config_dict()
    config.update(input_files=str(chinese), data_dir=str(tmp_path / "data"), show_progress=False)
    with pytest.raises(
        UserError, match=r"100.0% of the tokens are \[UNK\].*allow_dirty_corpus=True"
    ):
        input_pipeline.prepare_data(config)
    config.allow_dirty_corpus = True
    info = input_pipeline.prepare_data(config)
    assert info["unknown_tokens"] == info["tokens"] == 27 * 50
