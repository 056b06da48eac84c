"""Multi-label classification: a sentence (or pair) with a set of labels, one sigmoid each.

Files: TSV with a header, `sentence<TAB>labels` or `sentence1<TAB>sentence2<TAB>labels`; labels
are joined by `|` (an empty field is the empty set). Loss: binary cross-entropy summed over
labels; decode: probability > 0.5; metrics: per-label, micro and macro F1, subset accuracy.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath

from bert_jax.errors import UserError

SEPARATOR = "|"
MAIN_METRIC = "micro_f1"
PREDICTION_FILE = "test_predictions.tsv"
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


def read_tsv(path, labeled: bool = True):
    """(texts_a, texts_b or None, label sets or None) of a multi-label TSV (local or gs://)."""
    lines = epath.Path(path).read_text(encoding="utf-8").splitlines()
    if not lines:
        raise UserError(f"{path} is empty: it needs a header line (sentence<TAB>labels)")
    header = lines[0].split("\t")
    pair = "sentence2" in header
    want = ["sentence1", "sentence2"] if pair else ["sentence"]
    if labeled:
        want.append("labels")
    missing = [name for name in want if name not in header]
    if missing:
        raise UserError(f"{path}: header {header} lacks {missing}; see docs/tasks.md")
    columns = [header.index(name) for name in want]
    texts_a, texts_b, sets = [], [], []
    for number, line in enumerate(lines[1:], start=2):
        if not line:
            continue
        fields = line.split("\t")
        if len(fields) < len(header):
            raise UserError(f"{path}:{number}: {len(fields)} fields, the header has {len(header)}")
        texts_a.append(fields[columns[0]])
        if pair:
            texts_b.append(fields[columns[1]])
        if labeled:
            sets.append(parse_labels(fields[columns[-1]], f"{path}:{number}"))
    return texts_a, (texts_b if pair else None), (sets if labeled else None)


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


def write_predictions(path, texts_a, texts_b, predicted: np.ndarray, label_list) -> None:
    """TSV `sentence(s)<TAB>labels`, the predicted labels `|`-joined (empty: none)."""
    header = ["sentence1", "sentence2", "labels"] if texts_b is not None else ["sentence", "labels"]
    lines = ["\t".join(header)]
    for i, row in enumerate(np.asarray(predicted, bool)):
        labels = SEPARATOR.join(label for label, on in zip(label_list, row, strict=True) if on)
        texts = [texts_a[i]] + ([texts_b[i]] if texts_b is not None else [])
        lines.append("\t".join([*texts, labels]))
    epath.Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")
