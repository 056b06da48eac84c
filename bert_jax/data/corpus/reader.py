"""Text corpus -> tokenized documents: a TFDS dataset of ArrayRecord files, no TensorFlow needed.

Input format (google-research/bert `create_pretraining_data.py`): UTF-8 text, one sentence per
line, a blank line between documents; files may be gzip-compressed (*.gz). The end of a file also
ends a document (the reference would run it into the next file's first document).

Each example is one document: `tokens` int32 [num_tokens] (all its sentences back to back) and
`sentence_lengths` int32 [num_sentences]. A `validation` split holds a seeded random sample of
whole documents; `train` holds the rest. The builder config name carries a fingerprint of the
input bytes, the tokenizer and the options, so changing any of them builds a new dataset beside
the old one instead of silently reusing it.

The tokenized corpus is held in memory while the dataset is written (4 bytes per token).
"""

from __future__ import annotations

import dataclasses
import glob
import gzip
import hashlib
import io
import json
import logging
import os
import re
import time
from collections.abc import Iterator, Sequence

import numpy as np
import tensorflow_datasets as tfds
import tqdm
from absl import logging as absl_logging

from bert_jax.data.tokenization import WordPieceTokenizer
from bert_jax.errors import UserError

# Bumped whenever the stored format or the reading rules change.
_FORMAT_VERSION = 1
_BLOCK_BYTES = 1 << 24
_REPLACEMENT_CHAR_UTF8 = "\ufffd".encode()
_LAST_WHITESPACE = re.compile(r"\s(?=\S*$)")


