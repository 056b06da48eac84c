"""The multilabel and embedding task kinds: loss, decoding and metrics against numpy written out
by hand, the sentence-transformers export against bert_jax's own embeddings, and the
preparation of their real-data TSVs."""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tiny_models import save_tiny_hf_bert

from bert_jax.convert import hf
from bert_jax.data.tokenization import WordPieceTokenizer
from bert_jax.errors import UserError
from bert_jax.finetuning.tasks import embedding, multilabel
from bert_jax.finetuning.tasks.features import featurise_texts
from bert_jax.model.modeling import BertModel

REPO = pathlib.Path(__file__).resolve().parents[1]


# --- multilabel --------------------------------------------------------------------------------


def test_multilabel_loss_is_the_summed_binary_cross_entropy():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(4, 3)).astype(np.float32) * 3
    targets = np.array([[1, 0, 1], [0, 0, 0], [1, 1, 1], [0, 1, 0]], np.float32)
    weights = np.array([1, 1, 0, 1], np.float32)
    p = 1 / (1 + np.exp(-logits.astype(np.float64)))
    bce = -(targets * np.log(p) + (1 - targets) * np.log(1 - p))
    sums = multilabel.loss_sums(jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(weights))
    np.testing.assert_allclose(float(sums["loss_sum"]), (bce.sum(1) * weights).sum(), rtol=1e-5)
    assert float(sums["count"]) == 3.0
    exact = np.all((p > 0.5) == (targets > 0.5), 1)
    assert float(sums["correct"]) == float((exact * weights).sum())


def test_multilabel_loss_is_finite_for_huge_logits():
    logits = jnp.array([[80.0, -80.0]])
    sums = multilabel.loss_sums(logits, jnp.array([[0.0, 1.0]]), jnp.ones(1))
    np.testing.assert_allclose(float(sums["loss_sum"]), 160.0, rtol=1e-6)


def test_multilabel_decode_and_metrics_match_a_hand_count():
    labels = ["a", "b", "c", "d"]
    gold = np.array([[1, 1, 0, 0], [0, 1, 0, 0], [1, 0, 0, 0]], np.float32)
    logits = np.array([[2.0, -1.0, 0.5, -3.0], [-1.0, 0.1, -1.0, -1.0], [1.0, -1.0, -1.0, -1.0]])
    predicted = multilabel.decode(logits)
    assert predicted.tolist() == [
        [True, False, True, False],
        [False, True, False, False],
        [True, False, False, False],
    ]
    scores = multilabel.metrics(gold, predicted, labels)
    # a: tp 2 -> 1.0; b: tp 1, fn 1 -> 2/3; c: fp 1 -> 0; d: nothing gold or predicted, left out
    assert scores["f1/a"] == 1.0
    assert scores["f1/b"] == pytest.approx(2 / 3)
    assert scores["f1/c"] == 0.0
    assert scores["macro_f1"] == pytest.approx((1 + 2 / 3 + 0) / 3)
    # micro: tp 3, fp 1, fn 1 -> 6 / 8
    assert scores["micro_f1"] == pytest.approx(0.75)
    assert scores["subset_accuracy"] == pytest.approx(2 / 3)


def test_multilabel_labels_parse_and_ambiguous_fields_are_refused(tmp_path):
    assert multilabel.parse_labels("noun.act|verb.motion|noun.act", "x") == (
        "noun.act",
        "verb.motion",
    )
    assert multilabel.parse_labels("", "x") == ()
    for field in ("a,b", "a b", "a||b", "a;b"):
        with pytest.raises(UserError, match="ambiguous"):
            multilabel.parse_labels(field, "f.tsv:3")
    path = tmp_path / "t.tsv"
    path.write_text("sentence\tlabels\nbank\tnoun.group|noun.object\nrun\t\n", encoding="utf-8")
    texts, pairs, sets = multilabel.read_tsv(path)
    assert texts == ["bank", "run"] and pairs is None
    assert sets == [("noun.group", "noun.object"), ()]
    hot = multilabel.multi_hot(sets, multilabel.label_list_of(sets))
    assert hot.tolist() == [[1.0, 1.0], [0.0, 0.0]]
    with pytest.raises(UserError, match="never occurs"):
        multilabel.multi_hot([("noun.act",)], ["noun.group"])


def test_most_frequent_baseline_predicts_the_commonest_set():
    sets = [("a",), ("a", "b"), ("a",), ("c",)]
    baseline = multilabel.most_frequent_baseline(sets, ["a", "b", "c"], 2)
    assert baseline.tolist() == [[True, False, False]] * 2


