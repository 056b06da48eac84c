"""Metrics against hand-computed values and sklearn / scipy references."""

import warnings

import numpy as np
import pytest
import scipy.stats
import sklearn.metrics

from bert_jax.finetuning import scores as metrics


def test_accuracy_hand_computed():
    assert metrics.accuracy([0, 1, 2, 2], [0, 2, 2, 2]) == 0.75
    assert metrics.accuracy(["a", "b"], ["b", "a"]) == 0.0


def test_macro_f1_hand_computed():
    # class a: TP 1, FP 1, FN 1 -> F1 1/2; class b: TP 1, FP 1, FN 0 -> 2/3;
    # class c: TP 0, FP 0, FN 1 -> 0. Mean = (1/2 + 2/3 + 0) / 3.
    gold = ["a", "a", "b", "c"]
    predicted = ["a", "b", "b", "a"]
    assert metrics.macro_f1(gold, predicted) == pytest.approx((0.5 + 2 / 3 + 0) / 3)


def test_mcc_binary_hand_computed():
    # TP 3, TN 4, FP 1, FN 2: (3*4 - 1*2) / sqrt(4 * 5 * 5 * 6) = 10 / sqrt(600)
    gold = [1] * 5 + [0] * 5
    predicted = [1, 1, 1, 0, 0] + [1, 0, 0, 0, 0]
    assert metrics.matthews_corrcoef(gold, predicted) == pytest.approx(10 / np.sqrt(600))


def test_classification_metrics_match_sklearn_on_random_labels():
    rng = np.random.default_rng(0)
    for num_classes in (2, 3, 7):
        gold = rng.integers(0, num_classes, 200)
        predicted = np.where(rng.random(200) < 0.6, gold, rng.integers(0, num_classes, 200))
        assert metrics.accuracy(gold, predicted) == pytest.approx(
            sklearn.metrics.accuracy_score(gold, predicted)
        )
        assert metrics.macro_f1(gold, predicted) == pytest.approx(
            sklearn.metrics.f1_score(gold, predicted, average="macro", zero_division=0)
        )
        assert metrics.matthews_corrcoef(gold, predicted) == pytest.approx(
            sklearn.metrics.matthews_corrcoef(gold, predicted)
        )
    # A class only ever predicted, never gold, still lowers macro F1 (sklearn's label union).
    gold, predicted = [0, 0, 1, 1], [0, 2, 1, 1]
    assert metrics.macro_f1(gold, predicted) == pytest.approx(
        sklearn.metrics.f1_score(gold, predicted, average="macro", zero_division=0)
    )


def test_mcc_constant_prediction_is_zero():
    assert metrics.matthews_corrcoef([0, 1, 1, 0], [1, 1, 1, 1]) == 0.0


