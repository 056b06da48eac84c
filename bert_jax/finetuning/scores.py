"""Fine-tuning metrics in plain numpy / Python (no sklearn or scipy at run time).

Every score is a fraction in [0, 1] (correlations in [-1, 1]); the official SQuAD script prints
100 times the values returned here. Degenerate inputs whose score is mathematically undefined
(a constant prediction for a correlation, no predicted or gold entity for F1) score 0.0 rather
than NaN, so metrics.jsonl stays valid JSON and "best checkpoint" comparisons keep working.
"""

from __future__ import annotations

import collections
import re
import string
from collections.abc import Sequence

import numpy as np


def _as_1d(values, name: str) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {array.shape}")
    return array


def _check_same_length(labels: np.ndarray, predictions: np.ndarray) -> None:
    if labels.shape != predictions.shape:
        raise ValueError(f"labels {labels.shape} and predictions {predictions.shape} differ")
    if labels.size == 0:
        raise ValueError("metrics need at least one example")


# --- classification -------------------------------------------------------------------------------


def accuracy(labels: Sequence, predictions: Sequence) -> float:
    """Fraction of exact matches; labels and predictions are [n] ids or strings."""
    labels, predictions = _as_1d(labels, "labels"), _as_1d(predictions, "predictions")
    _check_same_length(labels, predictions)
    return float(np.mean(labels == predictions))


def _confusion_matrix(labels: np.ndarray, predictions: np.ndarray) -> np.ndarray:
    """[k, k] counts: rows gold, columns predicted, over the classes seen in either."""
    classes, encoded = np.unique(np.concatenate([labels, predictions]), return_inverse=True)
    gold, predicted = encoded[: len(labels)], encoded[len(labels) :]
    matrix = np.zeros((len(classes), len(classes)), dtype=np.int64)
    np.add.at(matrix, (gold, predicted), 1)
    return matrix


def macro_f1(labels: Sequence, predictions: Sequence) -> float:
    """Unweighted mean of per-class F1 over the classes that occur in labels or predictions.

    Matches sklearn's f1_score(average="macro") with zero_division=0: a class that is never
    predicted (or never gold) contributes F1 = 0.
    """
    labels, predictions = _as_1d(labels, "labels"), _as_1d(predictions, "predictions")
    _check_same_length(labels, predictions)
    matrix = _confusion_matrix(labels, predictions)
    true_positives = np.diag(matrix).astype(np.float64)
    denominator = matrix.sum(axis=0) + matrix.sum(axis=1)  # predicted + gold = 2TP + FP + FN
    f1 = np.divide(
        2 * true_positives, denominator, out=np.zeros_like(true_positives), where=denominator > 0
    )
    return float(f1.mean())


def matthews_corrcoef(labels: Sequence, predictions: Sequence) -> float:
    """Matthews correlation, in its multi-class form (Gorodkin 2004), as sklearn computes it.

    MCC = (c*s - sum_k p_k t_k) / sqrt((s^2 - sum_k p_k^2) (s^2 - sum_k t_k^2)) with c correct
    predictions, s examples, p_k / t_k the predicted / true counts of class k; 0.0 when undefined.
    """
    labels, predictions = _as_1d(labels, "labels"), _as_1d(predictions, "predictions")
    _check_same_length(labels, predictions)
    matrix = _confusion_matrix(labels, predictions).astype(np.float64)
    true_counts, predicted_counts = matrix.sum(axis=1), matrix.sum(axis=0)
    correct, total = np.trace(matrix), matrix.sum()
    covariance = correct * total - predicted_counts @ true_counts
    variance_pred = total**2 - predicted_counts @ predicted_counts
    variance_true = total**2 - true_counts @ true_counts
    if variance_pred == 0 or variance_true == 0:
        return 0.0
    return float(covariance / np.sqrt(variance_pred * variance_true))


# --- regression -----------------------------------------------------------------------------------


