"""Readers for fine-tuning data: TSV with a header, CoNLL, and prepared TFDS datasets by name.

Every reader returns plain example records with an `origin` ("file:line" or "tfds:name[split] #i")
so later checks (unknown labels) can point at the offending input. Structural problems raise a
UserError naming the file and line; anything skipped is counted, logged and returned.
"""

from __future__ import annotations

import dataclasses
import math
import pathlib

import tqdm
from absl import logging

from bert_jax.errors import UserError
from bert_jax.finetuning import tasks

LABEL_COLUMN = "label"


@dataclasses.dataclass
class SentenceExample:
    """A single sentence (text_b None) or a sentence pair; label None when the split has none.

    fields keeps every non-label column of the input, in order, for write_predictions.
    """

    guid: str
    text_a: str
    text_b: str | None
    label: str | float | None
    fields: dict[str, str]
    origin: str


@dataclasses.dataclass
class TokenExample:
    """One sentence of words with one tag per word (tags None when unlabeled)."""

    guid: str
    words: list[str]
    tags: list[str] | None
    origin: str


@dataclasses.dataclass
class ReadResult:
    """What a reader found: examples, whether they carry labels, and how much it skipped."""

    examples: list
    labeled: bool
    columns: list[str]  # non-label input columns (TSV header order), for write_predictions
    source: str
    num_skipped: int = 0
    label_names: list[str] | None = None  # fixed label set (TFDS ClassLabel), else None


