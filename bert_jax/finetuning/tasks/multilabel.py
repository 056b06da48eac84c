"""Multi-label classification: a sentence (or pair) with a set of labels, one sigmoid each.

Files: TSV with a header, `sentence<TAB>labels` or `sentence1<TAB>sentence2<TAB>labels`; labels
are joined by `|` (an empty field is the empty set). Loss: binary cross-entropy summed over
labels; decode: probability > 0.5; metrics: per-label, micro and macro F1, subset accuracy.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath

from bert_jax.errors import UserError
from bert_jax.finetuning.tasks import features, rows
from bert_jax.finetuning.tasks.base import SequenceScores
from bert_jax.finetuning.tasks.readers import ReadResult, SentenceExample, read_lines, tsv_rows
from bert_jax.model.modeling import BertForSequenceClassification

SEPARATOR = "|"
LABELS_COLUMN = "labels"
_AMBIGUOUS = (",", ";", " ")  # a label holding one of these is most likely two labels


def parse_labels(field: str, origin: str) -> tuple[str, ...]:
    """The labels of one `|`-joined field; a UserError naming `origin` when it is ambiguous."""
    if not field.strip():
        return ()
    labels = tuple(label.strip() for label in field.split(SEPARATOR))
    for label in labels:
        if not label or any(c in label for c in _AMBIGUOUS):
            raise UserError(
                f"{origin}: labels field {field!r} is ambiguous: join labels with {SEPARATOR!r} "
                f"only (no empty labels, and no ',', ';' or spaces inside a label)"
            )
    return tuple(dict.fromkeys(labels))


def read_tsv(path, labeled: bool = True) -> ReadResult:
    """SentenceExamples whose label is a tuple of labels, from `sentence(1, sentence2)<TAB>labels`
    with a header (local or gs://); blank lines are skipped and counted."""
    lines = read_lines(epath.Path(path))
    if not lines:
        raise UserError(f"{path} is empty: it needs a header line (sentence<TAB>labels)")
    header = [name.strip() for name in lines[0].split("\t")]
    pair = "sentence1" in header and "sentence2" in header
    text_columns = ["sentence1", "sentence2"] if pair else ["sentence"]
    has_labels = LABELS_COLUMN in header
    missing = [c for c in text_columns + ([LABELS_COLUMN] if labeled else []) if c not in header]
    if missing:
        raise UserError(f"{path}:1: header {header} lacks {missing}; see docs/tasks.md")
    examples = []
    rows, blank = tsv_rows(path, header, lines)
    for number, row in rows:
        origin = f"{path}:{number}"
        label = parse_labels(row.pop(LABELS_COLUMN), origin) if has_labels else None
        texts = [row[name] for name in text_columns]
        examples.append(
            SentenceExample(
                guid=f"{epath.Path(path).stem}-{number}",
                text_a=texts[0],
                text_b=texts[1] if pair else None,
                label=label,
                fields=row,
                origin=origin,
            )
        )
    columns = [name for name in header if name != LABELS_COLUMN]
    return ReadResult(examples, has_labels, columns, str(path), num_skipped=blank)


def label_list_of(label_sets) -> list[str]:
    """The sorted labels the training sets use: the head's outputs, in order."""
    return sorted({label for labels in label_sets for label in labels})


def multi_hot(label_sets, label_list: list[str], origin: str = "dev") -> np.ndarray:
    """float32 [n, C]: 1 where example i has label j; a UserError for an unknown label."""
    index = {label: i for i, label in enumerate(label_list)}
    out = np.zeros((len(label_sets), len(label_list)), np.float32)
    for row, labels in enumerate(label_sets):
        for label in labels:
            if label not in index:
                raise UserError(
                    f"{origin}: label {label!r} never occurs in the training data; fix the label "
                    "or add training examples"
                )
            out[row, index[label]] = 1.0
    return out


def loss_sums(logits: jax.Array, targets: jax.Array, weights: jax.Array) -> dict[str, jax.Array]:
    """Binary cross-entropy of every label, summed over labels and weighted examples.

    logits, targets [..., C]; weights [...] (1 = scored). correct counts exact set matches.
    """
    logits = logits.astype(jnp.float32)
    bce = jnp.maximum(logits, 0) - logits * targets + jnp.log1p(jnp.exp(-jnp.abs(logits)))
    exact = jnp.all((logits > 0) == (targets > 0.5), axis=-1)
    return {
        "loss_sum": jnp.sum(jnp.sum(bce, -1) * weights),
        "count": jnp.sum(weights),
        "correct": jnp.sum(exact * weights),
    }


def decode(logits: np.ndarray) -> np.ndarray:
    """bool [n, C]: the labels whose sigmoid probability exceeds 0.5 (logit > 0)."""
    return np.asarray(logits) > 0


def _f1(tp, fp, fn):
    denominator = 2 * tp + fp + fn
    return np.where(denominator > 0, 2 * tp / np.maximum(denominator, 1), 0.0)


def metrics(gold: np.ndarray, predicted: np.ndarray, label_list: list[str]) -> dict[str, float]:
    """micro_f1, macro_f1 (over the labels gold or predicted anywhere; the others have nothing
    to score), subset_accuracy (exact sets) and f1/<label> for every label of label_list."""
    gold, predicted = np.asarray(gold) > 0.5, np.asarray(predicted).astype(bool)
    tp = np.sum(gold & predicted, 0).astype(np.float64)
    fp = np.sum(~gold & predicted, 0).astype(np.float64)
    fn = np.sum(gold & ~predicted, 0).astype(np.float64)
    per_label = _f1(tp, fp, fn)
    seen = (tp + fp + fn) > 0
    out = {
        "micro_f1": float(_f1(tp.sum(), fp.sum(), fn.sum())),
        "macro_f1": float(per_label[seen].mean()) if seen.any() else 0.0,
        "subset_accuracy": float(np.mean(np.all(gold == predicted, 1))) if len(gold) else 0.0,
    }
    out.update({f"f1/{label}": float(f) for label, f in zip(label_list, per_label, strict=True)})
    return out


def most_frequent_baseline(train_sets, label_list: list[str], n: int) -> np.ndarray:
    """bool [n, C]: every example gets the training set's most frequent label set."""
    counts: dict[tuple[str, ...], int] = {}
    for labels in train_sets:
        key = tuple(sorted(labels))
        counts[key] = counts.get(key, 0) + 1
    best = max(counts, key=lambda key: (counts[key], key))
    row = np.isin(label_list, best)
    return np.broadcast_to(row, (n, len(label_list))).copy()


class MultiLabel(SequenceScores):
    """One sigmoid per label on the [CLS] head; labels float32 [n, C] multi-hot (-1: unlabeled)."""

    hf_task_model = ("BertForSequenceClassification", "multi_label_classification")

    packed_fill = {"labels": -1.0}
    recipe = {"learning_rate": 5e-5}

    def read_file(self, path, labeled):
        return read_tsv(path, labeled)

    def read_rows(self, table, labeled, columns):
        parse = functools.partial(rows.label_set, parse_joined=parse_labels)
        return rows.sentence_examples(table, columns, labeled, parse)

    def read_tfds(self, records, features_dict, origin, split, tfds_split):
        raise UserError(f"{origin}: the multilabel kind reads TSV files only (task.*_file)")

    def featurise(self, examples, tokenizer, task_config, split, max_seq_length, label_to_id,
                  labeled):  # fmt: skip
        arrays, truncated = features.featurise_sentences(
            examples, tokenizer, max_seq_length, None, labeled=False
        )
        label_list = list(label_to_id)
        if labeled:
            arrays["labels"] = multi_hot([e.label for e in examples], label_list, split)
        else:
            arrays["labels"] = np.full((len(examples), len(label_list)), -1.0, np.float32)
        return arrays, {}, {"num_truncated": truncated}

    def model(self, config, num_labels, crf=False, window=0):
        return BertForSequenceClassification(config, num_labels)

    def target_weights(self, batch):
        return batch["weights"].astype(jnp.float32) * (batch["labels"][..., 0] >= 0)

    def loss_sums(self, outputs, batch):
        return loss_sums(outputs, batch["labels"], self.target_weights(batch))

    def decode(self, predictions, data, constrained=True, crf=None):
        return decode(predictions)  # bool [n, C]

    def metrics(self, outputs, data):
        gold = multi_hot([e.label for e in data.examples], data.label_list)
        return metrics(gold, outputs, data.label_list)

    def main_metric(self, data):
        return "micro_f1"

    def write_predictions(self, outputs, data, f):
        f.write("\t".join([*data.columns, LABELS_COLUMN]) + "\n")
        for example, row in zip(data.examples, outputs, strict=True):
            values = [example.fields[c].replace("\t", " ") for c in data.columns]
            chosen = [label for label, on in zip(data.label_list, row, strict=True) if on]
            f.write("\t".join([*values, SEPARATOR.join(chosen)]) + "\n")