def pearson(labels: Sequence[float], predictions: Sequence[float]) -> float:
    """Pearson correlation of two [n] float arrays; 0.0 when either is constant."""
    x = _as_1d(labels, "labels").astype(np.float64)
    y = _as_1d(predictions, "predictions").astype(np.float64)
    _check_same_length(x, y)
    x, y = x - x.mean(), y - y.mean()
    norm = np.sqrt((x @ x) * (y @ y))
    if norm == 0:
        return 0.0
    return float(np.clip((x @ y) / norm, -1.0, 1.0))


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks with ties sharing their mean rank (scipy.stats.rankdata "average")."""
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    is_new_value = np.concatenate([[True], sorted_values[1:] != sorted_values[:-1]])
    group = np.cumsum(is_new_value) - 1
    group_starts = np.flatnonzero(is_new_value)
    group_ends = np.append(group_starts[1:], len(values))  # exclusive
    mean_rank = (group_starts + 1 + group_ends) / 2.0  # mean of ranks start+1 .. end
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = mean_rank[group]
    return ranks


def spearman(labels: Sequence[float], predictions: Sequence[float]) -> float:
    """Spearman rank correlation (Pearson of average ranks); 0.0 when either side is constant."""
    x = _as_1d(labels, "labels").astype(np.float64)
    y = _as_1d(predictions, "predictions").astype(np.float64)
    _check_same_length(x, y)
    return pearson(_average_ranks(x), _average_ranks(y))


# --- token classification -------------------------------------------------------------------------


def token_accuracy(labels: Sequence[Sequence], predictions: Sequence[Sequence]) -> float:
    """Word-level accuracy over sentences: labels / predictions are lists of per-word tag lists."""
    if len(labels) != len(predictions):
        raise ValueError(f"{len(labels)} gold sentences but {len(predictions)} predicted")
    correct = total = 0
    for index, (gold, predicted) in enumerate(zip(labels, predictions, strict=True)):
        if len(gold) != len(predicted):
            raise ValueError(f"sentence {index}: {len(gold)} gold tags, {len(predicted)} predicted")
        correct += sum(g == p for g, p in zip(gold, predicted, strict=True))
        total += len(gold)
    if total == 0:
        raise ValueError("token_accuracy needs at least one word")
    return correct / total


_CHUNK_PREFIXES = ("B", "I", "E", "S", "M")  # IOB1, IOB2, IOBES/BIOES and BMES


def is_bio_tagset(tags: Sequence[str]) -> bool:
    """True when every tag is O or PREFIX-TYPE with PREFIX one of B, I, E, S, M (IOB1, IOB2,
    IOBES/BIOES, BMES) and at least one entity tag occurs, so entity F1 is meaningful."""
    has_entity = False
    for tag in tags:
        if tag == "O":
            continue
        if len(tag) < 3 or tag[0] not in _CHUNK_PREFIXES or tag[1] != "-":
            return False
        has_entity = True
    return has_entity


def split_tag(tag: str) -> tuple[str, str]:
    """(prefix, type) as seqeval reads a tag: the first character, and what follows the first
    "-" after it ("_" when nothing does, so "O" has type "_")."""
    return tag[:1], tag[1:].split("-", maxsplit=1)[-1] or "_"


def _ends_chunk(prev: str, prev_type: str, tag: str, entity_type: str) -> bool:
    if prev in ("E", "S"):
        return True
    if prev in ("B", "I") and tag in ("B", "S", "O"):
        return True
    return prev not in ("O", ".") and prev_type != entity_type


def _starts_chunk(prev: str, prev_type: str, tag: str, entity_type: str) -> bool:
    if tag in ("B", "S"):
        return True
    if prev in ("E", "S", "O") and tag in ("E", "I"):
        return True
    return tag not in ("O", ".") and prev_type != entity_type


def bio_entities(tags: Sequence[str]) -> list[tuple[str, int, int]]:
    """Entity spans (type, first word, last word inclusive) of one sentence's tags.

    Exactly seqeval's default (conlleval) mode, also on ill-formed sequences: an entity starts
    at B-X or S-X, and at I-X / E-X that follows O, E-*, S-* or a tag of another type (so IOB1
    and sloppy IOB2 are read leniently); it ends after E-X or S-X and before O, B-*, S-* or a tag
    of another type. M-X (BMES) continues like I-X.
    """
    entities = []
    prev, prev_type, start = "O", "_", 0
    for position, tag in enumerate([*tags, "O"]):
        prefix, entity_type = split_tag(tag)
        if _ends_chunk(prev, prev_type, prefix, entity_type):
            entities.append((prev_type, start, position - 1))
        if _starts_chunk(prev, prev_type, prefix, entity_type):
            start = position
        prev, prev_type = prefix, entity_type
    return entities


def _precision_recall_f1(correct: int, predicted: int, gold: int) -> dict[str, float]:
    precision = correct / predicted if predicted else 0.0
    recall = correct / gold if gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


def entity_scores_by_type(
    labels: Sequence[Sequence[str]], predictions: Sequence[Sequence[str]]
) -> dict[str, dict[str, float]]:
    """Exact-span entity precision, recall, F1 and gold count (support) per entity type and
    micro-averaged over all types ("overall"): seqeval's classification_report, with 0.0 where
    seqeval's zero_division would apply. Types seen only in predictions get a row too."""
    if len(labels) != len(predictions):
        raise ValueError(f"{len(labels)} gold sentences but {len(predictions)} predicted")
    counts = collections.defaultdict(lambda: [0, 0, 0])  # type -> [correct, predicted, gold]
    for index, (gold_tags, predicted_tags) in enumerate(zip(labels, predictions, strict=True)):
        if len(gold_tags) != len(predicted_tags):
            raise ValueError(
                f"sentence {index}: {len(gold_tags)} gold tags, {len(predicted_tags)} predicted"
            )
        gold = set(bio_entities(gold_tags))
        predicted = set(bio_entities(predicted_tags))
        for entity in gold & predicted:
            counts[entity[0]][0] += 1
        for entity in predicted:
            counts[entity[0]][1] += 1
        for entity in gold:
            counts[entity[0]][2] += 1
    scores = {}
    for entity_type in sorted(counts):
        correct, predicted, gold = counts[entity_type]
        scores[entity_type] = dict(_precision_recall_f1(correct, predicted, gold), support=gold)
    totals = [sum(c[i] for c in counts.values()) for i in range(3)]
    scores["overall"] = dict(_precision_recall_f1(*totals), support=totals[2])
    return scores