def read_lines(path) -> list[str]:
    """The file's lines without line endings (only \\n and \\r\\n end a line, never U+2028);
    `path` is a pathlib or etils.epath Path. A missing or non-UTF-8 file is one line of error."""
    if not path.is_file():
        raise UserError(f"{path}: file not found; check the task.*_file setting")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise UserError(
            f"{path}:{line}: not UTF-8 text ({error.reason}); re-save it as UTF-8"
        ) from error
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def parse_float(text: str, origin: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise UserError(f"{origin}: label {text!r} is not a finite number; regression needs one")
    return value


def tsv_rows(path, header: list[str], lines: list[str]) -> tuple[list[tuple[int, dict]], int]:
    """The lines after the header of a TSV file as (line number, {column: field}), and how many
    blank lines were skipped; a line with another number of fields than the header is an error."""
    rows, blank = [], 0
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            blank += 1
            continue
        values = line.split("\t")
        if len(values) != len(header):
            raise UserError(
                f"{path}:{number}: {len(values)} tab-separated fields but the header has "
                f"{len(header)} ({', '.join(header)}); a field may not contain a tab or newline"
            )
        rows.append((number, dict(zip(header, values, strict=True))))
    return rows, blank


def read_tsv(path: str | pathlib.Path, regression: bool, labeled: bool) -> ReadResult:
    """Reads `sentence<TAB>label` or `sentence1<TAB>sentence2<TAB>label` files with a header.

    Columns are found by name in the header (other columns are kept in `fields` but not
    modelled); fields are split on tabs with no quoting (csv.QUOTE_NONE). With labeled=True the
    label column is required; without it the column is optional (unlabeled test files).
    Blank lines are skipped and counted.
    """
    path = pathlib.Path(path)
    lines = read_lines(path)
    if not lines:
        raise UserError(f"{path}: empty file; a TSV task file starts with a header line")
    header = [name.strip() for name in lines[0].split("\t")]
    if len(set(header)) != len(header):
        raise UserError(f"{path}:1: repeated column names in the header {header}")
    if "sentence1" in header and "sentence2" in header:
        text_columns = ("sentence1", "sentence2")
    elif "sentence" in header:
        text_columns = ("sentence",)
    else:
        raise UserError(
            f"{path}:1: header {header} has neither a 'sentence' column nor 'sentence1' and "
            f"'sentence2' columns (plus '{LABEL_COLUMN}'), tab-separated"
        )
    has_label = LABEL_COLUMN in header
    if labeled and not has_label:
        raise UserError(f"{path}:1: header {header} has no '{LABEL_COLUMN}' column")

    examples = []
    rows, blank = tsv_rows(path, header, lines)
    for line_number, row in rows:
        label = row.pop(LABEL_COLUMN).strip() if has_label else None
        if has_label and not label:
            raise UserError(f"{path}:{line_number}: empty '{LABEL_COLUMN}' field")
        if has_label and regression:
            label = parse_float(label, f"{path}:{line_number}")
        texts = [row[name] for name in text_columns]
        examples.append(
            SentenceExample(
                guid=f"{path.stem}-{line_number}",
                text_a=texts[0],
                text_b=texts[1] if len(texts) == 2 else None,
                label=label,
                fields=row,
                origin=f"{path}:{line_number}",
            )
        )
    if blank:
        logging.warning("%s: skipped %d blank lines", path, blank)
    columns = [name for name in header if name != LABEL_COLUMN]
    return ReadResult(examples, has_label, columns, str(path), num_skipped=blank)


MAX_SENTENCE_WORDS = 10_000  # no sentence is this long: a file without blank lines


def _shorten(text: str, width: int = 40) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def read_conll(path: str | pathlib.Path, labeled: bool) -> ReadResult:
    """Reads CoNLL: one `token<TAB>tag` per line, a blank line between sentences.

    With more than two columns (CoNLL-2003 `token POS chunk NER`) the token is the first and the
    tag the last; lines without a tab are split on whitespace. A file whose lines hold only
    tokens is unlabeled, which only a test split may be. `-DOCSTART-` lines are skipped and
    counted.
    """
    path = pathlib.Path(path)
    lines = read_lines(path)
    examples, words, tags = [], [], []
    file_labeled, docstarts, first_line = None, 0, 0

    def end_sentence():
        if words:
            examples.append(
                TokenExample(
                    f"{path.stem}-{first_line}",
                    list(words),
                    list(tags) if file_labeled else None,
                    f"{path}:{first_line}",
                )
            )
            words.clear()
            tags.clear()

    for line_number, line in enumerate(
        tqdm.tqdm(lines, desc=path.name, leave=False, mininterval=5), start=1
    ):
        if not line.strip():
            end_sentence()
            continue
        if line.startswith("-DOCSTART-"):
            end_sentence()
            docstarts += 1
            continue
        columns = line.split("\t") if "\t" in line else line.split()
        token = columns[0].strip()
        if len(token.split()) > 1:  # a sentence, not a token: a sentence-per-line TSV
            raise UserError(
                f"{path}:{line_number}: {_shorten(token)!r} is several words, not one token; "
                "token classification reads CoNLL (one `token<TAB>tag` per line, a blank line "
                "between sentences); for a sentence<TAB>label TSV use "
                "configs/finetune/classification.py"
            )
        has_tag = len(columns) > 1
        if file_labeled is None:
            file_labeled = has_tag
        if has_tag != file_labeled:
            raise UserError(
                f"{path}:{line_number}: expected `token<TAB>tag`, found {line!r}"
                if file_labeled
                else f"{path}:{line_number}: a tag here, but earlier lines have only tokens"
            )
        tag = columns[-1].strip() if has_tag else None
        if not token or (has_tag and not tag):
            raise UserError(f"{path}:{line_number}: empty token or tag in {line!r}")
        if not words:
            first_line = line_number
        elif len(words) >= MAX_SENTENCE_WORDS:
            raise UserError(
                f"{path}:{first_line}: a sentence of over {MAX_SENTENCE_WORDS} tokens; CoNLL "
                "needs a blank line between sentences"
            )
        words.append(token)
        tags.append(tag)
    end_sentence()
    if not examples:
        raise UserError(f"{path}: no sentences; expected `token<TAB>tag` lines")
    if labeled and not file_labeled:
        raise UserError(f"{path}: lines hold tokens without tags; expected `token<TAB>tag`")
    if docstarts:
        logging.info("%s: skipped %d -DOCSTART- lines", path, docstarts)
    return ReadResult(examples, bool(file_labeled), ["token"], str(path), num_skipped=docstarts)


# --- TFDS ---------------------------------------------------------------------------------------

_TFDS_SPLITS = {
    "train": ("train",),
    "dev": ("validation", "validation_matched", "dev"),
    "test": ("test", "test_matched"),
}
TFDS_TEXT_PAIRS = (
    ("sentence1", "sentence2"),
    ("premise", "hypothesis"),
    ("question", "sentence"),
    ("question1", "question2"),
    ("question", "passage"),
)
TFDS_TEXTS = ("sentence", "text", "document", "content")
TFDS_TAGS = ("ner", "ner_tags", "tags", "pos", "pos_tags", "chunks")


def text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def read_tfds(name: str, split: str, kind: str, data_dir: str | None = None) -> ReadResult:
    """Reads a TFDS dataset the user has prepared in ArrayRecord format, without downloading.

    Our split names map to TFDS ones (dev -> validation / validation_matched, test -> test /
    test_matched). Text features are found by GLUE-style names, labels by `label` (sentence
    tasks; -1 means unlabeled) or a token tag sequence (`ner`, `tags`, `pos`, ...); QA needs
    SQuAD's id / title / context / question / answers features.
    """
    import tensorflow_datasets as tfds

    where = f"{data_dir or '$TFDS_DATA_DIR or ~/tensorflow_datasets'}"
    try:
        sources = tfds.data_source(name, data_dir=data_dir, download=False)
    except Exception as error:  # tfds raises many types here; all mean "not usable as is"
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserError(
            f"TFDS dataset {name!r} is not prepared in {where} ({reason}). Prepare it once with "
            f"`tfds build {name} --file_format=array_record`, or set task.{split}_file instead"
        ) from error
    tfds_split = next((s for s in _TFDS_SPLITS[split] if s in sources), None)
    if tfds_split is None:
        raise UserError(f"TFDS dataset {name!r} has no {split} split (it has {sorted(sources)})")
    source = sources[tfds_split]
    features = source.dataset_info.features
    origin = f"tfds:{name}[{tfds_split}]"
    records = (source[i] for i in range(len(source)))
    records = tqdm.tqdm(records, total=len(source), desc=origin, leave=False, mininterval=5)
    task = tasks.get(kind)
    return task.read_tfds(records, features, origin, split, tfds_split)
