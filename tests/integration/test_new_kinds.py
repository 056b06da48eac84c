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

REPO = pathlib.Path(__file__).resolve().parents[2]


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
    result = multilabel.read_tsv(path)
    assert [e.text_a for e in result.examples] == ["bank", "run"]
    sets = [e.label for e in result.examples]
    assert sets == [("noun.group", "noun.object"), ()]
    path.write_text("sentence\tlabels\nbank\tnoun.group, noun.object\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"t.tsv:2: labels field .* is ambiguous"):
        multilabel.read_tsv(path)
    hot = multilabel.multi_hot(sets, multilabel.label_list_of(sets))
    assert hot.tolist() == [[1.0, 1.0], [0.0, 0.0]]
    with pytest.raises(UserError, match="never occurs"):
        multilabel.multi_hot([("noun.act",)], ["noun.group"])


def test_most_frequent_baseline_predicts_the_commonest_set():
    sets = [("a",), ("a", "b"), ("a",), ("c",)]
    baseline = multilabel.most_frequent_baseline(sets, ["a", "b", "c"], 2)
    assert baseline.tolist() == [[True, False, False]] * 2


def test_packed_rows_carry_per_feature_label_vectors():
    """Multi-hot targets [n, C] pack to [R, S, C], empty slots filled; unpacked rows keep all C."""
    from bert_jax.data import packing

    lengths = np.array([3, 2, 4])
    ids = np.arange(3 * 6).reshape(3, 6)
    labels = np.array(
        [[1, 0, 0, 1, 1, 0, 0, 0], [0, 1, 0, 0, 0, 0, 0, 0], [1, 1, 1, 0, 0, 0, 0, 1]]
    )
    slots = np.array([[0, 1], [2, -1]])
    out = packing.packed_rows(
        {"input_ids": ids, "labels": labels.astype(np.float32)}, lengths, slots, 6, ["input_ids"],
        {"labels": -1.0},
    )  # fmt: skip
    assert out["labels"].shape == (2, 2, 8)
    np.testing.assert_array_equal(out["labels"][0], labels[:2])
    np.testing.assert_array_equal(out["labels"][1, 0], labels[2])
    assert (out["labels"][1, 1] == -1).all()


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
    # A filler row (weight 0) is neither an anchor nor anyone's negative.
    weights = jnp.array([1, 1, 1, 1, 0], jnp.float32)
    masked = embedding.in_batch_negatives_loss(
        jnp.asarray(a, jnp.float32), jnp.asarray(p, jnp.float32), 20.0, weights
    )
    sub = scores[:4, :4]
    sub_log_softmax = sub - np.log(np.exp(sub).sum(1, keepdims=True))
    np.testing.assert_allclose(float(masked["loss_sum"]), -np.trace(sub_log_softmax), rtol=1e-4)
    assert float(masked["count"]) == 4.0


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


# --- end to end --------------------------------------------------------------------------------

COLOURS = ["red", "blue"]
FILLER = "the a of river stone cat runs quickly under table lamp".split()
TOPICS = [f"{a}{b}" for a in "bcdfg" for b in ("ox", "ix", "ud", "em")]  # 20 keyword words


def _write(path: pathlib.Path, lines: list[str]) -> pathlib.Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def _tasks(root: pathlib.Path) -> dict[str, pathlib.Path]:
    """multilabel: the colour words a sentence holds are its labels; embedding: an anchor and its
    positive share a topic word (different filler around it)."""
    rng = np.random.default_rng(0)
    files = {}
    for split, n in (("train", 160), ("dev", 40), ("test", 20)):
        labelled, pairs = ["sentence\tlabels"], ["sentence1\tsentence2"]
        for i in range(n):
            colours = [c for c in COLOURS if rng.random() < 0.4]
            words = list(rng.choice(FILLER, 5)) + colours
            rng.shuffle(words)
            labelled.append(f"{' '.join(words)}\t{'|'.join(colours)}")
            topic = TOPICS[i % len(TOPICS)]
            first = " ".join([*rng.choice(FILLER, 2), topic, *rng.choice(FILLER, 2)])
            second = " ".join([*rng.choice(FILLER, 3), topic])
            pairs.append(f"{first}\t{second}")
        files[f"ml_{split}"] = _write(root / f"ml_{split}.tsv", labelled)
        files[f"emb_{split}"] = _write(root / f"emb_{split}.tsv", pairs)
    return files


@pytest.fixture(scope="module")
def e2e(tmp_path_factory):
    root = tmp_path_factory.mktemp("new_kinds")
    files = _tasks(root)
    tokenizer = WordPieceTokenizer.train(list(files.values()), vocab_size=200)
    return save_tiny_hf_bert(root / "tiny_hf", tokenizer)[0], files


def _config(kind: str, model_dir, files, prefix: str, **overrides):
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        kind, REPO / "configs" / "finetune" / f"{kind}.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config("test")
    config.init_checkpoint = str(model_dir)
    config.task.train_file = str(files[f"{prefix}_train"])
    config.task.dev_file = str(files[f"{prefix}_dev"])
    config.task.test_file = str(files[f"{prefix}_test"])
    for key, value in overrides.items():
        config[key] = value
    return config


def test_multilabel_learns_colour_sets_and_predicts_them(e2e, tmp_path):
    from bert_jax.finetuning import train as finetune_lib

    model_dir, files = e2e
    config = _config(
        "multilabel", model_dir, files, "ml", batch_size=16, num_train_epochs=12.0,
        learning_rate=5e-3, do_predict=True,
    )  # fmt: skip
    config.task.test_file = str(files["ml_dev"])
    assert config.packing  # short sentences share rows: the [R, S, C] label layout is exercised
    result = finetune_lib.train_and_evaluate(config, tmp_path)
    assert result.label_list == sorted(COLOURS)
    metrics = result.eval_metrics
    gold = [set(line.split("\t")[1].split("|")) - {""} for line in
            files["ml_dev"].read_text().splitlines()[1:]]  # fmt: skip
    baseline = multilabel.most_frequent_baseline(
        [e for e in gold], result.label_list, len(gold)
    )  # the commonest set of dev itself: an upper bound on the trivial baseline
    hot = np.array([[label in g for label in result.label_list] for g in gold])
    trivial = multilabel.metrics(hot, baseline, result.label_list)["micro_f1"]
    assert metrics["micro_f1"] > trivial + 0.2, (metrics, trivial)  # measured 0.78 vs 0.49
    assert {"macro_f1", "subset_accuracy", "f1/red", "f1/blue"} <= set(metrics)
    # do_predict on the dev file: its sets are the best checkpoint's, scored as evaluation did.
    lines = (tmp_path / "test_predictions.tsv").read_text().splitlines()
    assert lines[0] == "sentence\tlabels" and len(lines) == 41
    right = 0
    for line, gold_set in zip(lines[1:], gold, strict=True):
        sentence, labels = line.split("\t")
        right += set(labels.split("|")) - {""} == gold_set
    assert right / 40 == pytest.approx(result.best_metrics["subset_accuracy"])


def test_multilabel_unpacked_scores_like_packed(e2e, tmp_path):
    """Packing changes the layout, never the scores: both runs evaluate the same parameters."""
    from bert_jax.finetuning import train as finetune_lib

    model_dir, files = e2e
    results = [
        finetune_lib.train_and_evaluate(
            _config(
                "multilabel",
                model_dir,
                files,
                "ml",
                packing=packed,
                num_train_steps=1,
                learning_rate=1e-9,
            ),  # fmt: skip
            tmp_path / str(packed),
        ).eval_metrics
        for packed in (True, False)
    ]
    assert results[0]["micro_f1"] == pytest.approx(results[1]["micro_f1"])
    assert results[0]["loss"] == pytest.approx(results[1]["loss"], rel=1e-4)


def test_embedding_learns_topics_and_exports_for_sentence_transformers(e2e, tmp_path):
    from bert_jax.convert.export import export
    from bert_jax.finetuning import train as finetune_lib

    model_dir, files = e2e
    untrained = finetune_lib.train_and_evaluate(
        _config(
            "sentence_embedding", model_dir, files, "emb", num_train_steps=1, learning_rate=1e-9
        ),
        tmp_path / "untrained",
    ).eval_metrics
    config = _config(
        "sentence_embedding", model_dir, files, "emb", batch_size=16, num_train_epochs=8.0,
        learning_rate=2e-3, do_predict=True,
    )  # fmt: skip
    workdir = tmp_path / "trained"
    trained = finetune_lib.train_and_evaluate(config, workdir).eval_metrics
    assert {"mrr", "accuracy_at_1", "loss"} <= set(trained)
    assert trained["mrr"] > untrained["mrr"] + 0.2, (untrained, trained)

    # The exported folder embeds each sentence as the run did: its cosines of the test pairs
    # equal the ones do_predict wrote.
    st = pytest.importorskip("sentence_transformers")
    out = export(workdir, tmp_path / "st", "sentence-transformers")
    rows = [
        line.split("\t") for line in (workdir / "test_similarities.tsv").read_text().splitlines()
    ]
    assert rows[0] == ["sentence1", "sentence2", "cosine"] and len(rows) == 21
    model = st.SentenceTransformer(str(out), device="cpu")
    a = model.encode([r[0] for r in rows[1:]], convert_to_numpy=True)
    b = model.encode([r[1] for r in rows[1:]], convert_to_numpy=True)
    cosine = np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    np.testing.assert_allclose(cosine, [float(r[2]) for r in rows[1:]], atol=1e-4)


def test_real_data_tasks_are_built_from_shared_data(shared_data, tmp_path):
    """benchmarks/studies/task_kinds_data.py: lemma -> supersense sets split by lemma, gloss ->
    example."""
    import subprocess
    import sys

    subprocess.run(
        [sys.executable, "-m", "benchmarks.studies.task_kinds_data", "--data", str(shared_data),
         "--out", str(tmp_path), "--max_dev", "1000"],
        check=True, cwd=REPO, capture_output=True,
    )  # fmt: skip
    train = multilabel.read_tsv(tmp_path / "multilabel" / "train.tsv")
    dev = multilabel.read_tsv(tmp_path / "multilabel" / "dev.tsv")
    assert len(train.examples) == 65228 and len(dev.examples) == 910
    assert not {e.text_a for e in train.examples} & {e.text_a for e in dev.examples}
    sets = [e.label for e in train.examples]
    assert len(multilabel.label_list_of(sets)) == 41
    assert 0.11 < np.mean([len(s) > 1 for s in sets]) < 0.13
    pairs = embedding.read_pairs(tmp_path / "embedding" / "dev.tsv")
    assert len(pairs.examples) == 956 and pairs.examples[0].text_b
    assert len(embedding.read_pairs(tmp_path / "embedding" / "train.tsv").examples) == 34869


def test_pair_and_multilabel_files_are_read_as_the_other_task_files(tmp_path):
    """Only \\n ends a line (a sentence may hold U+2028), a UTF-8 BOM is dropped, and a missing or
    non-UTF-8 file is one line of error, as for the classification and CoNLL files."""
    pairs = tmp_path / "pairs.tsv"
    pairs.write_text(
        "\ufeffsentence1\tsentence2\nfirst\u2028line\tits positive\n", encoding="utf-8"
    )
    (example,) = embedding.read_pairs(pairs).examples
    assert (example.text_a, example.text_b) == ("first\u2028line", "its positive")
    labels = tmp_path / "labels.tsv"
    labels.write_text("sentence\tlabels\na\u2028b\tx|y\n", encoding="utf-8")
    (example,) = multilabel.read_tsv(labels).examples
    assert example.text_a == "a\u2028b" and example.label == ("x", "y")
    with pytest.raises(UserError, match="file not found"):
        embedding.read_pairs(tmp_path / "missing.tsv")
    (tmp_path / "latin1.tsv").write_bytes(b"sentence\tlabels\ncaf\xe9\tx\n")
    with pytest.raises(UserError, match=r"latin1.tsv:2: not UTF-8"):
        multilabel.read_tsv(tmp_path / "latin1.tsv")
