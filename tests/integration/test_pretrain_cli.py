"""The CLI end to end on the tiny test config, and invalid configs stopping early."""

import json
import os
import subprocess
import sys

import pytest
from conftest import REPO_ROOT


def run_pretrain(workdir, *overrides, devices: int = 1, timeout: int = 300):
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    cmd = [
        sys.executable,
        "-m",
        "bert_jax.pretrain",
        "--config",
        "configs/demo.py:test",
        "--workdir",
        str(workdir),
        f"--config.data.data_dir={workdir}/data",
        *overrides,
    ]
    return subprocess.run(
        cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.mark.parametrize(
    "overrides, devices, message",
    [
        (
            ["--config.batch_size=7", "--config.mesh.data=-1"],
            2,
            "not divisible by data-parallel size 2",
        ),
        (["--config.data.max_seq_length=128"], 1, "exceeds model.max_position_embeddings"),
        (
            [f"--config.{k}=512" for k in ("data.max_seq_length", "model.max_position_embeddings")]
            + ["--config.data.max_predictions_per_seq=76"],  # a full row of 512 masks 77
            1,
            "max_predictions_per_seq 76 is below what masked_lm_prob 0.15 needs at "
            "max_seq_length 512 (77); raise it to at least 77",
        ),
        (["--config.mesh.data=3"], 1, "needs 3 devices but 1"),
        (["--config.data.input_files=/nonexistent/corpus.txt"], 1, "matches no file"),
    ],
    ids=["batch", "seq_len", "predictions", "mesh", "missing_file"],
)
def test_invalid_config_stops_with_one_clear_line(tmp_path, overrides, devices, message):
    result = run_pretrain(tmp_path, *overrides, devices=devices, timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "checkpoints").exists()  # stopped before anything ran


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--config.learnin_rate=0.1"], "names 'learnin_rate', which the config does not have"),
        (["--config.batch_size=abc"], "--config.batch_size=abc: invalid literal for int()"),
        (["--config=configs/nosuch.py"], "No such file or directory: 'configs/nosuch.py'"),
    ],
    ids=["misspelt_key", "wrong_type", "missing_config_file"],
)
def test_bad_flag_is_one_line_and_exit_2(tmp_path, flags, message):
    result = run_pretrain(tmp_path, *flags, timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A workdir of the tiny test config trained for 6 steps through the CLI."""
    workdir = tmp_path_factory.mktemp("tiny_run")
    result = run_pretrain(workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    (workdir / "stdout.txt").write_text(result.stdout)
    return workdir


def test_data_summary_is_the_table_prepare_prints(tiny_run):
    stdout = (tiny_run / "stdout.txt").read_text()
    assert f"dataset built: {tiny_run}/data/pretraining_corpus/kjv_" in stdout
    assert "  documents               1,189 (0 of one sentence)" in stdout
    assert "{'" not in stdout and "Downloading" not in stdout  # no raw dict, no TFDS banner


def test_tiny_pretraining_run_end_to_end(tiny_run):
    tmp_path = tiny_run
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if "loss" in r]
    evals = [r for r in records if "eval_loss" in r]
    assert [r["step"] for r in train] == [2, 4, 6]
    assert [r["step"] for r in evals] == [3, 6]
    for record in train:
        for key in (
            "mlm_loss",
            "mlm_accuracy",
            "nsp_loss",
            "nsp_accuracy",
            "learning_rate",
            "grad_norm",
            "tokens_per_sec",
            "real_tokens_per_sec",
            "padding_fraction",
            "examples_per_sec",
            "mfu",
        ):
            assert key in record
        assert record["loss"] == pytest.approx(record["mlm_loss"] + record["nsp_loss"])
        assert 0.0 <= record["mlm_accuracy"] <= 1.0
        # At 64 most examples fill their row (google's truncation): some logged steps hold none
        # of padding, others some (checked below).
        assert record["tokens_per_sec"] >= record["real_tokens_per_sec"] > 0
        assert 0 <= record["padding_fraction"] < 1
        assert record["real_tokens_per_sec"] == pytest.approx(
            record["tokens_per_sec"] * (1 - record["padding_fraction"])
        )
    assert max(r["padding_fraction"] for r in train) > 0
    # lr 1e-3, 2 warmup steps, linear decay to 0 at step 6; logged: the last step's lr.
    lrs = [r["learning_rate"] for r in train]
    assert lrs == pytest.approx([5e-4, 7.5e-4, 2.5e-4])
    assert (tmp_path / "tensorboard").is_dir()
    assert (tmp_path / "checkpoints").is_dir()


def test_pretrained_workdir_exports_to_hugging_face(tiny_run, tmp_path):
    """Pretrain 6 tiny steps, export with `python -m bert_jax.export`, compare with transformers."""
    import numpy as np
    import torch
    import transformers

    from bert_jax.checkpoints import pretrained
    from bert_jax.model.modeling import BertForPreTraining

    out = tmp_path / "hf"
    result = subprocess.run(
        [sys.executable, "-m", "bert_jax.export", str(tiny_run), "--out", str(out)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    info = pretrained.inspect_checkpoint(tiny_run)
    params = pretrained.load_pretraining_params(info)
    ids = np.random.RandomState(0).randint(5, info.bert_config.vocab_size, (2, 16))
    ours = BertForPreTraining(info.bert_config).apply({"params": params}, ids)
    model = transformers.BertForPreTraining.from_pretrained(out).eval()
    with torch.no_grad():
        theirs = model(torch.tensor(ids))
    np.testing.assert_allclose(ours.mlm_logits, theirs.prediction_logits.numpy(), atol=1e-4)
    tokenizer = transformers.BertTokenizer.from_pretrained(out)
    assert tokenizer.vocab_size == info.bert_config.vocab_size
    # A 64-position model: longer inputs must be refused (or truncated) by the tokenizer.
    assert tokenizer.model_max_length == info.bert_config.max_position_embeddings == 64
    # Quiet (no absl INFO lines from JAX or Orbax) and readable like any other new file.
    assert result.stderr.strip() == "", result.stderr[-2000:]
    umask = os.umask(0)
    os.umask(umask)
    for name in ("model.safetensors", "config.json", "vocab.txt", "tokenizer_config.json"):
        assert (out / name).stat().st_mode & 0o777 == 0o666 & ~umask, name
