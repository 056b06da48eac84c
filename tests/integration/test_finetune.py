"""Fine-tuning end to end on tiny slices (tests/data/tasks) and tiny synthetic tasks a tiny random
model can learn, with a Hugging Face directory written by the test; sharded over 8 CPU devices."""

import collections
import importlib.util
import json
import logging
import os
import pathlib
import signal
import subprocess
import sys
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import traverse_util
from tiny_models import FILLER, save_tiny_hf_bert
from tiny_models import synthetic_tasks as _synthetic
from tiny_models import write_lines as _write

from bert_jax.checkpoints import pretrained, sealing
from bert_jax.convert import hf
from bert_jax.data import packing
from bert_jax.data.tokenization import WordPieceTokenizer
from bert_jax.errors import UserError
from bert_jax.finetuning import batches as task_batches
from bert_jax.finetuning import step as finetune_step
from bert_jax.finetuning import train as finetune_lib
from bert_jax.finetuning.config import training_steps, validate_finetuning_config
from bert_jax.finetuning.step import layerwise_lr_multipliers, scale_updates
from bert_jax.finetuning.tasks import features as tasks
from bert_jax.training import sharding
from bert_jax.training.gradients import with_adversarial_embeddings
from bert_jax.training.metrics import throughput

REPO = pathlib.Path(__file__).resolve().parents[2]
TASKS = REPO / "tests" / "data" / "tasks"
LEARNABLE = dict(batch_size=16, num_train_epochs=12.0, learning_rate=5e-3)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(tiny Hugging Face BERT dir, synthetic task files)."""
    root = tmp_path_factory.mktemp("finetune")
    files = _synthetic(root)
    corpus = [p for p in TASKS.glob("*/*") if p.suffix in (".tsv", ".conll")] + list(files.values())
    qa_text = root / "qa_text.txt"
    for name in ("train", "dev"):
        document = json.loads((TASKS / "qa" / f"{name}.json").read_text(encoding="utf-8"))
        lines = [p["context"] for a in document["data"] for p in a["paragraphs"]]
        lines += [
            q["question"] for a in document["data"] for p in a["paragraphs"] for q in p["qas"]
        ]
        with open(qa_text, "a", encoding="utf-8") as f:
            f.writelines(line + "\n" for line in lines)
    tokenizer = WordPieceTokenizer.train([*corpus, qa_text], vocab_size=400)
    return save_tiny_hf_bert(root / "tiny_hf", tokenizer)[0], files


def _config(kind: str, model_dir, train, dev, **overrides):
    """configs/finetune/KIND.py in its "test" mode, for these files."""
    spec = importlib.util.spec_from_file_location(
        kind, REPO / "configs" / "finetune" / f"{kind}.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config("test")
    config.init_checkpoint = str(model_dir)
    config.task.train_file, config.task.dev_file = str(train), str(dev)
    for key, value in overrides.items():
        if "." in key:
            config.task[key.split(".", 1)[1]] = value
        else:
            config[key] = value
    return config


def _hf_encoder(model_dir) -> dict:
    return hf.load_hf_checkpoint(model_dir, verbose=False)[1]["bert"]


def _assert_trees_equal(a, b):
    flat_a, flat_b = traverse_util.flatten_dict(a), traverse_util.flatten_dict(b)
    assert flat_a.keys() == flat_b.keys()
    for key in flat_a:
        np.testing.assert_array_equal(
            np.asarray(flat_a[key]), np.asarray(flat_b[key]), "/".join(key)
        )


def _read_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in pathlib.Path(path).read_text().splitlines()]


def test_classification_end_to_end_keeps_best_and_predicts(setup, tmp_path):
    model_dir, _ = setup
    config = _config(
        "classification", model_dir, TASKS / "sentiment" / "train.tsv",
        TASKS / "sentiment" / "dev.tsv", eval_every_steps=10, do_predict=True, packing=False,
        **{"task.test_file": str(TASKS / "sentiment" / "test.tsv")},
    )  # fmt: skip
    encoder = finetune_lib.load_pretrained_encoder(config)
    result = finetune_lib.train_and_evaluate(config, tmp_path, encoder=encoder)

    # The encoder that was passed in is still alive (never donated) and unchanged.
    _assert_trees_equal(jax.device_get(encoder.params), _hf_encoder(model_dir))
    assert training_steps(config, 300) == (38, 4)
    results = json.loads((tmp_path / "eval_results.json").read_text())
    assert set(results) == {
        "accuracy",
        "macro_f1",
        "mcc",
        "loss",
        "step",
        "best_step",
        "best_accuracy",
    }
    evals = [r for r in _read_jsonl(tmp_path / "metrics.jsonl") if "eval_accuracy" in r]
    assert [r["step"] for r in evals] == [10, 20, 30, 38]
    assert results["accuracy"] == pytest.approx(evals[-1]["eval_accuracy"])
    best = max(evals, key=lambda r: r["eval_accuracy"])  # the first of equals is kept
    assert results["best_accuracy"] == pytest.approx(best["eval_accuracy"])
    assert [p.name for p in (tmp_path / "best").iterdir() if p.name.isdigit()] == [
        str(results["best_step"])
    ]
    lines = (tmp_path / "test_predictions.tsv").read_text().splitlines()
    assert lines[0] == "sentence\tlabel" and len(lines) == 101
    assert {line.rsplit("\t", 1)[1] for line in lines[1:]} <= set(result.label_list)

    # Running again resumes after the last step: nothing is trained, the same scores come back.
    again = finetune_lib.train_and_evaluate(config, tmp_path, encoder=encoder)
    assert again.eval_metrics["accuracy"] == pytest.approx(result.eval_metrics["accuracy"])
    assert int(again.state.step) == 38


def test_best_is_saved_only_when_it_would_be_kept(setup, tmp_path, monkeypatch):
    """best/ keeps one step, the newer of equal scores: an evaluation that scores lower than the
    kept one is not written there (it would only be deleted); the kept step is the same."""
    model_dir, files = setup
    scores, saved = iter([0.5, 0.75, 0.625, 0.75]), []
    evaluate, save = finetune_lib.evaluate, sealing.SealedManager.save

    def scripted_evaluate(*args, **kwargs):  # the real evaluation, with these accuracies
        return dict(evaluate(*args, **kwargs), accuracy=next(scores))

    def counted_save(manager, step, *args, **kwargs):
        saved.append((manager.directory.name, step))
        return save(manager, step, *args, **kwargs)

    monkeypatch.setattr(finetune_lib, "evaluate", scripted_evaluate)
    monkeypatch.setattr(sealing.SealedManager, "save", counted_save)
    config = _config("classification", model_dir, files["pairs_train"], files["pairs_dev"],
                     num_train_steps=8, eval_every_steps=2)  # fmt: skip
    result = finetune_lib.train_and_evaluate(config, tmp_path)
    assert [step for name, step in saved if name == "best"] == [2, 4, 8]
    assert [step for name, step in saved if name == "checkpoints"] == [2, 4, 6, 8]
    assert result.best_step == 8 and result.best_metrics["accuracy"] == 0.75
    assert [p.name for p in (tmp_path / "best").iterdir() if p.name.isdigit()] == ["8"]


def test_frozen_encoder_is_bit_identical_and_has_no_optimizer_state(setup, tmp_path):
    model_dir, _ = setup
    config = _config(
        "classification", model_dir, TASKS / "wic" / "train.tsv", TASKS / "wic" / "dev.tsv",
        freeze_encoder=True, learning_rate=1e-2,
    )  # fmt: skip
    result = finetune_lib.train_and_evaluate(config, tmp_path)
    original = _hf_encoder(model_dir)
    _assert_trees_equal(jax.device_get(result.params["bert"]), original)
    saved = pretrained.load_finetuned(tmp_path)
    _assert_trees_equal(jax.device_get(saved.params["bert"]), original)

    assert set(result.state.params) == {"classifier"}
    head_size = sum(x.size for x in jax.tree.leaves(result.state.params))
    moments = [x for x in jax.tree.leaves(result.state.opt_state) if x.ndim > 0]
    assert sum(x.size for x in moments) == 2 * head_size  # AdamW mu and nu of the head only
    # The head did train: its initialisation, truncated normal(0.02), never exceeds 0.04.
    kernel = np.asarray(result.params["classifier"]["dense"]["kernel"])
    assert np.abs(kernel).max() > 0.05

    # Fine-tuning checkpoints are sealed; flipped bytes are caught on load.
    (best_step,) = [p for p in (tmp_path / "best").iterdir() if p.name.isdigit()]
    (state_step,) = [p for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()]
    assert (best_step / "bert_jax_manifest.json").is_file()
    assert (state_step / "bert_jax_manifest.json").is_file()
    # One byte in every 4 KiB of every array file (at least one each): which file holds which
    # arrays, and which B-tree nodes are superseded and never read again, depends on how the
    # asynchronous writes were batched, so a single byte of one file can miss every array
    # (it did once in CI, under load).
    for path in best_step.rglob("*"):
        if path.is_file() and "ocdbt.process" in str(path):
            data = bytearray(path.read_bytes())
            for offset in range(min(2048, len(data) // 2), len(data), 4096):
                data[offset] ^= 0x01
            path.write_bytes(bytes(data))
    with pytest.raises(UserError, match="no intact checkpoint"):
        pretrained.load_finetuned(tmp_path)


def test_sentence_pairs_are_learned(setup, tmp_path):
    model_dir, files = setup
    config = _config(
        "classification", model_dir, files["pairs_train"], files["pairs_dev"],
        **LEARNABLE,
    )  # fmt: skip
    result = finetune_lib.train_and_evaluate(config, tmp_path)
    assert result.label_list == ["no", "yes"]
    assert result.eval_metrics["accuracy"] >= 0.9
    assert result.eval_metrics["mcc"] >= 0.8
    # Packed rows of 32 hold pairs of ~16 word pieces with little padding left.
    logged = [r for r in _read_jsonl(tmp_path / "metrics.jsonl") if "padding_fraction" in r]
    assert logged and all(r["padding_fraction"] < 0.25 for r in logged)
    for record in logged:
        real = record["tokens_per_sec"] * (1.0 - record["padding_fraction"])
        assert record["real_tokens_per_sec"] == pytest.approx(real)


def test_regression_is_learned(setup, tmp_path):
    model_dir, files = setup
    config = _config(
        "regression", model_dir, files["values_train"], files["values_dev"],
        **LEARNABLE, layerwise_lr_decay=0.8,
    )  # fmt: skip
    config.mesh.update(data=2, fsdp=2, tensor=2)  # parameters and moments split over fsdp/tensor
    result = finetune_lib.train_and_evaluate(config, tmp_path)
    kernel = result.params["bert"]["encoder"]["layer_0"]["intermediate"]["dense"]["kernel"]
    assert kernel.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor")
    results = json.loads((tmp_path / "eval_results.json").read_text())
    assert {"pearson", "spearman", "loss", "best_pearson"} <= set(results)
    assert result.eval_metrics["pearson"] >= 0.9
    # Its repr is one short line (the parameter tree would print megabytes).
    count = sum(leaf.size for leaf in jax.tree.leaves(result.params))
    assert repr(result) == (
        f"FinetuneResult(step={int(result.state.step)}, eval_metrics="
        f"{ {k: round(float(v), 4) for k, v in result.eval_metrics.items()} }, best_step="
        f"{result.best_step}, preempted=False, workdir={str(tmp_path)!r}, parameters={count:,})"
    )
    assert len(repr(result)) < 400 and count > 10_000


def test_bio_tagging_is_learned_and_predicted(setup, tmp_path):
    model_dir, files = setup
    config = _config(
        "token_classification", model_dir, files["tags_train"], files["tags_dev"],
        **LEARNABLE, do_predict=True,
        **{"task.test_file": str(files["tags_dev"])},
    )  # fmt: skip
    result = finetune_lib.train_and_evaluate(config, tmp_path)
    assert result.label_list == ["B-PER", "I-PER", "O"]
    assert result.eval_metrics["token_accuracy"] >= 0.9
    assert result.eval_metrics["f1"] >= 0.8  # BIO tags: entity F1 is reported and is the main one
    task_info = json.loads((tmp_path / "task_info.json").read_text())
    assert task_info["main_metric"] == "f1" and task_info["constrained_decoding"]
    predicted = (tmp_path / "test_predictions.conll").read_text().split("\n\n")
    gold = files["tags_dev"].read_text().split("\n\n")
    assert [len(s.split("\n")) for s in predicted] == [len(s.split("\n")) for s in gold]


def test_a_crf_head_trains_beside_a_frozen_encoder_and_reloads(setup, tmp_path):
    """crf=True: the head is the classifier and the CRF's scores; with the encoder frozen both
    train (and only they have optimizer state), and the fine-tuned workdir loads with them."""
    model_dir, files = setup
    config = _config(
        "token_classification", model_dir, files["tags_train"], files["tags_dev"],
        crf=True, freeze_encoder=True, num_train_steps=4, learning_rate=1e-2,
    )  # fmt: skip
    result = finetune_lib.train_and_evaluate(config, tmp_path)
    assert set(result.state.params) == {"classifier", "crf"}
    _assert_trees_equal(jax.device_get(result.params["bert"]), _hf_encoder(model_dir))
    transitions = np.asarray(result.params["crf"]["transitions"])
    assert transitions.shape == (3, 3) and np.abs(transitions).max() > 1e-3  # zero at start
    saved = pretrained.load_finetuned(tmp_path)
    assert saved.info.task_info["crf"] and set(saved.params) == {"bert", "classifier", "crf"}
    np.testing.assert_array_equal(np.asarray(saved.params["crf"]["transitions"]), transitions)


def test_a_checkpoint_of_another_head_is_an_error_not_damage(setup, tmp_path):
    """A fine-tuned workdir read with a different head (its task_info.json edited, or the run
    repeated in the same workdir with other settings) says what does not fit, and leaves the
    checkpoints and the old config.json as they were: none is marked damaged and replaced."""
    model_dir, files = setup
    tags = (model_dir, files["tags_train"], files["tags_dev"])
    run = tmp_path / "run"
    finetune_lib.train_and_evaluate(_config("token_classification", *tags, num_train_steps=2), run)
    task_info = json.loads((run / "task_info.json").read_text())
    (run / "task_info.json").write_text(json.dumps({**task_info, "head_window": 1}))
    with pytest.raises(UserError, match="does not fit the model task_info.json describes: .*"
                                        r"classifier/.*kernel \(\d+, 3\) vs"):  # fmt: skip
        pretrained.load_finetuned(run)
    (run / "task_info.json").write_text(json.dumps(task_info))
    config_json = (run / "config.json").read_text()
    other = _config("token_classification", *tags, num_train_steps=2, head_window=1)
    with pytest.raises(UserError, match=r"other settings \(head_window 0 -> 1\)"):
        finetune_lib.train_and_evaluate(other, run)
    # Asked to continue under the new settings: the checkpoint does not fit the new head.
    other.resume_with_changes = True
    with pytest.raises(UserError, match="does not fit this fine-tuning config"):
        finetune_lib.train_and_evaluate(other, run)
    assert (run / "config.json").read_text() == config_json
    assert not list(run.rglob("bert_jax_damaged.json"))
    assert set(pretrained.load_finetuned(run).params) == {"bert", "classifier"}


def test_iob1_tags_are_decoded_word_by_word(setup, tmp_path, capsys):
    """Training tags where I-X opens an entity (IOB1) break the IOB2 rules that constrained
    decoding enforces: the run says so and keeps the per-word argmax."""
    model_dir, files = setup
    iob1 = tmp_path / "iob1.conll"
    iob1.write_text(files["tags_train"].read_text().replace("B-PER", "I-PER"))
    config = _config("token_classification", model_dir, iob1, iob1, num_train_steps=1)
    finetune_lib.train_and_evaluate(config, tmp_path / "run")
    assert "training sentences break the IOB2 / IOBES rules" in capsys.readouterr().out
    assert not json.loads((tmp_path / "run" / "task_info.json").read_text())["constrained_decoding"]


def test_pos_tagging_and_squad_run_on_real_slices(setup, tmp_path):
    model_dir, _ = setup
    pos = _config(
        "token_classification",
        model_dir,
        TASKS / "pos" / "train.conll",
        TASKS / "pos" / "dev.conll",
    )
    scores = finetune_lib.train_and_evaluate(pos, tmp_path / "pos").eval_metrics
    assert set(scores) == {"token_accuracy", "loss"}  # Brown tags are not BIO: no entity F1
    assert 0.0 <= scores["token_accuracy"] <= 1.0

    squad = _config(
        "squad", model_dir, TASKS / "qa" / "train.json", TASKS / "qa" / "dev.json",
        do_predict=True,
        **{"task.test_file": str(TASKS / "qa" / "dev.json")},
    )  # fmt: skip
    scores = finetune_lib.train_and_evaluate(squad, tmp_path / "qa").eval_metrics
    assert set(scores) == {"exact_match", "f1", "loss"}
    assert 0.0 <= scores["exact_match"] <= scores["f1"] <= 1.0
    answers = json.loads((tmp_path / "qa" / "test_predictions.json").read_text())
    document = json.loads((TASKS / "qa" / "dev.json").read_text())
    ids = {q["id"] for a in document["data"] for p in a["paragraphs"] for q in p["qas"]}
    assert set(answers) == ids


def test_sigterm_saves_and_the_rerun_finishes_like_an_unbroken_run(setup, tmp_path, monkeypatch):
    model_dir, _ = setup
    config = _config(
        "classification", model_dir, TASKS / "sentiment" / "train.tsv",
        TASKS / "sentiment" / "dev.tsv", num_train_steps=12,
    )  # fmt: skip
    encoder = finetune_lib.load_pretrained_encoder(config)
    unbroken = finetune_lib.train_and_evaluate(config, tmp_path / "unbroken", encoder=encoder)

    # SIGTERM arrives while step 5 (0-based) is being prepared: the real handler catches it.
    original = task_batches.TrainBatches.batch

    def batch_then_sigterm(self, step):
        if step == 5:
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, step)

    monkeypatch.setattr(task_batches.TrainBatches, "batch", batch_then_sigterm)
    broken_dir = tmp_path / "broken"
    stopped = finetune_lib.train_and_evaluate(config, broken_dir, encoder=encoder)
    assert stopped.preempted and int(stopped.state.step) == 6
    assert [p.name for p in (broken_dir / "checkpoints").iterdir() if p.name.isdigit()] == ["6"]
    assert not (broken_dir / "eval_results.json").exists()

    monkeypatch.setattr(task_batches.TrainBatches, "batch", original)
    resumed = finetune_lib.train_and_evaluate(config, broken_dir, encoder=encoder)
    assert not resumed.preempted and int(resumed.state.step) == 12
    for a, b in zip(jax.tree.leaves(unbroken.params), jax.tree.leaves(resumed.params), strict=True):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-6, atol=1e-7)
    assert resumed.eval_metrics == pytest.approx(unbroken.eval_metrics, rel=1e-6)

    # The logs too: the metrics pending at SIGTERM were saved, so the step-10 record averages
    # steps 6-10 as in the unbroken run. The last record of a step wins; timings differ.
    def records(workdir):
        by_step = {}
        for record in _read_jsonl(workdir / "metrics.jsonl"):
            by_step.setdefault(record["step"], {}).update(record)
        timing = tuple(throughput(1.0, 1, dict(examples=1, tokens=1, real_tokens=1)))
        return {
            step: {k: v for k, v in r.items() if k not in timing} for step, r in by_step.items()
        }

    want, got = records(tmp_path / "unbroken"), records(broken_dir)
    assert sorted(got) == sorted(want) == [5, 10, 12]
    for step in want:
        assert got[step] == pytest.approx(want[step], rel=1e-6), step


@pytest.mark.parametrize("packed", [False, True], ids=["one_per_row", "packed"])
def test_gradient_accumulation_matches_the_whole_batch(setup, tmp_path, packed):
    model_dir, files = setup
    batch_size = 32
    if packed:
        # Packed steps take a multiple of data-parallel x grad_accum_steps rows: a batch of
        # about 16 rows' worth of sentences gives 16 rows both with and without accumulation.
        config = _config("token_classification", model_dir, files["tags_train"], files["tags_dev"])
        data = tasks.load_task(
            config, "train", finetune_lib.load_pretrained_encoder(config).tokenizer
        )
        rows = len(packing.pack(data.lengths, data.max_seq_length,
                                config.max_sequences_per_row))  # fmt: skip
        batch_size = 16 * round(data.num_features / rows)  # a multiple of 4 shards x 4 micro
        for accum in (1, 4):  # data x fsdp = 4 data-parallel shards
            per_row = config.max_sequences_per_row
            steps = task_batches.TrainBatches(
                data, batch_size, config.seed, True, per_row, row_multiple=4 * accum
            )
            assert steps.rows_per_step == 16
    results = {}
    for accum in (1, 4):
        config = _config(
            "token_classification", model_dir, files["tags_train"], files["tags_dev"],
            batch_size=batch_size, num_train_steps=4, hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0, grad_accum_steps=accum, packing=packed,
        )  # fmt: skip
        config.mesh.update(data=2, fsdp=2, tensor=2)
        results[accum] = finetune_lib.train_and_evaluate(config, tmp_path / str(accum))
    whole, accumulated = results[1], results[4]
    # Token counts differ between microbatches, so this checks the whole-batch normalisation.
    for a, b in zip(
        jax.tree.leaves(whole.params), jax.tree.leaves(accumulated.params), strict=True
    ):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=2e-4, atol=2e-6)
    logged = [_read_jsonl(tmp_path / str(a) / "metrics.jsonl")[0]["loss"] for a in (1, 4)]
    assert logged[1] == pytest.approx(logged[0], rel=1e-5)
    with pytest.raises(UserError, match="grad_accum_steps 3"):
        validate_finetuning_config(_config("classification", model_dir, files["pairs_train"],
                                           files["pairs_dev"], grad_accum_steps=3), 8)  # fmt: skip


def test_layerwise_lr_decay_scales_updates_per_layer():
    params = {
        "bert": {
            "embeddings": {"w": np.ones(2)},
            "encoder": {"layer_0": {"w": np.ones(2)}, "layer_1": {"w": np.ones(2)}},
            "pooler": {"w": np.ones(2)},
        },
        "classifier": {"w": np.ones(2)},
    }
    factors = traverse_util.flatten_dict(layerwise_lr_multipliers(params, 2, 0.5))
    assert factors == {
        ("bert", "embeddings", "w"): 0.125,
        ("bert", "encoder", "layer_0", "w"): 0.25,
        ("bert", "encoder", "layer_1", "w"): 0.5,
        ("bert", "pooler", "w"): 1.0,
        ("classifier", "w"): 1.0,
    }
    tx = optax.chain(optax.sgd(1.0), scale_updates(layerwise_lr_multipliers(params, 2, 0.5)))
    grads = jax.tree.map(np.ones_like, params)
    updates, _ = tx.update(grads, tx.init(params), params)
    assert float(updates["bert"]["embeddings"]["w"][0]) == -0.125
    assert float(updates["classifier"]["w"][0]) == -1.0


def test_adversarial_gradient_is_the_clean_plus_the_moved_embeddings_gradient():
    """FGM: g(E) + g(E + eps * g_E / ||g_E||), only the embedding table moved, clean sums."""
    table = np.array([[1.0, 2.0], [0.5, -1.0]], np.float32)
    params = {"embeddings": {"word_embeddings": {"embedding": table}},
              "dense": {"kernel": np.array([3.0, -2.0], np.float32)}}  # fmt: skip

    def loss_fn(p, batch, rng):
        del rng
        table, w = p["embeddings"]["word_embeddings"]["embedding"], p["dense"]["kernel"]
        loss = jnp.sum(jnp.square(table[batch["ids"]] @ w - batch["y"]))
        return loss, {"loss_sum": loss}

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    batch, rng = {"ids": jnp.array([0, 0, 1]), "y": jnp.array([1.0, 0.0, 2.0])}, jax.random.key(0)
    is_table = lambda path: path[-2:] == ("word_embeddings", "embedding")  # noqa: E731
    assert with_adversarial_embeddings(grad_fn, 0.0, is_table) is grad_fn
    (loss, sums), grads = with_adversarial_embeddings(grad_fn, 0.5, is_table)(params, batch, rng)
    (clean_loss, clean_sums), clean = grad_fn(params, batch, rng)
    g = np.asarray(clean["embeddings"]["word_embeddings"]["embedding"])
    moved = jax.tree.map(np.array, params)
    moved["embeddings"]["word_embeddings"]["embedding"] += 0.5 * g / np.linalg.norm(g)
    _, adversarial = grad_fn(moved, batch, rng)
    assert float(loss) == float(clean_loss) and float(sums["loss_sum"]) == float(clean_loss)
    assert float(grad_fn(moved, batch, rng)[0][0]) > float(clean_loss)  # the loss goes up there
    for got, a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(clean),
                         jax.tree.leaves(adversarial), strict=True):  # fmt: skip
        np.testing.assert_allclose(np.asarray(got), np.asarray(a) + np.asarray(b), rtol=1e-6)


def test_adversarial_training_reaches_the_step(setup, tmp_path):
    """adversarial_epsilon > 0 changes what a tagging run learns (same seed, data, steps)."""
    model_dir, files = setup
    params = {}
    for epsilon in (0.0, 1.0):
        config = _config(
            "token_classification", model_dir, files["tags_train"], files["tags_dev"],
            num_train_steps=3, adversarial_epsilon=epsilon, crf=True,
        )  # fmt: skip
        result = finetune_lib.train_and_evaluate(config, tmp_path / str(epsilon))
        params[epsilon] = traverse_util.flatten_dict(jax.device_get(result.params))
    changed = [k for k in params[0.0] if not np.array_equal(params[0.0][k], params[1.0][k])]
    assert ("bert", "embeddings", "word_embeddings", "embedding") in changed
    assert ("crf", "transitions") in changed


def test_dropout_seed_changes_the_masks_alone(setup, tmp_path):
    """dropout_seed draws other dropout masks and nothing else: without dropout a run with
    another dropout_seed is bit-identical (same head, same batches); with dropout it learns other
    parameters; dropout_seed = seed is the default run, bit for bit."""
    model_dir, files = setup
    tags = (model_dir, files["tags_train"], files["tags_dev"])

    def run(name, dropout_seed, dropout=0.1):
        config = _config(
            "token_classification", *tags, num_train_steps=4, seed=7, dropout_seed=dropout_seed,
            hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout,
        )  # fmt: skip
        return finetune_lib.train_and_evaluate(config, tmp_path / name).params

    default = run("default", -1)
    _assert_trees_equal(default, run("same", 7))
    _assert_trees_equal(run("no_dropout", -1, 0.0), run("no_dropout_other", 8, 0.0))
    other = traverse_util.flatten_dict(run("other", 8))
    default = traverse_util.flatten_dict(default)
    assert [k for k in default if not np.array_equal(default[k], other[k])]


def test_config_errors_name_the_setting(setup, tmp_path):
    model_dir, files = setup
    config = _config("classification", model_dir, files["pairs_train"], files["pairs_dev"])
    validate_finetuning_config(config, 8)
    with pytest.raises(UserError, match="batch_size 12 must be a positive multiple"):
        validate_finetuning_config(_config("classification", model_dir, files["pairs_train"],
                                           files["pairs_dev"], batch_size=12), 8)  # fmt: skip
    with pytest.raises(UserError, match="init_checkpoint is not set"):
        validate_finetuning_config(_config("classification", "", files["pairs_train"],
                                           files["pairs_dev"]), 8)  # fmt: skip
    with pytest.raises(UserError, match="task.dev_file .* not found"):
        validate_finetuning_config(_config("classification", model_dir, files["pairs_train"],
                                           tmp_path / "missing.tsv"), 8)  # fmt: skip
    with pytest.raises(UserError, match="crf applies to token_classification, not classif"):
        validate_finetuning_config(_config("classification", model_dir, files["pairs_train"],
                                           files["pairs_dev"], crf=True), 8)  # fmt: skip
    pairs = (model_dir, files["pairs_train"], files["pairs_dev"])
    with pytest.raises(UserError, match="head_window applies to token_classification, not cl"):
        validate_finetuning_config(_config("classification", *pairs, head_window=1), 8)
    with pytest.raises(UserError, match="head_window -1 is negative"):
        tags = (model_dir, files["tags_train"], files["tags_dev"])
        validate_finetuning_config(_config("token_classification", *tags, head_window=-1), 8)
    with pytest.raises(UserError, match="adversarial_epsilon -1.0 is negative"):
        validate_finetuning_config(_config("classification", *pairs, adversarial_epsilon=-1.0), 8)
    with pytest.raises(UserError, match="dropout_seed -2 must be >= 0, or -1"):
        validate_finetuning_config(_config("classification", *pairs, dropout_seed=-2), 8)
    with pytest.raises(UserError, match="adversarial_epsilon moves the word embeddings"):
        frozen = _config("classification", *pairs, adversarial_epsilon=1.0, freeze_encoder=True)
        validate_finetuning_config(frozen, 8)
    with pytest.raises(UserError, match="max_seq_length 128 exceeds"):
        bad = _config("classification", model_dir, files["pairs_train"], files["pairs_dev"],
                      max_seq_length=128)  # fmt: skip
        finetune_lib.train_and_evaluate(bad, tmp_path / "too_long")


def test_cli_prints_one_line_and_exits_2(tmp_path):
    command = [
        sys.executable, "-m", "bert_jax.finetune", "--workdir", str(tmp_path),
        "--config", str(REPO / "configs" / "finetune" / "classification.py"),
        f"--config.init_checkpoint={tmp_path / 'nowhere'}",
    ]  # fmt: skip
    run = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=120)
    assert run.returncode == 2
    assert (
        run.stderr.strip().splitlines()[-1]
        == f"error: init_checkpoint {tmp_path / 'nowhere'} not found"
    )


def test_a_vocabulary_larger_than_the_model_is_refused_before_training(setup, tmp_path):
    """vocab_file with more tokens than the model's embedding table trained with loss NaN and
    exited 0: now one line from Python (UserError) and from the CLI (exit status 2)."""
    model_dir, files = setup
    own = (model_dir / "vocab.txt").read_text(encoding="utf-8").splitlines()
    larger = _write(tmp_path / "vocab.txt", own + [f"extra{i}" for i in range(20)])
    message = (
        f"{larger} has {len(own) + 20} tokens but the model's vocab_size is only {len(own)}; "
        "pass the matching vocabulary"
    )
    train, dev = files["pairs_train"], files["pairs_dev"]
    config = _config("classification", model_dir, train, dev, vocab_file=str(larger))
    with pytest.raises(UserError, match=message):
        finetune_lib.train_and_evaluate(config, tmp_path / "run")
    assert not (tmp_path / "run").exists()
    command = [
        sys.executable, "-m", "bert_jax.finetune", "--workdir", str(tmp_path / "cli"),
        "--config", f"{REPO / 'configs' / 'finetune' / 'classification.py'}:test",
        f"--config.init_checkpoint={model_dir}", f"--config.vocab_file={larger}",
        f"--config.task.train_file={train}", f"--config.task.dev_file={dev}",
    ]  # fmt: skip
    run = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=120)
    assert run.returncode == 2, run.stderr[-2000:]
    assert run.stderr.strip().splitlines()[-1] == f"error: {message}"


def _varied_pairs(directory: pathlib.Path, n: int, seed: int) -> pathlib.Path:
    """Sentence pairs of shuffled lengths (1-25 words each side), labels by a keyword."""
    rng = np.random.default_rng(seed)
    lines = ["sentence1\tsentence2\tlabel"]
    for i in range(n):
        a, b = (" ".join(rng.choice(FILLER, rng.integers(1, 26))) for _ in range(2))
        lines.append(f"{a}\t{b}\t{'yes' if i % 3 else 'no'}")
    return _write(directory / f"varied_{seed}.tsv", lines)


def _varied_tags(directory: pathlib.Path, n: int, seed: int) -> pathlib.Path:
    """CoNLL sentences of shuffled lengths (1-60 words, so some split at 64 word pieces)."""
    rng = np.random.default_rng(seed)
    lines = []
    for _ in range(n):
        words = rng.choice(FILLER, rng.integers(1, 61))
        lines += [f"{w}\t{rng.choice(['O', 'B-PER', 'I-PER'])}" for w in words] + [""]
    return _write(directory / f"varied_{seed}.conll", lines)


def _spread_params(finetuner) -> dict:
    """Kernels and embeddings of std 1 (not 0.02; biases 0, LayerNorm scales 1), so that outputs
    clearly differ between features and between tokens."""

    def spread(path, x):
        if path[-1].key in ("bias", "scale"):
            return x
        key = jax.random.key(zlib.crc32(jax.tree_util.keystr(path).encode()))
        return jax.random.normal(key, x.shape)

    return jax.tree_util.tree_map_with_path(spread, finetuner.init_params(jax.random.key(0)))


def _predictions_one_per_row(finetuner, trainable, frozen, data):
    """Reference outputs: every feature alone in a full-length row, in file order."""
    rows = -(-data.num_features // 8) * 8
    slots = np.full((rows, 1), -1)
    slots[: data.num_features, 0] = np.arange(data.num_features)
    batch = task_batches.Batch(slots, data.max_seq_length, packed=False)
    arrays = finetuner.shard_batch(finetune_lib.local_batch(finetuner, data, batch))
    outputs, _ = jax.device_get(finetuner.eval_step(trainable, frozen, arrays))
    return jax.tree.map(lambda x: np.asarray(x)[: data.num_features], outputs)


def test_packed_and_bucketed_evaluation_map_every_prediction_to_its_feature(setup, tmp_path):
    """Features of shuffled lengths, evaluated packed and in length buckets (32/64), get exactly
    the outputs they get alone in a full row."""
    model_dir, files = setup
    varied = _varied_pairs(tmp_path, 90, seed=5)
    cases = {
        "classification": (varied, varied),
        "token_classification": (files["tags_train"], _varied_tags(tmp_path, 40, seed=4)),
        "squad": (TASKS / "qa" / "train.json", TASKS / "qa" / "dev.json"),
    }
    for kind, (train, dev) in cases.items():
        config = _config(kind, model_dir, train, dev, max_seq_length=64, eval_batch_size=8,
                         max_sequences_per_row=5)  # fmt: skip
        encoder = finetune_lib.load_pretrained_encoder(config)
        data = tasks.load_task(config, "dev", encoder.tokenizer)
        lengths = data.lengths
        assert lengths.min() < 32 < lengths.max() or kind == "squad", (kind, lengths)
        with jax.set_mesh(sharding.make_mesh(config.mesh)):
            finetuner = finetune_step.build_finetuner(
                config, kind, encoder.info.bert_config, data.num_labels,
                sharding.make_mesh(config.mesh), lambda step: 1e-3,
                constrained=kind == "token_classification",  # tag log-probabilities [n, L, C]
            )  # fmt: skip
            params = _spread_params(finetuner)
            state = finetuner.start(params["bert"], finetuner.head(params))
            want = _predictions_one_per_row(finetuner, state.params, {}, data)
            spread = jax.tree.map(lambda x: np.asarray(x).std(0).max(), want)
            assert min(jax.tree.leaves(spread)) > 0.01, (kind, spread)
            for packed in (False, True) if kind != "squad" else (False,):
                config.packing = packed
                got, sums = finetune_lib.predict(finetuner, state.params, {}, data, config)
                assert sums["count"] > 0
                if kind == "squad":
                    for key in want:  # logits where the windows have tokens
                        real = data.arrays["attention_mask"] == 1
                        got_real, want_real = got[key][real], want[key][real]
                        atol = 2e-5 * np.abs(want_real).max()
                        np.testing.assert_allclose(got_real, want_real, atol=atol)
                elif kind == "token_classification":
                    real = data.arrays["attention_mask"] == 1
                    assert got.shape == (*real.shape, data.num_labels)
                    scale = np.abs(want[real]).max()  # float32 rounding of log-probabilities
                    np.testing.assert_allclose(got[real], want[real], atol=2e-5 * scale)
                else:
                    scale = np.abs(want).max()  # float32 rounding of logits of this size
                    np.testing.assert_allclose(got, want, atol=2e-5 * scale, err_msg=str(packed))


def test_a_run_compiles_one_train_step_and_one_eval_step_per_bucket(setup, tmp_path, caplog):
    model_dir, _ = setup
    train, dev = _varied_pairs(tmp_path, 120, seed=6), _varied_pairs(tmp_path, 60, seed=7)
    compiled = {}
    for packed in (True, False):
        config = _config(
            "classification", model_dir, train, dev, max_seq_length=64, packing=packed,
            num_train_steps=6, eval_every_steps=2, do_predict=True, **{"task.test_file": str(dev)},
        )  # fmt: skip
        caplog.clear()
        with caplog.at_level(logging.WARNING), jax.log_compiles(True):
            finetune_lib.train_and_evaluate(config, tmp_path / str(packed))
        messages = [r.getMessage() for r in caplog.records]
        compiled[packed] = {
            name: sum(m.startswith(f"Compiling jit({name})") for m in messages)
            for name in ("train_step", "eval_step")
        }
    # Packed: one shape for everything; one per row: evaluation in the 32 and 64 buckets.
    assert compiled == {
        True: {"train_step": 1, "eval_step": 1},
        False: {"train_step": 1, "eval_step": 2},
    }


def test_a_run_computes_each_splits_feature_lengths_once(setup, tmp_path, monkeypatch):
    """Batches, token counts and the prediction scatter read every split's lengths at every step:
    computed from the whole attention mask each time, host time would grow with the dataset."""
    model_dir, files = setup
    sums, originals = collections.Counter(), {}

    class CountedMask(np.ndarray):
        def sum(self, *args, **kwargs):
            if id(self) in originals:
                sums[originals[id(self)]] += 1
            return super().sum(*args, **kwargs)

    def load_task(config, split, *args, **kwargs):
        data = load_original(config, split, *args, **kwargs)
        mask = data.arrays["attention_mask"].view(CountedMask)
        data.arrays["attention_mask"], originals[id(mask)] = mask, split
        return data

    load_original = tasks.load_task
    monkeypatch.setattr(tasks, "load_task", load_task)
    config = _config(
        "token_classification", model_dir, files["tags_train"], files["tags_dev"],
        num_train_steps=8, eval_every_steps=3, log_every_steps=2, do_predict=True,
        **{"task.test_file": str(files["tags_dev"])},
    )  # fmt: skip
    assert config.packing  # lengths place the features in rows, and their predictions back
    result = finetune_lib.train_and_evaluate(config, tmp_path)
    assert result.eval_metrics["token_accuracy"] > 0
    assert dict(sums) == {"train": 1, "dev": 1, "test": 1}