def test_correlations_match_scipy_with_ties():
    rng = np.random.default_rng(1)
    x = rng.integers(0, 5, 100).astype(float)  # many ties
    y = x + rng.normal(0, 1.5, 100)
    assert metrics.pearson(x, y) == pytest.approx(scipy.stats.pearsonr(x, y)[0])
    assert metrics.spearman(x, y) == pytest.approx(scipy.stats.spearmanr(x, y)[0])
    assert metrics.spearman([1, 2, 3], [10, 20, 1000]) == pytest.approx(1.0)
    assert metrics.pearson([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert metrics.pearson([1, 2, 3], [5, 5, 5]) == 0.0


def test_token_accuracy_counts_words_across_sentences():
    gold = [["a", "b", "c"], ["a"]]
    predicted = [["a", "x", "c"], ["b"]]
    assert metrics.token_accuracy(gold, predicted) == 0.5
    with pytest.raises(ValueError, match="sentence 0"):
        metrics.token_accuracy([["a"]], [["a", "b"]])


def test_bio_entities_follow_conlleval_chunking():
    tags = ["B-PER", "I-PER", "O", "I-LOC", "I-LOC", "B-LOC", "I-ORG", "B-PER"]
    assert metrics.bio_entities(tags) == [
        ("PER", 0, 1),
        ("LOC", 3, 4),  # I- after O opens an entity
        ("LOC", 5, 5),
        ("ORG", 6, 6),  # I- of another type opens a new one
        ("PER", 7, 7),  # an entity running to the end is closed
    ]
    assert metrics.is_bio_tagset(["O", "B-PER", "I-PER"])
    assert not metrics.is_bio_tagset(["nn", "vb"])
    assert not metrics.is_bio_tagset(["O"])


def test_entity_f1_hand_computed_seqeval_readme_example():
    gold = [["O", "O", "O", "B-MISC", "I-MISC", "I-MISC", "O"], ["B-PER", "I-PER", "O"]]
    predicted = [["O", "O", "B-MISC", "I-MISC", "I-MISC", "I-MISC", "O"], ["B-PER", "I-PER", "O"]]
    scores = metrics.entity_precision_recall_f1(gold, predicted)
    assert scores == pytest.approx({"precision": 0.5, "recall": 0.5, "f1": 0.5})
    # 3 gold, 2 predicted, 1 right: P 1/2, R 1/3, F1 2PR/(P+R) = 0.4
    gold = [["B-A", "O", "B-B", "I-B", "B-C"]]
    predicted = [["B-A", "O", "B-B", "O", "O"]]
    scores = metrics.entity_precision_recall_f1(gold, predicted)
    assert scores == pytest.approx({"precision": 0.5, "recall": 1 / 3, "f1": 0.4})


def test_squad_normalisation_and_scores():
    assert metrics.normalize_answer("The  Quick, brown fox!") == "quick brown fox"
    assert metrics.normalize_answer("an Apple a day") == "apple day"
    assert metrics.normalize_answer("theatre") == "theatre"  # articles only as whole words
    assert metrics.squad_exact_match("the Eiffel Tower.", ["Eiffel tower", "Paris"]) == 1.0
    # pred {cat, sat} vs gold {cat, sat, on}: P 1, R 2/3 -> F1 0.8; the other gold scores 0
    assert metrics.squad_f1("the cat sat", ["a cat sat on", "dog"]) == pytest.approx(0.8)
    assert metrics.squad_f1("", ["cat"]) == 0.0
    scores = metrics.squad_scores(
        {"q1": "Eiffel Tower", "q2": "the cat sat"},
        {"q1": ["eiffel tower"], "q2": ["a cat sat on"], "q3": ["missing"]},
    )
    assert scores == pytest.approx({"exact_match": 1 / 3, "f1": (1 + 0.8 + 0) / 3})


def test_entity_chunking_equals_seqeval_on_ill_formed_sequences():
    """Random tag sequences, with I- after O, I- of another type, E-/S- (IOBES) and M- (BMES):
    the same entities as seqeval's default mode, and the same per-type report."""
    seqeval_metrics = pytest.importorskip("seqeval.metrics")
    from seqeval.metrics.sequence_labeling import get_entities

    rng = np.random.default_rng(0)
    tags = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "I-ORG", "E-LOC", "S-PER", "M-ORG", "E-PER"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # seqeval warns about M- tags
        for _ in range(3000):
            sequence = [str(t) for t in rng.choice(tags, rng.integers(0, 12))]
            assert sorted(metrics.bio_entities(sequence)) == sorted(get_entities(sequence))
    gold = [[str(t) for t in rng.choice(tags[:6], rng.integers(1, 12))] for _ in range(200)]
    predicted = [[str(t) for t in rng.choice(tags[:8], len(g))] for g in gold]
    report = seqeval_metrics.classification_report(
        gold, predicted, output_dict=True, zero_division=0
    )
    ours = metrics.entity_scores_by_type(gold, predicted)
    assert set(ours) == {"PER", "LOC", "ORG", "overall"}
    for name, row in ours.items():
        expected = report["micro avg" if name == "overall" else name]
        assert row["f1"] == pytest.approx(expected["f1-score"], abs=1e-12)
        assert row["precision"] == pytest.approx(expected["precision"], abs=1e-12)
        assert row["recall"] == pytest.approx(expected["recall"], abs=1e-12)
        assert row["support"] == expected["support"]


def test_iobes_tags_get_entity_scores():
    assert metrics.is_bio_tagset(["O", "B-PER", "E-PER", "S-LOC"])
    assert metrics.bio_entities(["B-PER", "E-PER", "S-LOC", "S-LOC"]) == [
        ("PER", 0, 1),
        ("LOC", 2, 2),
        ("LOC", 3, 3),  # S- always closes
    ]
    assert metrics.entity_types(["O", "B-PER", "I-PER", "S-LOC"]) == ["LOC", "PER"]
    flat = metrics.entity_metrics([["B-PER", "E-PER"]], [["S-PER", "O"]], ["LOC", "PER"])
    assert flat == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "f1_LOC": 0.0, "f1_PER": 0.0}
    flat = metrics.entity_metrics([["B-PER", "I-PER", "O"]], [["B-PER", "I-PER", "B-ORG"]])
    assert flat == pytest.approx(
        {"precision": 0.5, "recall": 1.0, "f1": 2 / 3, "f1_ORG": 0.0, "f1_PER": 1.0}
    )
