"""Runs that used to fail silently. A workdir run again with another config printed "resumed",
trained nothing, returned the old run and rewrote config.json with the new values; now it stops
with one line unless overwrite / resume_with_changes says what to do. A loss that became NaN
trained on and saved NaN checkpoints (and a NaN best/); now the run stops at the step, keeping the
last good checkpoint. Pretraining (configs/demo.py:test) and fine-tuning (a tiny random BERT)."""

import json
import math
import pathlib
import re
import shutil

import jax
import numpy as np
import pytest
from conftest import demo_config
from tiny_models import save_tiny_hf_bert

from bert_jax.checkpoints import pretrained
from bert_jax.data import input_pipeline
from bert_jax.data.tokenization import WordPieceTokenizer
from bert_jax.errors import UserError
from bert_jax.finetuning import train as finetune_lib
from bert_jax.finetuning.config import finetuning_config, use_test_mode
from bert_jax.pretraining import train as train_lib
from bert_jax.training import divergence, rerun

REPO = pathlib.Path(__file__).resolve().parents[2]
TASKS = REPO / "tests" / "data" / "tasks"
REFUSED = r"holds a run with other settings \({}\); rerunning would return that run"
DIVERGED = r"training diverged: loss is nan at step (\d+); .* last good checkpoint is {}/{}\."


def _steps(workdir, name="checkpoints") -> list[str]:
    return sorted((p.name for p in (workdir / name).iterdir() if p.name.isdigit()), key=int)


def _losses(workdir) -> list[float]:
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in records if "loss" in r]


