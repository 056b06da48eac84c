"""Fine-tuning data held in memory: a list of tuples (or dicts), a pandas DataFrame, a Hugging Face
datasets.Dataset. `table(data, split)` makes any of them Rows; each kind's Task.read_rows turns
those into the examples its file reader makes, so the features are the same. pandas and datasets
are never imported: they are recognised by their attributes. docs/tasks.md lists the row shapes.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Callable

from absl import logging

from bert_jax.errors import UserError
from bert_jax.finetuning.tasks.readers import (
    ReadResult,
    SentenceExample,
    TokenExample,
    parse_float,
)

# Column names looked for when task.columns.<key> is "" (the first one present is used).
DEFAULT_COLUMNS = {
    "text": ("text", "sentence", "sentence1"),
    "text_pair": ("text_pair", "sentence2"),
    "label": ("label", "labels"),
    "tokens": ("tokens", "words"),
    "tags": ("tags", "ner_tags", "pos_tags", "labels"),
}


@dataclasses.dataclass
class Rows:
    """One split's rows: tuples / lists / strings, or dicts {column: value} (tabular data)."""

    records: list
    split: str
    source: str  # "train DataFrame (300 rows)", for messages and TaskData.source
    columns: list[str] | None  # tabular: the column names; None for tuples
    class_names: dict[str, list[str]]  # a Dataset's ClassLabel names by column (ids -> names)

    def origin(self, index: int) -> str:
        return f"{self.split} row {index}"

    def column(self, configured: str, key: str, required: bool = True) -> str | None:
        """The column for `key` (text, label, ...): task.columns.<key>, else the first default."""
        if configured:
            if configured not in self.columns:
                raise UserError(
                    f"{self.source}: no column {configured!r} (task.columns.{key}); its columns "
                    f"are {self.columns}"
                )
            return configured
        found = next((name for name in DEFAULT_COLUMNS[key] if name in self.columns), None)
        if found is None and required:
            raise UserError(
                f"{self.source}: no {key} column: none of {list(DEFAULT_COLUMNS[key])} is among "
                f"its columns {self.columns}; name it with task.columns.{key}"
            )
        return found


def table(data, split: str) -> Rows:
    """Rows of a list (or any iterable) of rows, a pandas DataFrame or a datasets.Dataset."""
    if hasattr(data, "iloc") and hasattr(data, "to_dict"):  # pandas.DataFrame
        records = data.to_dict("records")
        columns = [str(name) for name in data.columns]
        return Rows(records, split, f"{split} DataFrame ({len(records)} rows)", columns, {})
    if hasattr(data, "features") and hasattr(data, "column_names"):  # datasets.Dataset
        names = {}
        for name, feature in data.features.items():
            inner = getattr(feature, "feature", None)  # Sequence / List of ClassLabel
            labels = getattr(feature, "names", None) or getattr(inner, "names", None)
            if labels:
                names[name] = list(labels)
        records = [dict(record) for record in data]
        source = f"{split} Dataset ({len(records)} rows)"
        return Rows(records, split, source, list(data.column_names), names)
    if data is None or isinstance(data, str | bytes | dict):
        raise UserError(
            f"{split} data is a {type(data).__name__}: pass a list of rows (tuples or dicts), a "
            "pandas DataFrame or a datasets.Dataset"
        )
    try:
        records = list(data)
    except TypeError:
        raise UserError(
            f"{split} data is a {type(data).__name__}: pass a list of rows (tuples or dicts), a "
            "pandas DataFrame or a datasets.Dataset"
        ) from None
    if records and all(isinstance(record, dict) for record in records):
        columns = list(dict.fromkeys(name for record in records for name in record))
        return Rows(records, split, f"{split} rows ({len(records)} dicts)", columns, {})
    return Rows(records, split, f"{split} rows ({len(records)})", None, {})


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _text(value, origin: str, what: str) -> str:
    if not isinstance(value, str):
        found = "missing" if _missing(value) else f"a {type(value).__name__}, not a string"
        raise UserError(f"{origin}: {what} is {found}")
    if not value.strip():
        raise UserError(f"{origin}: {what} is empty")
    return value


def _class_name(value, names: list[str] | None, origin: str) -> str:
    """A label as the file readers hold it: a string ("1" for the integer 1, or 1.0)."""
    if isinstance(value, str):
        if not value.strip():
            raise UserError(f"{origin}: empty label")
        return value.strip()
    if isinstance(value, numbers.Real) and float(value).is_integer():
        if names is not None:  # a Dataset's ClassLabel id
            if not 0 <= int(value) < len(names):
                raise UserError(f"{origin}: label id {int(value)} is not in 0..{len(names) - 1}")
            return names[int(value)]
        return str(int(value))
    raise UserError(f"{origin}: label {value!r} is a {type(value).__name__}; use a string or int")


def class_label(value, names, origin: str) -> str:
    """Classification: one class per row."""
    return _class_name(value, names, origin)


