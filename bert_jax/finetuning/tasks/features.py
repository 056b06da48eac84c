"""What every task kind shares: TaskData (a split featurised into fixed-shape arrays), label
lists, tokenising and padding, and `load_task` / `compute_metrics` / `write_predictions`, which
hand each kind's work to its module in the registry (`finetuning.tasks.get(kind)`).

    data = load_task(config, "train", tokenizer)
    dev = load_task(config, "dev", tokenizer, label_list=data.label_list)
"""

from __future__ import annotations

import dataclasses
import functools
import io
import pathlib
import types
from collections.abc import Mapping, Sequence

import numpy as np
from absl import logging
from etils import epath

from bert_jax.errors import UserError
from bert_jax.finetuning import tasks as registry
from bert_jax.finetuning.tasks import readers as tasks_readers
from bert_jax.finetuning.tasks import rows
from bert_jax.finetuning.tasks.readers import SentenceExample, TokenExample

KINDS = registry.KINDS
SPLITS = ("train", "dev", "test")
IGNORE_LABEL = -1  # token_classification labels on positions that carry no word's tag
# task.columns of a config without one: every column by its default names (rows.DEFAULT_COLUMNS)
_NO_COLUMNS = types.SimpleNamespace(text="", text_pair="", label="", tokens="", tags="")


@dataclasses.dataclass
class TaskData:
    """One split, featurised. n = number of features, L = max_seq_length.

    arrays (model inputs and targets, leading dimension n, ready to batch):
      input_ids, token_type_ids, attention_mask: int32 [n, L]; [CLS] A [SEP] (B [SEP]) [PAD]...
      classification:       labels int32 [n], index into label_list (-1 when unlabeled)
      regression:           labels float32 [n] (NaN when unlabeled)
      token_classification: labels int32 [n, L], the word's tag id on its first word piece and
                            IGNORE_LABEL (-1) on every other position (pieces, specials, padding);
                            starts_sentence, ends_sentence int32 [n], 1 where the feature holds
                            its sentence's first / last word (0 at a cut of a long sentence:
                            a CRF scores the sentence's start and end there, not at the cut)
      squad:                start_positions, end_positions int32 [n], answer token span in the
                            window, 0 ([CLS]) when the window lacks the answer
    feature_info (post-processing only, leading dimension n):
      token_classification: example_index int32 [n]; word_index int32 [n, L], the word each
                            first piece starts (-1 elsewhere). A sentence longer than L is split
                            into several features, so every word gets exactly one prediction.
      squad:                example_index int32 [n]; token_offsets int32 [n, L, 2] context
                            character spans (-1 outside the context); max_context bool [n, L].
    """

    kind: str
    split: str
    source: str
    examples: list
    arrays: dict[str, np.ndarray]
    feature_info: dict[str, np.ndarray]
    label_list: list[str] | None
    labeled: bool
    columns: list[str]
    max_seq_length: int
    n_best_size: int = 20
    max_answer_length: int = 30
    stats: dict[str, int] = dataclasses.field(default_factory=dict)

    @property
    def num_features(self) -> int:
        return len(self.arrays["input_ids"])

    @functools.cached_property
    def lengths(self) -> np.ndarray:
        """Real tokens of every feature, int64 [n]: computed once, at first use (batches, token
        counts and prediction scatter read it at every step)."""
        return self.arrays["attention_mask"].sum(axis=1).astype(np.int64)

    @property
    def task(self):
        """The kind's base.Task (registry.get)."""
        return registry.get(self.kind)

    @property
    def num_labels(self) -> int:
        """Output width of the head: classes, 1 for regression, 2 (start, end) for squad."""
        return self.task.num_labels(self.label_list)

    @property
    def is_bio(self) -> bool:
        return self.task.is_bio(self.label_list)

    def __len__(self) -> int:
        return self.num_features


def option(config, name: str, default: int, minimum: int = 1) -> int:
    """config.NAME, else config.task.NAME, else default; a UserError below minimum."""
    value = default
    for holder in (getattr(config, "task", None), config):
        found = getattr(holder, name, None) if holder is not None else None
        value = found if found is not None else value
    if int(value) < minimum:
        raise UserError(f"{name}={value} is too small: it must be at least {minimum}")
    return int(value)