class _QuietCustomConfigs(logging.Filter):
    """TFDS warns about every config not declared on the class; ours come from the inputs."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = str(record.msg)
        return not message.startswith(("Using custom data configuration", "Variant folder"))


absl_logging.get_absl_logger().addFilter(_QuietCustomConfigs())


def resolve_input_files(input_files: str | Sequence[str]) -> list[str]:
    """Expands comma-separated paths and glob patterns, in the given order, globs sorted."""
    patterns = input_files.split(",") if isinstance(input_files, str) else list(input_files)
    patterns = [os.path.expanduser(str(p).strip()) for p in patterns if str(p).strip()]
    if not patterns:
        raise UserError("no input files given: pass --input_files=a.txt,b.txt (globs accepted)")
    files: list[str] = []
    for pattern in patterns:
        matches = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
        matches = [m for m in matches if os.path.isfile(m)]
        if not matches:
            raise UserError(f"input file not found: {pattern} (check the path in --input_files)")
        files.extend(m for m in matches if m not in files)
    return files


def fingerprint_files(files: Sequence[str]) -> str:
    """Content hash of the files, in order (names do not matter, bytes do)."""
    digest = hashlib.blake2b(digest_size=16)
    for path in files:
        with open(path, "rb") as f:
            digest.update(hashlib.file_digest(f, "blake2b").digest())
    return digest.hexdigest()


@dataclasses.dataclass
class CorpusReport:
    """What reading the corpus found; every skipped or repaired line is counted here."""

    files: int = 0
    empty_files: list[str] = dataclasses.field(default_factory=list)
    bytes: int = 0
    lines: int = 0
    documents: int = 0
    sentences: int = 0
    tokens: int = 0
    unknown_tokens: int = 0
    one_sentence_documents: int = 0
    invalid_utf8_replaced: int = 0
    long_lines_split: int = 0
    lines_without_tokens: int = 0
    train_documents: int = 0
    validation_documents: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    def summary(self) -> str:
        rows = [
            ("files", f"{self.files:,} ({len(self.empty_files)} empty)"),
            ("documents", f"{self.documents:,} ({self.one_sentence_documents:,} of one sentence)"),
            ("  train / validation", f"{self.train_documents:,} / {self.validation_documents:,}"),
            ("sentences", f"{self.sentences:,}"),
            ("tokens", f"{self.tokens:,} ({self.unknown_tokens:,} [UNK])"),
            ("invalid UTF-8 replaced", f"{self.invalid_utf8_replaced:,} byte sequences (U+FFFD)"),
            ("long lines split", f"{self.long_lines_split:,}"),
            ("lines skipped", f"{self.lines_without_tokens:,} (no tokens after normalisation)"),
            ("time", f"{self.seconds:.1f} s"),
        ]
        lines = [f"  {name:<24}{value}" for name, value in rows]
        lines += [f"  empty file: {path}" for path in self.empty_files]
        return "\n".join(lines)


@dataclasses.dataclass
class TokenizedDocuments:
    """A corpus in three flat arrays.

    tokens: int32 [num_tokens], sentences back to back.
    sentence_lengths: int32 [num_sentences], all >= 1.
    document_sizes: int64 [num_documents], sentences per document, all >= 1.
    """

    tokens: np.ndarray
    sentence_lengths: np.ndarray
    document_sizes: np.ndarray

    def documents(self, indices: Sequence[int]) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """Yields (index, tokens, sentence_lengths) for the given document indices."""
        sentence_ends = np.cumsum(self.document_sizes)
        token_ends = np.concatenate([[0], np.cumsum(self.sentence_lengths, dtype=np.int64)])
        for i in indices:
            first, last = sentence_ends[i] - self.document_sizes[i], sentence_ends[i]
            tokens = self.tokens[token_ends[first] : token_ends[last]]
            yield int(i), tokens, self.sentence_lengths[first:last]


def _split_long_line(line: str, limit: int) -> list[str]:
    """Cuts a line into pieces of at most `limit` characters, at the last space if there is one."""
    pieces = []
    while len(line) > limit:
        match = _LAST_WHITESPACE.search(line, 0, limit + 1)
        cut = match.start() if match and match.start() > 0 else limit
        pieces.append(line[:cut])
        line = line[cut:].lstrip()
    if line:
        pieces.append(line)
    return pieces


def _read_blocks(path: str, progress: tqdm.tqdm) -> Iterator[tuple[list[str], int]]:
    """Yields (lines, invalid UTF-8 sequences replaced) per ~16 MB block ending at a newline."""
    with open(path, "rb") as raw:
        stream = gzip.GzipFile(fileobj=raw) if path.endswith(".gz") else io.BufferedReader(raw)
        position = 0
        while True:
            block = stream.read(_BLOCK_BYTES)
            if not block:
                break
            block += stream.readline()
            text = block.decode("utf-8", errors="replace")
            replaced = text.count("\ufffd") - block.count(_REPLACEMENT_CHAR_UTF8)
            if text.endswith("\n"):
                text = text[:-1]
            progress.update(raw.tell() - position)
            position = raw.tell()
            yield text.split("\n"), replaced


def read_corpus(
    input_files: Sequence[str],
    tokenizer: WordPieceTokenizer,
    *,
    max_line_chars: int = 20_000,
    show_progress: bool = True,
) -> tuple[TokenizedDocuments, CorpusReport]:
    """Reads and tokenizes text files into documents of sentences, counting all repairs.

    Raises UserError when a file is missing or when no file holds any text.
    """
    start = time.perf_counter()
    report = CorpusReport(files=len(input_files))
    token_blocks, length_blocks, new_document_blocks = [], [], []
    sizes = [os.path.getsize(path) for path in input_files]
    progress = tqdm.tqdm(
        total=sum(sizes), unit="B", unit_scale=True, desc="tokenizing", disable=not show_progress
    )
    with progress:
        for path, size in zip(input_files, sizes, strict=True):
            report.bytes += size
            at_document_start = True
            file_sentences = 0
            for raw_lines, replaced in _read_blocks(path, progress):
                report.invalid_utf8_replaced += replaced
                report.lines += len(raw_lines)
                sentences, starts_document = [], []
                for line in raw_lines:
                    line = line.strip()
                    if not line:
                        at_document_start = True
                        continue
                    if len(line) > max_line_chars:
                        pieces = _split_long_line(line, max_line_chars)
                        report.long_lines_split += 1
                    else:
                        pieces = [line]
                    for piece in pieces:
                        sentences.append(piece)
                        starts_document.append(at_document_start)
                        at_document_start = False
                tokens, lengths = tokenizer.encode_lines(sentences)
                kept = lengths > 0
                report.lines_without_tokens += int(np.sum(~kept))
                # A line without tokens hands its "starts a document" flag on to the next line.
                starts = np.asarray(starts_document, bool)
                next_kept = np.cumsum(kept) - kept
                starts_kept = np.zeros(int(kept.sum()), bool)
                inside = next_kept < len(starts_kept)
                np.logical_or.at(starts_kept, next_kept[inside], starts[inside])
                at_document_start |= bool(starts[~inside].any())
                token_blocks.append(tokens)
                length_blocks.append(lengths[kept].astype(np.int32))
                new_document_blocks.append(starts_kept)
                file_sentences += int(kept.sum())
            if file_sentences == 0:
                report.empty_files.append(path)

    if not any(len(block) for block in length_blocks):
        raise UserError(
            f"the corpus is empty: no tokens in {', '.join(input_files)} "
            "(expected UTF-8 text, one sentence per line, blank lines between documents)"
        )
    sentence_lengths = np.concatenate(length_blocks)
    new_document = np.concatenate(new_document_blocks)
    new_document[0] = True
    document_starts = np.flatnonzero(new_document)
    document_sizes = np.diff(np.append(document_starts, len(sentence_lengths)))
    documents = TokenizedDocuments(np.concatenate(token_blocks), sentence_lengths, document_sizes)
    report.documents = len(document_sizes)
    report.sentences = len(sentence_lengths)
    report.tokens = len(documents.tokens)
    report.unknown_tokens = int(np.sum(documents.tokens == tokenizer.unk_id))
    report.one_sentence_documents = int(np.sum(document_sizes == 1))
    report.seconds = time.perf_counter() - start
    return documents, report


def validation_documents(num_documents: int, fraction: float) -> np.ndarray:
    """Sorted indices of the held-out documents: a fixed-seed sample, at least one if any."""
    if fraction <= 0 or num_documents < 2:
        return np.zeros([0], np.int64)
    count = min(max(1, round(fraction * num_documents)), num_documents - 1)
    return np.sort(np.random.default_rng(0).permutation(num_documents)[:count])


@dataclasses.dataclass(eq=False)
class CorpusConfig(tfds.core.BuilderConfig):
    """What a built corpus depends on; `name` is derived from their fingerprint."""

    input_files: tuple[str, ...] = ()
    vocab_file: str = ""
    lowercase: bool = True
    validation_fraction: float = 0.05
    max_line_chars: int = 20_000
    show_progress: bool = True


class PretrainingCorpus(tfds.core.GeneratorBasedBuilder):
    """Tokenized documents for BERT pretraining (see the module docstring)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Tokenized documents with sentence lengths."}
    BUILDER_CONFIGS: list[CorpusConfig] = []

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(
                {
                    "tokens": tfds.features.Tensor(
                        shape=(None,), dtype=np.int32, encoding=tfds.features.Encoding.BYTES
                    ),
                    "sentence_lengths": tfds.features.Tensor(
                        shape=(None,), dtype=np.int32, encoding=tfds.features.Encoding.BYTES
                    ),
                }
            ),
            metadata=tfds.core.MetadataDict(),
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # Local files only.
        config: CorpusConfig = self.builder_config
        tokenizer = WordPieceTokenizer.from_vocab(config.vocab_file, lowercase=config.lowercase)
        documents, report = read_corpus(
            list(config.input_files),
            tokenizer,
            max_line_chars=config.max_line_chars,
            show_progress=config.show_progress,
        )
        held_out = validation_documents(report.documents, config.validation_fraction)
        train = np.setdiff1d(np.arange(report.documents), held_out)
        report.train_documents, report.validation_documents = len(train), len(held_out)
        self.info.metadata["report"] = report.as_dict()
        self.info.metadata["tokenizer_fingerprint"] = tokenizer.fingerprint()
        self.info.metadata["vocab_size"] = tokenizer.vocab_size
        splits = {"train": self._generate_examples(documents, train)}
        if len(held_out):
            splits["validation"] = self._generate_examples(documents, held_out)
        return splits

    def _generate_examples(self, documents: TokenizedDocuments, indices: np.ndarray):
        for index, tokens, sentence_lengths in documents.documents(indices):
            yield index, {"tokens": tokens, "sentence_lengths": sentence_lengths}


