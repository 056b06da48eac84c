"""One unit of text -> its shards of the prepared dataset; then the dataset's metadata.

Every unit u of U writes `pretraining_corpus-{train,validation}.array_record-u-of-U` (TFDS's
names, ArrayRecord with group size 1, possibly empty), so the shard layout depends on the units
only and a worker never waits for another. A document goes to validation when a keyed hash of
its tokens falls below `validation_fraction` (identical documents share a split). The whole unit
of work is `UnitTask`, a picklable callable: the same code runs in-process, in worker processes
and on Beam workers.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import os
import shutil
import tempfile
from collections.abc import Sequence

import numpy as np
from etils import epath

from bert_jax.data.corpus.reader import Unit, read_unit
from bert_jax.data.corpus.summary import CorpusReport, peak_rss_bytes
from bert_jax.data.corpus.words import load_segmenter
from bert_jax.data.json_tokenizer import JsonTokenizer
from bert_jax.data.tokenization import WordPieceTokenizer
from bert_jax.paths import is_remote

BUILDER_NAME = "pretraining_corpus"
VERSION = "2.0.0"
SPLITS = ("train", "validation")
_VALIDATION_KEY = b"bert_jax validation split"


def is_validation(tokens: np.ndarray, sentence_lengths: np.ndarray, fraction: float) -> bool:
    """Whether a document is held out: a keyed hash of its content against `fraction`."""
    if fraction <= 0:
        return False
    digest = hashlib.blake2b(tokens.tobytes(), digest_size=8, key=_VALIDATION_KEY)
    digest.update(sentence_lengths.tobytes())
    return int.from_bytes(digest.digest(), "little") < fraction * 2.0**64


def shard_name(split: str, index: int, count: int) -> str:
    return f"{BUILDER_NAME}-{split}.array_record-{index:05d}-of-{count:05d}"


@functools.cache
def features(word_boundaries: bool):
    """The TFDS features of one document."""
    import tensorflow_datasets as tfds

    def vector(dtype):
        encoding = tfds.features.Encoding.BYTES
        return tfds.features.Tensor(shape=(None,), dtype=dtype, encoding=encoding)

    spec = {"tokens": vector(np.int32), "sentence_lengths": vector(np.int32)}
    if word_boundaries:
        spec["word_starts"] = vector(np.uint8)
    return tfds.features.FeaturesDict(spec)


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def serialize(document: dict[str, np.ndarray]) -> bytes:
    """The tf.train.Example TFDS reads for `features()`, keys in sorted order: the same bytes in
    every process (protobuf's own map order is not)."""
    entries = b"".join(
        _field(1, _field(1, name.encode()) + _field(2, _field(1, _field(1, value.tobytes()))))
        for name, value in sorted(document.items())
    )
    return _field(1, entries)


def _open_writer(path: str):
    from array_record.python import array_record_module

    return array_record_module.ArrayRecordWriter(path, "group_size:1")


def read_records(path: str) -> list[bytes]:
    """All records of a (local or remote) ArrayRecord shard."""
    from array_record.python import array_record_module

    with _local_file(path, upload=False) as local:
        reader = array_record_module.ArrayRecordReader(local)
        records = reader.read_all()
        reader.close()
    return records


def write_records(path: str, records: Sequence[bytes]) -> None:
    with _local_file(path, upload=True) as local:
        writer = _open_writer(local)
        for record in records:
            writer.write(record)
        writer.close()


@contextlib.contextmanager
def _local_file(path: str, upload: bool):
    """A local path standing for `path` (ArrayRecord reads and writes local files only): `path`
    itself when local; else a temporary copy, downloaded first (upload=False) or uploaded after
    the block succeeds (upload=True)."""
    if not is_remote(path):
        yield path
        return
    scratch = tempfile.mkdtemp(prefix="bert_jax_shard_")
    local = os.path.join(scratch, "shard")
    try:
        if not upload:
            with epath.Path(path).open("rb") as src, open(local, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 24)
        yield local
        if upload:
            with open(local, "rb") as src, epath.Path(path).open("wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 24)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


@functools.lru_cache(maxsize=2)
def _tokenizer(vocab: tuple[str, ...], lowercase: bool, tokenizer_json: str = ""):
    if tokenizer_json:
        return JsonTokenizer(tokenizer_json, lowercase=lowercase)
    return WordPieceTokenizer(vocab, lowercase=lowercase)


@dataclasses.dataclass(frozen=True)
class UnitTask:
    """Tokenizes one unit and writes its two shards into `output_dir`; returns what it counted.

    Carries the vocabulary itself (not its path), so remote workers need no local files: its
    tokens, or a tokenizer.json's text (then vocab is empty).
    """

    vocab: tuple[str, ...]
    lowercase: bool
    max_line_chars: int
    validation_fraction: float
    word_segmenter: str
    output_dir: str
    num_units: int
    tokenizer_json: str = ""

    def __call__(self, unit: Unit, on_bytes=lambda n: None) -> dict:
        tokenizer = _tokenizer(self.vocab, self.lowercase, self.tokenizer_json)
        segmenter = load_segmenter(self.word_segmenter)
        report = CorpusReport(word_segmenter=self.word_segmenter)
        counts, sizes, last = dict.fromkeys(SPLITS, 0), dict.fromkeys(SPLITS, 0), None
        directory = epath.Path(self.output_dir)
        with contextlib.ExitStack() as stack:
            writers = {}
            for split in SPLITS:
                path = os.fspath(directory / shard_name(split, unit.index, self.num_units))
                writers[split] = _open_writer(stack.enter_context(_local_file(path, upload=True)))
            for tokens, lengths, starts in read_unit(
                unit,
                tokenizer,
                report,
                max_line_chars=self.max_line_chars,
                segmenter=segmenter,
                on_bytes=on_bytes,
            ):
                held_out = is_validation(tokens, lengths, self.validation_fraction)
                last = "validation" if held_out else "train"
                example = {"tokens": tokens, "sentence_lengths": lengths}
                if starts is not None:
                    example["word_starts"] = starts
                record = serialize(example)
                writers[last].write(record)
                counts[last] += 1
                sizes[last] += len(record)
            for writer in writers.values():
                writer.close()
        report.train_documents, report.validation_documents = counts["train"], counts["validation"]
        return {
            "unit": unit.index,
            "file": unit.file_index,
            "report": report.as_dict(),
            "counts": counts,
            "sizes": sizes,
            "last": last,
            "pid": os.getpid(),
            "peak_rss": peak_rss_bytes(),
        }


def move_last_document(output_dir: str, results: list[dict], source: str, target: str) -> None:
    """Moves the corpus's last document from split `source` to `target` (updating `results`).

    Only for tiny corpora or extreme fractions: when the hash put no document in validation
    (or every one), the last document alone is moved, so both splits exist.
    """
    result = next(r for r in reversed(results) if r["last"] is not None)
    assert result["last"] == source and result["counts"][target] == 0
    paths = {
        split: os.fspath(epath.Path(output_dir) / shard_name(split, result["unit"], len(results)))
        for split in SPLITS
    }
    records = read_records(paths[source])
    write_records(paths[source], records[:-1])
    write_records(paths[target], records[-1:])
    for name, change in ((source, -1), (target, 1)):
        result["counts"][name] += change
        result["sizes"][name] += change * len(records[-1])
        result["report"][f"{name}_documents"] += change
    result["last"] = target


def write_metadata(output_dir: str, results: list[dict], word_boundaries: bool, description: str):
    """TFDS's dataset_info.json and features.json over the shards (empty splits left out)."""
    import tensorflow_datasets as tfds

    directory = epath.Path(output_dir)
    split_infos = []
    for split in SPLITS:
        lengths = [r["counts"][split] for r in results]
        if not sum(lengths):
            for r in results:
                (directory / shard_name(split, r["unit"], len(results))).unlink(missing_ok=True)
            continue
        template = tfds.core.ShardedFileTemplate(
            data_dir=directory,
            template=tfds.core.naming.DEFAULT_FILENAME_TEMPLATE,
            dataset_name=BUILDER_NAME,
            split=split,
            filetype_suffix="array_record",
        )
        split_infos.append(
            tfds.core.SplitInfo(
                name=split,
                shard_lengths=lengths,
                num_bytes=sum(r["sizes"][split] for r in results),
                filename_template=template,
            )
        )
    tfds.folder_dataset.write_metadata(
        data_dir=directory,
        features=features(word_boundaries),
        split_infos=split_infos,
        version=VERSION,
        check_data=False,
        description=description,
        disable_shuffling=True,
    )
