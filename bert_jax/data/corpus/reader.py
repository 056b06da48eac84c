"""Reading text into tokenized documents, unit by unit, with every repair counted.

Input: UTF-8 text (gzip allowed), one sentence per line, a blank line between documents; the end
of a file ends a document. A corpus is read in units (a file, or a byte range cut before a blank
line) that depend only on the files; paths go through etils.epath, so inputs may be on gs://.
See docs/design/corpus_prep.md, "Input and units".
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import gzip
import itertools
import os
import re
from collections.abc import Callable, Iterator, Sequence

import numpy as np
from etils import epath

from bert_jax.data.corpus.summary import CorpusReport
from bert_jax.data.corpus.words import Segmenter, encode_segmented
from bert_jax.data.tokenization import WordPieceTokenizer
from bert_jax.errors import UserError
from bert_jax.paths import resolved

_BLOCK_BYTES = 1 << 22  # text decoded and tokenized at a time: ~0.25 GB peak per reader
_SCAN_BYTES = 1 << 20  # read at a time while looking for a blank line to cut a file at
_MIN_UNIT_BYTES, _MAX_UNIT_BYTES = 1 << 20, 1 << 26
_REPLACEMENT_CHAR_UTF8 = "\ufffd".encode()
_LAST_WHITESPACE = re.compile(r"\s(?=\S*$)")
# A line of ASCII whitespace only: always blank to the reader (str.strip), so a cut before it
# falls on a document boundary. (Other blank lines are boundaries too; units need not find all.)
_BLANK_LINE = re.compile(rb"\n[ \t\r\f\v]*\n")
_ASCII_BLANKS = b" \t\r\f\v"


def _normalise(pattern: str) -> str:
    pattern = pattern.strip()
    return resolved(pattern)


def split_patterns(input_files: str | Sequence[str]) -> list[str]:
    """The comma-separated paths or globs, absolute (local) or as given (gs://...)."""
    parts = input_files.split(",") if isinstance(input_files, str) else list(input_files)
    return [_normalise(str(p)) for p in parts if str(p).strip()]


def _glob(pattern: str) -> list[str]:
    """Sorted matches of a glob, local or remote, through epath."""
    parts = pattern.split("/")
    first_magic = next(i for i, part in enumerate(parts) if re.search(r"[*?\[]", part))
    root = "/".join(parts[:first_magic]) or "/"
    rest = "/".join(parts[first_magic:])
    return sorted(os.fspath(p) for p in epath.Path(root).glob(rest) if p.is_file())


class InputFileNotFound(UserError):
    """An input path or glob that matches no file."""

    def __init__(self, pattern: str):
        super().__init__(f"input file not found: {pattern} (check the path in --input_files)")
        self.pattern = pattern

    def __reduce__(self):
        return type(self), (self.pattern,)


def resolve_input_files(input_files: str | Sequence[str]) -> list[str]:
    """Expands comma-separated paths and glob patterns, in the given order, globs sorted."""
    given = input_files.split(",") if isinstance(input_files, str) else list(input_files)
    given = [str(p).strip() for p in given if str(p).strip()]
    if not given:
        raise UserError("no input files given: pass --input_files=a.txt,b.txt (globs accepted)")
    files: list[str] = []
    for written, pattern in zip(given, split_patterns(given), strict=True):
        if re.search(r"[*?\[]", pattern):
            matches = _glob(pattern)
        else:
            matches = [pattern] if epath.Path(pattern).is_file() else []
        if not matches:
            raise InputFileNotFound(written)
        files.extend(m for m in matches if m not in files)
    return files


@dataclasses.dataclass(frozen=True)
class InputFile:
    """A text file and what identifies its version cheaply: size and modification time."""

    path: str
    size: int
    mtime: float


def stat_files(paths: Sequence[str]) -> list[InputFile]:
    """One stat per file (in parallel threads: cheap on gs:// too); no byte is read."""

    def stat(path):
        result = epath.Path(path).stat()
        return InputFile(path, int(result.length), float(result.mtime))

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        return list(pool.map(stat, paths))


@dataclasses.dataclass(frozen=True)
class Unit:
    """Bytes [start, stop) of one file (a gzip file is always one whole unit)."""

    index: int
    file_index: int
    path: str
    start: int
    stop: int

    @property
    def compressed(self) -> bool:
        return self.path.endswith(".gz")

    @property
    def size(self) -> int:
        return self.stop - self.start


def unit_bytes_for(total_bytes: int) -> int:
    """About 64 units per corpus, each between 1 MB and 64 MB: enough for every core."""
    return int(min(_MAX_UNIT_BYTES, max(_MIN_UNIT_BYTES, total_bytes // 64)))


def _blank_line_after(f, position: int, limit: int) -> int | None:
    """Offset of the first ASCII-blank line starting after `position` and before `limit`."""
    f.seek(position)
    offset, carry = position, b""
    while offset < limit:
        chunk = f.read(_SCAN_BYTES)
        if not chunk:
            return None
        buffer, base = carry + chunk, offset - len(carry)
        match = _BLANK_LINE.search(buffer)
        if match:
            cut = base + match.start() + 1
            return cut if cut < limit else None
        newline = buffer.rfind(b"\n")
        carry = buffer[newline:] if newline >= 0 else b""
        if carry[1:].strip(_ASCII_BLANKS):  # a line with text cannot become blank
            carry = b""
        offset += len(chunk)
    return None


def _cuts(file: InputFile, unit_bytes: int) -> list[int]:
    """Where to cut an uncompressed file: before the first blank line past every unit_bytes."""
    if file.path.endswith(".gz") or file.size < 2 * unit_bytes:
        return []
    cuts: list[int] = []
    with epath.Path(file.path).open("rb") as f:
        nominal = unit_bytes
        while nominal < file.size - unit_bytes // 2:
            window_end = min(file.size - 1, nominal + unit_bytes)
            cut = _blank_line_after(f, nominal - 1, window_end)
            if cut is None:  # one long document: look again one unit further
                nominal += unit_bytes
            else:
                cuts.append(cut)
                nominal = cut + unit_bytes
    return cuts


def plan_units(files: Sequence[InputFile], unit_bytes: int | None = None) -> list[Unit]:
    """The corpus's units, in reading order; they depend on the files and unit_bytes only.

    unit_bytes=0 keeps every file whole.
    """
    if unit_bytes is None:
        unit_bytes = unit_bytes_for(sum(f.size for f in files))
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        cuts = list(pool.map(lambda f: _cuts(f, unit_bytes) if unit_bytes else [], files))
    units: list[Unit] = []
    for file_index, (file, file_cuts) in enumerate(zip(files, cuts, strict=True)):
        for start, stop in itertools.pairwise([0, *file_cuts, file.size]):
            units.append(Unit(len(units), file_index, file.path, start, stop))
    return units


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


def _read_blocks(unit: Unit, on_bytes: Callable[[int], None]) -> Iterator[tuple[bytes, str]]:
    """Yields (raw block, decoded text) per ~4 MB block ending at a newline (or the unit's end).

    A block never ends inside a line, and no UTF-8 sequence holds a newline byte, so decoding
    (invalid bytes become U+FFFD) does not depend on where blocks or units are cut.
    """
    with epath.Path(unit.path).open("rb") as raw:
        if unit.compressed:
            stream, remaining = gzip.GzipFile(fileobj=raw), None
        else:
            raw.seek(unit.start)
            stream, remaining = raw, unit.size
        position = raw.tell()
        while remaining is None or remaining > 0:
            block = stream.read(_BLOCK_BYTES if remaining is None else min(_BLOCK_BYTES, remaining))
            if not block:
                break
            if not block.endswith(b"\n"):  # a unit's range always ends after a newline or at EOF
                block += stream.readline()
            if remaining is not None:
                remaining -= len(block)
            on_bytes(raw.tell() - position)
            position = raw.tell()
            yield block, block.decode("utf-8", errors="replace")


Document = tuple[np.ndarray, np.ndarray, "np.ndarray | None"]
"""tokens int32 [T], sentence_lengths int32 [S] (all >= 1), word_starts uint8 [T] or None."""


def read_unit(
    unit: Unit,
    tokenizer: WordPieceTokenizer,
    report: CorpusReport,
    *,
    max_line_chars: int = 20_000,
    segmenter: Segmenter | None = None,
    on_bytes: Callable[[int], None] = lambda n: None,
) -> Iterator[Document]:
    """The documents of one unit, in order, as they are read; counts go into `report`.

    Memory is bounded by one block plus the longest document.
    """
    report.bytes += unit.size
    at_document_start = True
    pending: list[tuple[np.ndarray, np.ndarray, np.ndarray | None]] = []

    def finish() -> Document | None:
        if not pending:
            return None
        tokens = np.concatenate([p[0] for p in pending])
        lengths = np.concatenate([p[1] for p in pending])
        starts = None if segmenter is None else np.concatenate([p[2] for p in pending])
        pending.clear()
        report.documents += 1
        report.one_sentence_documents += int(len(lengths) == 1)
        return tokens, lengths, starts

    for block, text in _read_blocks(unit, on_bytes):
        replaced = text.count("\ufffd") - block.count(_REPLACEMENT_CHAR_UTF8)
        if replaced:
            report.invalid_utf8_replaced += replaced
            report.invalid_utf8_bytes += len(block) - len(text.encode("utf-8")) + 3 * replaced
        if text.endswith("\n"):
            text = text[:-1]
        raw_lines = text.split("\n")
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
        if segmenter is None:
            tokens, lengths = tokenizer.encode_lines(sentences)
            word_starts = None
        else:
            tokens, lengths, word_starts = encode_segmented(tokenizer, segmenter, sentences, report)
        kept = lengths > 0
        report.lines_without_tokens += int(np.sum(~kept))
        # A line without tokens hands its "starts a document" flag on to the next line.
        starts = np.asarray(starts_document, bool)
        next_kept = np.cumsum(kept) - kept
        starts_kept = np.zeros(int(kept.sum()), bool)
        inside = next_kept < len(starts_kept)
        np.logical_or.at(starts_kept, next_kept[inside], starts[inside])
        at_document_start |= bool(starts[~inside].any())
        lengths = lengths[kept].astype(np.int32)
        report.sentences += len(lengths)
        report.tokens += len(tokens)
        report.unknown_tokens += int(np.sum(tokens == tokenizer.unk_id))

        token_ends = np.cumsum(lengths)
        bounds = [0, *np.flatnonzero(starts_kept).tolist(), len(lengths)]
        for first, last in itertools.pairwise(bounds):
            if first == last:
                continue
            if starts_kept[first] and (document := finish()) is not None:
                yield document
            lo, hi = token_ends[first] - lengths[first], token_ends[last - 1]
            piece_starts = None if word_starts is None else word_starts[lo:hi]
            pending.append((tokens[lo:hi], lengths[first:last], piece_starts))
    if (document := finish()) is not None:
        yield document


@dataclasses.dataclass
class TokenizedDocuments:
    """A corpus in three flat arrays (in memory: for small corpora and tests).

    tokens: int32 [num_tokens], sentences back to back.
    sentence_lengths: int32 [num_sentences], all >= 1.
    document_sizes: int64 [num_documents], sentences per document, all >= 1.
    word_starts: uint8 [num_tokens] when read with a word segmenter, else None.
    """

    tokens: np.ndarray
    sentence_lengths: np.ndarray
    document_sizes: np.ndarray
    word_starts: np.ndarray | None = None

    def documents(self, indices: Sequence[int]) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """Yields (index, tokens, sentence_lengths) for the given document indices."""
        sentence_ends = np.cumsum(self.document_sizes)
        token_ends = np.concatenate([[0], np.cumsum(self.sentence_lengths, dtype=np.int64)])
        for i in indices:
            first, last = sentence_ends[i] - self.document_sizes[i], sentence_ends[i]
            tokens = self.tokens[token_ends[first] : token_ends[last]]
            yield int(i), tokens, self.sentence_lengths[first:last]


def read_corpus(
    input_files: str | Sequence[str],
    tokenizer: WordPieceTokenizer,
    *,
    max_line_chars: int = 20_000,
    segmenter: Segmenter | None = None,
    show_progress: bool = False,
) -> tuple[TokenizedDocuments, CorpusReport]:
    """Reads and tokenizes whole files into memory (small corpora; `prepare` streams instead).

    Raises UserError when a file is missing or when no file holds any text.
    """
    import tqdm

    files = stat_files(resolve_input_files(input_files))
    report = CorpusReport(files=len(files))
    documents: list[Document] = []
    progress = tqdm.tqdm(
        total=sum(f.size for f in files), unit="B", unit_scale=True, disable=not show_progress
    )
    with progress:
        for unit in plan_units(files, unit_bytes=0):  # whole files
            sentences_before = report.sentences
            documents.extend(
                read_unit(
                    unit,
                    tokenizer,
                    report,
                    max_line_chars=max_line_chars,
                    segmenter=segmenter,
                    on_bytes=progress.update,
                )
            )
            if report.sentences == sentences_before:
                report.empty_files.append(unit.path)
    check_not_empty(report, [f.path for f in files])
    return TokenizedDocuments(
        tokens=np.concatenate([d[0] for d in documents]),
        sentence_lengths=np.concatenate([d[1] for d in documents]),
        document_sizes=np.array([len(d[1]) for d in documents], np.int64),
        word_starts=None if segmenter is None else np.concatenate([d[2] for d in documents]),
    ), report


def check_not_empty(report: CorpusReport, paths: Sequence[str]) -> None:
    if report.tokens == 0:
        shown = ", ".join(paths[:3]) + (f" and {len(paths) - 3} more" if len(paths) > 3 else "")
        raise UserError(
            f"the corpus is empty: no tokens in {shown} "
            "(expected UTF-8 text, one sentence per line, blank lines between documents)"
        )