# --- embedding ---------------------------------------------------------------------------------


def test_mean_pool_averages_real_tokens_only():
    sequence = jnp.arange(2 * 3 * 2, dtype=jnp.float32).reshape(2, 3, 2)
    mask = jnp.array([[1, 1, 0], [1, 0, 0]])
    pooled = np.asarray(embedding.mean_pool(sequence, mask))
    np.testing.assert_allclose(pooled, [[1.0, 2.0], [6.0, 7.0]])


def test_in_batch_negatives_loss_matches_numpy():
    rng = np.random.default_rng(1)
    a, p = rng.normal(size=(5, 4)), rng.normal(size=(5, 4))
    cos = (a / np.linalg.norm(a, axis=1, keepdims=True)) @ (
        p / np.linalg.norm(p, axis=1, keepdims=True)
    ).T
    scores = 20.0 * cos
    log_softmax = scores - np.log(np.exp(scores).sum(1, keepdims=True))
    sums = embedding.in_batch_negatives_loss(
        jnp.asarray(a, jnp.float32), jnp.asarray(p, jnp.float32)
    )
    np.testing.assert_allclose(float(sums["loss_sum"]), -np.trace(log_softmax), rtol=1e-4)
    assert float(sums["count"]) == 5.0
    assert float(sums["correct"]) == float(np.sum(scores.argmax(1) == np.arange(5)))


def test_retrieval_metrics_rank_each_anchors_positive():
    candidates = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    anchors = np.array([[1.0, 0.1], [1.0, 0.0], [0.2, 1.0]])
    # anchor 0 -> gold 0: best is 0 (rank 1); anchor 1 -> gold 2: 0 is closer (rank 2);
    # anchor 2 -> gold 0: 1 and 2 are closer (rank 3)
    scores = embedding.retrieval_metrics(anchors, candidates, np.array([0, 2, 0]))
    assert scores["accuracy_at_1"] == pytest.approx(1 / 3)
    assert scores["mrr"] == pytest.approx((1 + 1 / 2 + 1 / 3) / 3)
    distinct, gold = embedding.candidates_of(["x", "y", "x"])
    assert distinct == ["x", "y"] and gold.tolist() == [0, 1, 0]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    root = tmp_path_factory.mktemp("embedding")
    corpus = root / "corpus.txt"
    words = "the river stone blue cat runs quickly under a green table lamp".split()
    rng = np.random.default_rng(0)
    corpus.write_text(
        "".join(" ".join(rng.choice(words, 6)) + "\n" for _ in range(200)), encoding="utf-8"
    )
    tokenizer = WordPieceTokenizer.train([corpus], vocab_size=120)
    directory, config, _ = save_tiny_hf_bert(root / "tiny_hf", tokenizer)
    return directory, config, tokenizer


def test_sentence_transformers_export_embeds_like_bert_jax(tiny_model, tmp_path):
    st = pytest.importorskip("sentence_transformers")
    directory, config, tokenizer = tiny_model
    encoder = hf.load_hf_checkpoint(directory, verbose=False)[1]["bert"]
    out = embedding.export_sentence_transformers(
        config,
        encoder,
        (directory / "vocab.txt").read_text(encoding="utf-8"),
        tmp_path / "st",
        lowercase=True,
        max_seq_length=32,
    )
    texts = ["the blue cat runs", "a green lamp under the river stone table", "Stone"]
    arrays = featurise_texts(texts, tokenizer, 32)
    sequence, _ = BertModel(config).apply(
        {"params": encoder}, arrays["input_ids"], arrays["token_type_ids"], arrays["attention_mask"]
    )
    ours = np.asarray(embedding.mean_pool(sequence, jnp.asarray(arrays["attention_mask"])))
    model = st.SentenceTransformer(str(out), device="cpu")
    theirs = model.encode(texts, convert_to_numpy=True, batch_size=8)
    assert theirs.shape == ours.shape == (3, config.hidden_size)
    np.testing.assert_allclose(theirs, ours, atol=1e-5)
    # The folder is a Hugging Face BertModel directory as well: bert_jax reads it back.
    _, params = hf.load_hf_checkpoint(out, verbose=False)
    flat_in, flat_out = jax.tree.leaves(encoder), jax.tree.leaves(params["bert"])
    assert all(np.array_equal(x, y) for x, y in zip(flat_in, flat_out, strict=True))