def entity_metrics(
    labels: Sequence[Sequence[str]],
    predictions: Sequence[Sequence[str]],
    entity_types: Sequence[str] = (),
) -> dict[str, float]:
    """Flat entity scores for metrics.jsonl / eval_results.json: overall precision, recall, f1,
    then f1_TYPE for every type in entity_types and every type gold or predictions hold (so the
    keys stay the same from one evaluation to the next when entity_types lists the label set's)."""
    table = entity_scores_by_type(labels, predictions)
    flat = {k: table["overall"][k] for k in ("precision", "recall", "f1")}
    for entity_type in sorted(set(entity_types) | (set(table) - {"overall"})):
        flat[f"f1_{entity_type}"] = table.get(entity_type, {"f1": 0.0})["f1"]
    return flat


def entity_types(tags: Sequence[str]) -> list[str]:
    """The entity types of a tag set (B-PER, I-PER, O -> [PER]), as bio_entities names them."""
    return sorted({split_tag(tag)[1] for tag in tags if tag != "O"})


def entity_precision_recall_f1(
    labels: Sequence[Sequence[str]], predictions: Sequence[Sequence[str]]
) -> dict[str, float]:
    """Micro-averaged exact-span entity precision, recall and F1 over sentences (seqeval)."""
    overall = entity_scores_by_type(labels, predictions)["overall"]
    return {k: overall[k] for k in ("precision", "recall", "f1")}


# --- SQuAD v1.1 -----------------------------------------------------------------------------------

_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    """The official SQuAD v1.1 normalisation: lowercase, drop punctuation and articles, squeeze."""
    text = "".join(char for char in text.lower() if char not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def squad_exact_match(prediction: str, gold_answers: Sequence[str]) -> float:
    """1.0 when the normalised prediction equals any normalised gold answer."""
    normalized = normalize_answer(prediction)
    return float(any(normalized == normalize_answer(gold) for gold in gold_answers))


def _token_f1(prediction: str, gold: str) -> float:
    predicted_tokens = normalize_answer(prediction).split()
    gold_tokens = normalize_answer(gold).split()
    overlap = sum(
        (collections.Counter(predicted_tokens) & collections.Counter(gold_tokens)).values()
    )
    if overlap == 0:
        return 0.0
    precision, recall = overlap / len(predicted_tokens), overlap / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def squad_f1(prediction: str, gold_answers: Sequence[str]) -> float:
    """Bag-of-tokens F1 of the normalised answer, maximised over the gold answers."""
    return max(_token_f1(prediction, gold) for gold in gold_answers)


def squad_scores(
    predictions: dict[str, str], gold_answers: dict[str, Sequence[str]]
) -> dict[str, float]:
    """Mean exact_match and f1 over every question of gold_answers ({id: [answer texts]}).

    A question without a prediction scores 0, as in the official evaluate-v1.1.py.
    """
    if not gold_answers:
        raise ValueError("squad_scores needs at least one question")
    exact = f1 = 0.0
    for question_id, answers in gold_answers.items():
        if not answers:
            raise ValueError(f"question {question_id!r} has no gold answer")
        prediction = predictions.get(question_id)
        if prediction is None:
            continue
        exact += squad_exact_match(prediction, answers)
        f1 += squad_f1(prediction, answers)
    return {"exact_match": exact / len(gold_answers), "f1": f1 / len(gold_answers)}