def _read_split(task, kind: str, split: str, data=None) -> tasks_readers.ReadResult:
    if data is not None:  # rows in memory: a list, a DataFrame or a datasets.Dataset
        columns = getattr(task, "columns", None) or _NO_COLUMNS
        return registry.get(kind).read_rows(rows.table(data, split), split != "test", columns)
    path = getattr(task, f"{split}_file", None)
    tfds_name = getattr(task, "tfds_name", None)
    if path:
        return registry.get(kind).read_file(pathlib.Path(path).expanduser(), split != "test")
    if tfds_name:
        data_dir = getattr(task, "tfds_data_dir", None) or None
        return tasks_readers.read_tfds(tfds_name, split, kind, data_dir=data_dir)
    raise UserError(f"task.{split}_file is not set and there is no task.tfds_name to read instead")


def _sorted_labels(labels) -> list[str]:
    labels = set(labels)
    if all(label.lstrip("-").isdigit() for label in labels):
        return sorted(labels, key=int)
    return sorted(labels)


def _example_labels(example) -> list[str]:
    if isinstance(example, TokenExample):
        return example.tags
    return list(example.label) if isinstance(example.label, tuple) else [example.label]


def _resolve_label_list(task, kind, split, result, label_list) -> list[str]:
    if label_list is not None:
        return list(label_list)
    configured = getattr(task, "labels", None)
    if configured:
        return [str(label) for label in configured]
    if result.label_names is not None:
        return list(result.label_names)
    if split == "train":
        inferred = _sorted_labels(label for e in result.examples for label in _example_labels(e))
        shown = ", ".join(inferred[:20]) + (", ..." if len(inferred) > 20 else "")
        print(
            f"labels: {len(inferred)} inferred from the training data, sorted: {shown} "
            "(set task.labels to fix them and their order)"
        )
        return inferred
    if not (getattr(task, "train_file", None) or getattr(task, "tfds_name", None)):
        raise UserError(
            f"the {split} split needs the training label set: set task.train_file "
            "(or pass label_list from the training TaskData)"
        )
    training = _read_split(task, kind, "train")
    if training.label_names is not None:
        return list(training.label_names)
    return _sorted_labels(label for e in training.examples for label in _example_labels(e))


def _check_known_labels(result: tasks_readers.ReadResult, label_list: list[str], task) -> None:
    known = set(label_list)
    configured = bool(getattr(task, "labels", None))
    for example in result.examples:
        unknown = [label for label in _example_labels(example) if label not in known]
        if unknown:
            shown = ", ".join(label_list[:20]) + (", ..." if len(label_list) > 20 else "")
            where = "is not in task.labels" if configured else "never occurs in the training data"
            fix = "task.labels" if configured else "add training examples"
            raise UserError(
                f"{example.origin}: label {unknown[0]!r} {where} "
                f"({len(label_list)} labels: {shown}); fix the label or {fix}"
            )


def encode(tokenizer, texts: list[str], chunk: int = 4096) -> list[list[int]]:
    encoded = []
    for start in range(0, len(texts), chunk):
        encoded.extend(tokenizer.encode_batch(texts[start : start + chunk]))
    return encoded


def pad_rows(rows: list[list[int]], length: int, fill: int) -> np.ndarray:
    array = np.full((len(rows), length), fill, np.int32)
    for row, values in enumerate(rows):
        array[row, : len(values)] = values
    return array