def regression_label(value, names, origin: str) -> float:
    """Regression: a finite number per row."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real | str):
        raise UserError(f"{origin}: label {value!r} is not a number; regression needs one")
    return parse_float(str(value), origin)


def label_set(value, names, origin: str, parse_joined: Callable) -> tuple[str, ...]:
    """Multi-label: a list (tuple, set, array) of labels, or one `|`-joined string."""
    if isinstance(value, str):
        return parse_joined(value, origin)
    if not hasattr(value, "__iter__"):
        raise UserError(f"{origin}: labels {value!r} are not a list of labels")
    return tuple(dict.fromkeys(_class_name(label, names, origin) for label in value))


def _label(value, names, origin: str, labeled: bool, parse):
    """parse(value) for a labeled row; None (unlabeled) only outside train and dev."""
    if _missing(value) or (names is not None and isinstance(value, numbers.Integral) and value < 0):
        if labeled:
            raise UserError(f"{origin}: missing label; only the test split may lack labels")
        return None
    return parse(value, names, origin)


def sentence_examples(rows: Rows, config_columns, labeled: bool, parse) -> ReadResult:
    """SentenceExamples from (text, label) / (text_a, text_b, label) tuples, plain strings
    (unlabeled), or tabular rows with text (text_pair) and label columns; `parse(value, class
    names, origin)` makes a label."""
    examples, names = [], None
    if rows.columns is not None:
        text = rows.column(config_columns.text, "text")
        pair = rows.column(config_columns.text_pair, "text_pair", required=False)
        label = rows.column(config_columns.label, "label", required=labeled)
        names = rows.class_names.get(label)
        columns = [text] + ([pair] if pair else [])
    width = None
    for index, record in enumerate(rows.records):
        origin = rows.origin(index)
        if rows.columns is not None:
            if not isinstance(record, dict):
                raise UserError(f"{origin}: a {type(record).__name__}, not a dict like row 0")
            texts = [_text(record.get(c), origin, f"column {c!r}") for c in columns]
            value = record.get(label) if label else None
        else:
            values = (record,) if isinstance(record, str) else record
            if not isinstance(values, tuple | list) or len(values) not in (1, 2, 3):
                raise UserError(
                    f"{origin}: {type(record).__name__} {_short(record)}; expected (text, label) "
                    "or (text_a, text_b, label)"
                )
            if len(values) == 1 and labeled:
                raise UserError(f"{origin}: a text without a label; expected (text, label)")
            if width is not None and len(values) != width:
                raise UserError(f"{origin}: {len(values)} values, but row 0 has {width}")
            width = len(values)
            texts = [_text(values[0], origin, "text")]
            if width == 3:
                texts.append(_text(values[1], origin, "text_b"))
            value = values[-1] if width > 1 else None
            columns = ["sentence1", "sentence2"] if len(texts) == 2 else ["sentence"]
        examples.append(
            SentenceExample(
                guid=f"{rows.split}-{index}",
                text_a=texts[0],
                text_b=texts[1] if len(texts) == 2 else None,
                label=_label(value, names, origin, labeled, parse),
                fields=dict(zip(columns, texts, strict=True)),
                origin=origin,
            )
        )
    return _result(rows, examples, columns if examples else ["sentence"], 0)


def token_examples(rows: Rows, config_columns, labeled: bool) -> ReadResult:
    """TokenExamples from (tokens, tags) pairs, lists of tokens (unlabeled), or tabular rows with
    tokens and tags columns; rows without tokens are skipped and counted."""
    names = None
    if rows.columns is not None:
        tokens_column = rows.column(config_columns.tokens, "tokens")
        tags_column = rows.column(config_columns.tags, "tags", required=labeled)
        names = rows.class_names.get(tags_column)
    examples, empty = [], 0
    for index, record in enumerate(rows.records):
        origin = rows.origin(index)
        if rows.columns is not None:
            tokens = record.get(tokens_column)
            tags = record.get(tags_column) if tags_column else None
        elif _is_sequence(record) and len(record) == 2 and all(map(_is_sequence, record)):
            tokens, tags = record
        elif _is_sequence(record) and all(isinstance(token, str) for token in record):
            tokens, tags = record, None
        else:
            raise UserError(
                f"{origin}: {type(record).__name__} {_short(record)}; expected (tokens, tags), "
                "two lists of strings"
            )
        if not _is_sequence(tokens):
            raise UserError(f"{origin}: tokens {_short(tokens)} are not a list of strings")
        words = [_text(token, origin, f"token {i}") for i, token in enumerate(tokens)]
        if tags is None or (not _is_sequence(tags) and _missing(tags)):
            if labeled:
                raise UserError(f"{origin}: missing tags; only the test split may lack them")
            tag_list = None
        elif not _is_sequence(tags) or len(tags) != len(words):
            count = len(tags) if _is_sequence(tags) else _short(tags)
            raise UserError(f"{origin}: {len(words)} tokens but {count} tags; one tag per token")
        else:
            tag_list = [_class_name(tag, names, f"{origin} tag {i}") for i, tag in enumerate(tags)]
        if not words:
            empty += 1
            continue
        examples.append(TokenExample(f"{rows.split}-{index}", words, tag_list, origin))
    if empty:
        logging.warning("%s: skipped %d rows without tokens", rows.source, empty)
    return _result(rows, examples, ["token"], empty)


def _result(rows: Rows, examples: list, columns: list[str], skipped: int) -> ReadResult:
    labels = [(e.tags if isinstance(e, TokenExample) else e.label) is not None for e in examples]
    if any(labels) and not all(labels):
        first = labels.index(not labels[0])
        raise UserError(
            f"{rows.origin(first)}: {'has no' if labels[0] else 'has a'} label, unlike row 0; "
            "label every row or none"
        )
    return ReadResult(examples, all(labels), columns, rows.source, num_skipped=skipped)


def _is_sequence(value) -> bool:
    return (
        hasattr(value, "__len__")
        and hasattr(value, "__getitem__")
        and not isinstance(value, str | bytes | dict)
    )


def _short(value, width: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."