def test_differences_skip_free_keys_and_compare_paths_resolved(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    saved = {"learning_rate": 1e-3, "mesh": {"data": 1}, "data": {"vocab_file": "v.txt"}}
    new = {
        "learning_rate": 1e-2,
        "mesh": {"data": 8},
        "data": {"vocab_file": str(tmp_path / "v.txt")},
    }
    new["only_new"] = 1  # a key another version of bert_jax does not have is not compared
    assert rerun.differences(saved, new, frozenset({"mesh"})) == {"learning_rate": (1e-3, 1e-2)}
    new["data"]["vocab_file"] = "other.txt"
    assert set(rerun.differences(saved, new, frozenset({"mesh"}))) == {
        "learning_rate",
        "data.vocab_file",
    }


def test_the_first_non_finite_step_is_named():
    """Fetched metrics end at the given step; the first NaN or infinite loss or gradient norm."""
    keys = ("mlm_loss_sum", "nsp_loss_sum", "grad_norm")
    fine = {"mlm_loss_sum": np.float32(9.1), "nsp_loss_sum": np.float32(0.7), "grad_norm": 1.5}
    assert divergence.non_finite([fine, fine], 8, keys) is None
    inf_norm = {**fine, "grad_norm": np.float32("inf")}
    nan_loss = {**fine, "nsp_loss_sum": np.float32("nan"), "grad_norm": np.float32("nan")}
    assert (
        divergence.non_finite([fine, inf_norm, nan_loss], 8, keys) == "grad norm is inf at step 7"
    )
    assert divergence.non_finite([fine, nan_loss], 8, keys) == "loss is nan at step 8"


@pytest.fixture(scope="module")
def pretraining(tmp_path_factory):
    """config(**overrides): the tiny demo pretraining on 8 devices, its data prepared once."""
    data_dir = tmp_path_factory.mktemp("data")

    def config(**overrides):
        c = demo_config("test")
        c.data.data_dir, c.data.show_progress = str(data_dir), False
        c.mesh.data = -1
        c.cpu_peak_flops = 1e12  # no measurement at start-up
        c.num_train_steps = 3
        for key, value in overrides.items():
            c[key] = value
        return c

    input_pipeline.prepare_data(config().data)
    return config


def test_pretraining_rerun_with_another_config(pretraining, tmp_path, capsys):
    workdir = tmp_path / "run"
    train_lib.train_and_evaluate(pretraining(), workdir)
    assert _steps(workdir) == ["3"]
    files = {name: (workdir / name).read_text() for name in ("config.json", "metrics.jsonl")}

    # Another learning rate: one line, nothing trained or rewritten.
    with pytest.raises(UserError, match=REFUSED.format(r"learning_rate 0\.001 -> 0\.01")) as err:
        train_lib.train_and_evaluate(pretraining(learning_rate=0.01), workdir)
    assert "--config.overwrite=True" in str(err.value)
    assert "--config.resume_with_changes=True" in str(err.value)
    assert {name: (workdir / name).read_text() for name in files} == files

    # Keys that do not change the result may differ: the run resumes (at its end: nothing to do).
    capsys.readouterr()
    free = dict(log_every_steps=1, keep_checkpoints=5, progress_bar=True, cpu_peak_flops=2e12)
    state = train_lib.train_and_evaluate(pretraining(**free), workdir)
    assert (
        int(state.step) == 3 and f"resumed from {workdir}/checkpoints/3" in capsys.readouterr().out
    )
    assert json.loads((workdir / "config.json").read_text())["log_every_steps"] == 1
    assert not (workdir / rerun.HISTORY).exists()

    # resume_with_changes continues under the new settings and records them; this learning rate
    # makes the loss NaN: the run stops at that step and keeps the last good checkpoint.
    diverging = pretraining(learning_rate=1e30, num_train_steps=9, resume_with_changes=True)
    with pytest.raises(UserError, match=DIVERGED.format(workdir / "checkpoints", 3)) as err:
        train_lib.train_and_evaluate(diverging, workdir)
    assert 3 < int(re.search(DIVERGED.format(".*", 3), str(err.value)).group(1)) <= 9
    assert _steps(workdir) == ["3"]
    assert all(math.isfinite(loss) for loss in _losses(workdir))  # no NaN was logged either
    history = [json.loads(line) for line in (workdir / rerun.HISTORY).read_text().splitlines()]
    assert history == [
        {"step": 3, "changes": {"learning_rate": [0.001, 1e30], "num_train_steps": [3, 9]}}
    ]

    # overwrite starts over: the earlier run's checkpoints, logs and history are gone.
    capsys.readouterr()
    state = train_lib.train_and_evaluate(pretraining(num_train_steps=2, overwrite=True), workdir)
    out = capsys.readouterr().out
    assert int(state.step) == 2 and "resumed from" not in out
    assert "overwrite=True: deleted the earlier run's checkpoints, metrics.jsonl" in out
    assert _steps(workdir) == ["2"] and not (workdir / rerun.HISTORY).exists()
    assert len(_losses(workdir)) == 1  # the new run's one log (step 2) alone
    assert json.loads((workdir / "config.json").read_text())["num_train_steps"] == 2


@pytest.fixture(scope="module")
def finetuning(tmp_path_factory):
    """(config(**overrides), encoder): classification on a copy of the sentiment slice (the test
    edits it) from a tiny random BERT, the encoder loaded once."""
    root = tmp_path_factory.mktemp("finetune")
    tokenizer = WordPieceTokenizer.train(sorted(TASKS.glob("*/train.tsv")), vocab_size=300)
    model_dir = save_tiny_hf_bert(root / "hf", tokenizer)[0]
    train = root / "train.tsv"

    def config(**overrides):
        c = finetuning_config("classification")
        use_test_mode(c)
        c.init_checkpoint = str(model_dir)
        c.task.train_file, c.task.dev_file = str(train), str(TASKS / "sentiment" / "dev.tsv")
        c.num_train_steps, c.eval_every_steps, c.log_every_steps = 4, 2, 2
        for key, value in overrides.items():
            c[key] = value
        return c

    encoder = finetune_lib.load_pretrained_encoder(config())
    return config, encoder, train


def test_finetuning_rerun_with_other_settings_or_data(finetuning, tmp_path, capsys):
    config, encoder, train = finetuning
    shutil.copy(TASKS / "sentiment" / "train.tsv", train)
    workdir = tmp_path / "run"
    first = finetune_lib.train_and_evaluate(config(), workdir, encoder=encoder)
    assert _steps(workdir) == ["4"] and _steps(workdir, "best")
    names = ("config.json", "task_info.json", "eval_results.json", "metrics.jsonl")
    files = {name: (workdir / name).read_text() for name in names}

    # The same settings resume (at the end: the same scores); another learning rate is refused.
    again = finetune_lib.train_and_evaluate(config(eval_batch_size=8), workdir, encoder=encoder)
    assert again.eval_metrics == pytest.approx(first.eval_metrics)
    first_results = files["eval_results.json"]
    # Evaluated again in batches of 8 (equal up to float32 rounding), and recorded so.
    files = {name: (workdir / name).read_text() for name in names}
    with pytest.raises(UserError, match=REFUSED.format(r"learning_rate 0\.001 -> 0\.01")):
        finetune_lib.train_and_evaluate(config(learning_rate=0.01), workdir, encoder=encoder)
    # The training file edited in place (same path): one text changed, then one label too.
    lines = train.read_text().splitlines()
    lines[1] = "quite " + lines[1]
    train.write_text("\n".join(lines) + "\n")
    with pytest.raises(
        UserError, match=REFUSED.format(r"task_info.json:train_data.crc32 '\w+' -> '\w+'")
    ):
        finetune_lib.train_and_evaluate(config(), workdir, encoder=encoder)
    lines[2] = lines[2].rsplit("\t", 1)[0] + "\tmixed"
    train.write_text("\n".join(lines) + "\n")
    with pytest.raises(UserError, match=r"task_info.json:label_list \[.*\] -> \[.*'mixed'"):
        finetune_lib.train_and_evaluate(config(), workdir, encoder=encoder)
    shutil.copy(TASKS / "sentiment" / "train.tsv", train)
    assert {name: (workdir / name).read_text() for name in names} == files

    # resume_with_changes under a learning rate that makes the loss NaN: the run stops at that
    # step; the state checkpoint, best/ and the results stay those of the good run.
    best = _steps(workdir, "best")
    diverging = config(learning_rate=1e30, num_train_steps=8, resume_with_changes=True)
    with pytest.raises(UserError, match=DIVERGED.format(workdir / "checkpoints", 4)):
        finetune_lib.train_and_evaluate(diverging, workdir, encoder=encoder)
    assert _steps(workdir) == ["4"] and _steps(workdir, "best") == best
    assert (workdir / "eval_results.json").read_text() == files["eval_results.json"]
    assert all(math.isfinite(loss) for loss in _losses(workdir))
    model = pretrained.load_finetuned(workdir)
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(model.params))
    history = [json.loads(line) for line in (workdir / rerun.HISTORY).read_text().splitlines()]
    assert history == [
        {"step": 4, "changes": {"learning_rate": [0.001, 1e30], "num_train_steps": [4, 8]}}
    ]

    # overwrite starts over.
    capsys.readouterr()
    finetune_lib.train_and_evaluate(config(overwrite=True), workdir, encoder=encoder)
    assert "resumed from" not in capsys.readouterr().out
    assert not (workdir / rerun.HISTORY).exists()
    assert (workdir / "eval_results.json").read_text() == first_results
    with pytest.raises(UserError, match="overwrite and resume_with_changes exclude each other"):
        finetune_lib.train_and_evaluate(
            config(overwrite=True, resume_with_changes=True), workdir, encoder=encoder
        )