def featurise_sentences(
    examples: list[SentenceExample],
    tokenizer,
    max_seq_length: int,
    label_to_id: Mapping[str, int] | None,
    labeled: bool,
) -> tuple[dict[str, np.ndarray], int]:
    """[CLS] A [SEP] (B [SEP]) arrays; pairs lose tokens from the longer side first.

    Truncation is google-research/bert's _truncate_seq_pair, so when both sides are cut, an odd
    budget leaves the extra token to A (Hugging Face's fast tokenizers give it to the side that
    was longer). label_to_id None means regression (float labels).
    Returns (arrays, number of examples truncated).
    """
    pieces_a = encode(tokenizer, [e.text_a for e in examples])
    is_pair = [e.text_b is not None for e in examples]
    pieces_b = iter(encode(tokenizer, [e.text_b for e in examples if e.text_b is not None]))
    rows, segment_b_start, truncated = [], [], 0
    for a, pair in zip(pieces_a, is_pair, strict=True):
        b = next(pieces_b) if pair else []
        budget = max_seq_length - (3 if pair else 2)
        keep_a, keep_b = len(a), len(b)
        while keep_a + keep_b > budget:  # longest first, as google-research/bert truncates
            if keep_a > keep_b:
                keep_a -= 1
            else:
                keep_b -= 1
        truncated += keep_a + keep_b < len(a) + len(b)
        row = [tokenizer.cls_id, *a[:keep_a], tokenizer.sep_id]
        segment_b_start.append(len(row) if pair else max_seq_length)
        if pair:
            row += [*b[:keep_b], tokenizer.sep_id]
        rows.append(row)
    n = len(rows)
    input_ids = pad_rows(rows, max_seq_length, tokenizer.pad_id)
    positions = np.arange(max_seq_length)
    lengths = np.array([len(row) for row in rows], np.int32).reshape(n, 1)
    attention_mask = positions < lengths
    segment_b = positions >= np.array(segment_b_start, np.int32).reshape(n, 1)
    if label_to_id is None:
        labels = np.array([e.label if labeled else np.nan for e in examples], np.float32)
    else:
        labels = np.array([label_to_id[e.label] if labeled else -1 for e in examples], np.int32)
    arrays = {
        "input_ids": input_ids,
        "token_type_ids": (segment_b & attention_mask).astype(np.int32),
        "attention_mask": attention_mask.astype(np.int32),
        "labels": labels.reshape(n),
    }
    return arrays, truncated


def featurise_texts(
    texts: Sequence[str],
    tokenizer,
    max_seq_length: int,
    text_pairs: Sequence[str] | None = None,
) -> dict[str, np.ndarray]:
    """Model inputs for raw strings (pipelines, notebooks), featurised exactly like a TSV split.

    Returns input_ids, token_type_ids, attention_mask: int32 [len(texts), max_seq_length].
    """
    if text_pairs is not None and len(text_pairs) != len(texts):
        raise ValueError(f"{len(texts)} texts but {len(text_pairs)} text_pairs")
    pairs = text_pairs if text_pairs is not None else [None] * len(texts)
    examples = [
        SentenceExample(str(i), text, pair, None, {}, origin=f"text {i}")
        for i, (text, pair) in enumerate(zip(texts, pairs, strict=True))
    ]
    arrays, _ = featurise_sentences(examples, tokenizer, max_seq_length, None, labeled=False)
    del arrays["labels"]
    return arrays


def load_task(
    task_config, split: str, tokenizer, label_list: Sequence[str] | None = None, data=None
):
    """Reads and featurises one split of the task described by task_config -> TaskData.

    data: the split's rows in memory (a list of tuples or dicts, a pandas DataFrame or a
    datasets.Dataset; tasks.rows), read instead of the split's file.

    task_config.task: kind, train_file / dev_file / test_file (or tfds_name, with optional
    tfds_data_dir); options (top level or under task): max_seq_length (128), doc_stride (128),
    max_query_length (64), max_answer_length (30), n_best_size (20). Pass the training split's
    label_list when loading dev/test; otherwise the training data is read again for it.
    A dev/test label that training never saw raises UserError naming the file and line.
    """
    task = task_config.task
    kind = task.kind
    if kind not in KINDS:
        raise UserError(f"task.kind={kind!r} is not one of {KINDS}")
    kind_task = registry.get(kind)
    if split not in SPLITS:
        raise UserError(f"split {split!r} is not one of {SPLITS}")
    max_seq_length = option(task_config, "max_seq_length", 128, minimum=4)
    result = _read_split(task, kind, split, data)
    if not result.examples:
        raise UserError(f"{result.source}: no examples in the {split} split")
    if split != "test" and not result.labeled:
        raise UserError(
            f"{result.source}: the {split} split has no labels; only test may lack them"
        )
    stats = {"num_examples": len(result.examples), "num_skipped": result.num_skipped}

    resolved_labels = None
    if kind_task.uses_label_list:
        resolved_labels = _resolve_label_list(task, kind, split, result, label_list)
        if result.labeled:
            _check_known_labels(result, resolved_labels, task)
    label_to_id = {label: i for i, label in enumerate(resolved_labels or [])}

    arrays, feature_info, kind_stats = kind_task.featurise(
        result.examples, tokenizer, task_config, split, max_seq_length, label_to_id, result.labeled
    )
    stats.update(kind_stats)
    stats["num_features"] = len(arrays["input_ids"])
    logging.info("%s (%s): %s", result.source, split, stats)
    return TaskData(
        kind=kind,
        split=split,
        source=result.source,
        examples=result.examples,
        arrays=arrays,
        feature_info=feature_info,
        label_list=resolved_labels,
        labeled=result.labeled,
        columns=result.columns,
        max_seq_length=max_seq_length,
        n_best_size=option(task_config, "n_best_size", 20),
        max_answer_length=option(task_config, "max_answer_length", 30),
        stats=stats,
    )