def corpus_builder(
    input_files: str | Sequence[str],
    vocab_file: str,
    *,
    data_dir: str,
    lowercase: bool = True,
    validation_fraction: float = 0.05,
    max_line_chars: int = 20_000,
    show_progress: bool = True,
) -> PretrainingCorpus:
    """The builder for these inputs; its config name fingerprints inputs, tokenizer and options."""
    files = resolve_input_files(input_files)
    tokenizer = WordPieceTokenizer.from_vocab(vocab_file, lowercase=lowercase)
    key = [
        _FORMAT_VERSION,
        fingerprint_files(files),
        tokenizer.fingerprint(),
        float(validation_fraction),
        int(max_line_chars),
    ]
    digest = hashlib.sha256(json.dumps(key).encode()).hexdigest()[:16]
    stem = re.sub(r"[^a-z0-9]+", "_", os.path.basename(files[0]).split(".")[0].lower()).strip("_")
    config = CorpusConfig(
        name=f"{stem or 'corpus'}_{digest}",
        description=f"{len(files)} file(s) from {files[0]}, vocab {vocab_file}",
        input_files=tuple(os.path.abspath(f) for f in files),
        vocab_file=os.path.abspath(vocab_file),
        lowercase=lowercase,
        validation_fraction=validation_fraction,
        max_line_chars=max_line_chars,
        show_progress=show_progress,
    )
    return PretrainingCorpus(config=config, data_dir=data_dir, file_format="array_record")


def prepare_corpus(builder: PretrainingCorpus) -> dict:
    """Builds the dataset unless a complete copy exists; returns the corpus report and paths."""
    built_now = not builder.is_prepared()
    if built_now:
        show_progress = builder.builder_config.show_progress
        was_shown = getattr(tfds.core.utils.tqdm_utils, "_active", True)
        tfds.display_progress_bar(show_progress and was_shown)
        try:
            builder.download_and_prepare(
                download_config=tfds.download.DownloadConfig(
                    compute_stats=tfds.download.ComputeStatsMode.SKIP
                )
            )
        finally:
            tfds.display_progress_bar(was_shown)
    metadata = builder.info.metadata
    return {
        **metadata["report"],
        "examples": {name: split.num_examples for name, split in builder.info.splits.items()},
        "built_now": built_now,
        "dataset_dir": os.fspath(builder.data_dir),
        "tokenizer_fingerprint": metadata["tokenizer_fingerprint"],
        "vocab_size": metadata["vocab_size"],
    }