# --- predictions ----------------------------------------------------------------------------------


def _check_kind(kind: str, task_data: TaskData) -> None:
    if kind != task_data.kind:
        raise ValueError(f"kind {kind!r} does not match the task data's kind {task_data.kind!r}")


def are_logits(predictions: np.ndarray, leading_shape: tuple[int, ...]) -> bool:
    """True for logits shaped leading_shape + (classes,), False for ids shaped leading_shape;
    anything else is an error."""
    if predictions.ndim == len(leading_shape) + 1 and predictions.shape[:-1] == leading_shape:
        return True
    if predictions.shape != leading_shape:
        raise ValueError(
            f"predictions have shape {predictions.shape}; expected ids {leading_shape} or "
            f"logits {leading_shape + ('classes',)}, one row per feature"
        )
    return False


def class_ids(predictions, leading_shape: tuple[int, ...]) -> np.ndarray:
    """Class ids from ids shaped leading_shape or logits shaped leading_shape + (classes,)."""
    predictions = np.asarray(predictions)
    if are_logits(predictions, leading_shape):
        return predictions.argmax(axis=-1)
    return predictions.astype(np.int64)


def decode_predictions(
    kind: str, predictions, task_data: TaskData, constrained: bool = True, crf=None
):
    """Model outputs per feature -> one prediction per example in the task's own terms.

    predictions: classification [n] ids or [n, C] logits -> list of label strings;
    regression [n] or [n, 1] -> list of floats; token_classification [n, L] ids or [n, L, C]
    logits -> list of per-word tag lists (BIO / IOBES tags from logits: the best sequence the
    scheme allows per sentence, however many features it spans, tasks.tag_decoding, unless
    constrained=False; with crf, a CRF's parameters, the best sequence under its scores too);
    squad
    {"start_logits", "end_logits"} [n, L] (or a pair, or [n, L, 2]) -> {question id: answer}.
    """
    _check_kind(kind, task_data)
    return task_data.task.decode(predictions, task_data, constrained, crf)


def compute_metrics(
    kind: str, predictions, task_data: TaskData, constrained: bool = True, crf=None
) -> dict[str, float]:
    """Scores predictions (see decode_predictions for shapes) against the split's labels.

    classification: accuracy, macro_f1, mcc; regression: pearson, spearman;
    token_classification: token_accuracy (+ seqeval's entity f1, precision, recall and f1_TYPE per
    entity type when the tags are BIO / IOBES);
    squad: exact_match, f1 (official v1.1 normalisation, as fractions, not percent).
    constrained, crf: how tags are decoded (decode_predictions).
    """
    if not task_data.labeled:
        raise UserError(f"{task_data.source} has no labels, so it cannot be scored")
    outputs = decode_predictions(kind, predictions, task_data, constrained, crf)
    return task_data.task.metrics(outputs, task_data)


def main_metric(task_data: TaskData) -> str:
    """The compute_metrics key that picks the best checkpoint (higher is better)."""
    return task_data.task.main_metric(task_data)


def write_predictions(
    kind: str, predictions, task_data: TaskData, path, constrained: bool = True, crf=None
) -> epath.Path:
    """Writes predictions in the input's own format (do_predict) and returns the path.

    classification / regression: TSV, the input's columns then `label` with the prediction;
    token_classification: CoNLL `word<TAB>tag`, a blank line after each sentence;
    squad: JSON {question id: answer text}, as the official evaluation script reads it.
    """
    outputs = decode_predictions(kind, predictions, task_data, constrained, crf)
    path = epath.Path(path)  # the workdir may be on gs://
    path.parent.mkdir(parents=True, exist_ok=True)
    with io.StringIO(newline="\n") as f:
        task_data.task.write_predictions(outputs, task_data, f)
        path.write_text(f.getvalue(), encoding="utf-8")
    return path
