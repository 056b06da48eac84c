"""Mistakes a newcomer makes get one line and exit status 2 from every CLI, never a traceback:
a workdir, data_dir or --out that is a file or read-only, values out of range, unknown modes."""

import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import pytest
from conftest import REPO_ROOT

from bert_jax.errors import UserError
from bert_jax.pretraining.config import validate_pretraining_config


def load_config(path: str, mode: str):
    spec = importlib.util.spec_from_file_location("config", REPO_ROOT / path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(mode)


def _other_user_can_run_python() -> bool:
    if shutil.which("setpriv") is None:
        return False
    probe = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable,
             "-c", "import bert_jax"]  # fmt: skip
    return subprocess.run(probe, cwd=REPO_ROOT, capture_output=True).returncode == 0


def run_cli(*args, as_other_user=False, timeout=180):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    cmd = [sys.executable, "-m", *args]
    if as_other_user:  # root writes anywhere: a read-only directory needs another user
        cmd = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *cmd]
        env["MPLCONFIGDIR"] = env["HOME"] = tempfile.mkdtemp(prefix="bert_jax_home_")
        os.chmod(env["HOME"], 0o777)
    return subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)  # fmt: skip


def assert_one_line(result, *fragments):
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-3000:]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


# (CLI arguments with {file}/{dir} placeholders, what the message must name)
CASES = {
    "pretrain_workdir": (["bert_jax.pretrain", "--config", "configs/demo.py:test", "--workdir",
                          "{target}"], "--workdir"),
    "pretrain_data_dir": (["bert_jax.pretrain", "--config", "configs/demo.py:test", "--workdir",
                           "{scratch}/run", "--config.data.data_dir={target}"],
                          "config.data.data_dir"),
    "finetune_workdir": (["bert_jax.finetune", "--config",
                          "configs/finetune/classification.py:test", "--workdir", "{target}",
                          "--config.init_checkpoint=tests/data"], "--workdir"),
    "prepare_data_dir": (["bert_jax.data.prepare", "--input_files=tests/data/tasks/LICENSES.md",
                          "--vocab_file=bert_jax/assets/kjv_vocab.txt", "--data_dir={target}"],
                         "--data_dir"),
    "export_out": (["bert_jax.export", "{scratch}", "--out", "{target}"], "--out"),
    "plot_out": (["bert_jax.plot", "{scratch}", "--out", "{target}/curves.png"], "--out"),
    "plan_out": (["bert_jax.plan", "--config", "configs/demo.py", "--topology=v5e:2x2",
                  "--out", "{target}/plan.json"], "--out"),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(CASES))
def test_output_path_that_is_a_file_is_one_line(tmp_path, name):
    args, names = CASES[name]
    target = tmp_path / "a_file"
    target.write_text("not a directory\n")
    args = [a.format(target=target, scratch=tmp_path) for a in args]
    assert_one_line(run_cli(*args), names, str(target), "is a file")


@pytest.mark.parametrize("name", ["pretrain_workdir", "prepare_data_dir"])
def test_read_only_output_path_is_one_line(name):
    as_other_user = os.geteuid() == 0
    if as_other_user and not _other_user_can_run_python():
        pytest.skip("root writes everywhere, and user nobody cannot run this checkout's Python")
    scratch = tempfile.mkdtemp(prefix="bert_jax_read_only_")
    try:
        os.chmod(scratch, 0o555)  # read-only for its owner; root's directory for `nobody`
        args, names = CASES[name]
        target = os.path.join(scratch, "out")
        args = [a.format(target=target, scratch=scratch) for a in args]
        result = run_cli(*args, as_other_user=as_other_user)
        assert_one_line(result, names, "read-only")
        assert not os.path.exists(target)
    finally:
        os.chmod(scratch, 0o755)
        shutil.rmtree(scratch)


def test_values_out_of_range_are_named(tmp_path):
    def check(**overrides):
        config = load_config("configs/demo.py", "test")
        for key, value in overrides.items():
            node = config
            *parents, leaf = key.split("__")
            for parent in parents:
                node = node[parent]
            node[leaf] = value
        validate_pretraining_config(config, 1, check_files=False)

    check()
    for overrides, message in [
        ({"learning_rate": -1e-3}, "learning_rate must be > 0, got -0.001"),
        ({"learning_rate": float("nan")}, "learning_rate must be > 0"),
        ({"batch_size": 0}, "batch_size must be >= 1, got 0"),
        ({"num_train_steps": -5}, "num_train_steps must be >= 1, got -5"),
        ({"warmup_steps": -1}, "warmup_steps must be >= 0"),
        ({"data__validation_fraction": 1.5}, "data.validation_fraction must be in [0, 1), got 1.5"),
        ({"data__masked_lm_prob": 0.0}, "data.masked_lm_prob must be in (0, 1)"),
        ({"eval_steps": 0}, "eval_steps must be >= 1"),
    ]:
        with pytest.raises(UserError) as raised:
            check(**overrides)
        assert str(raised.value).startswith(message), (overrides, str(raised.value))


def test_a_shortened_run_names_the_warmup_flag():
    """demo.py warms up for 50 steps; --config.num_train_steps=40 gets the flag to change."""
    config = load_config("configs/demo.py", "demo")
    config.num_train_steps = 40
    with pytest.raises(UserError) as raised:
        validate_pretraining_config(config, 1, check_files=False)
    assert str(raised.value) == (
        "warmup_steps 50 exceeds num_train_steps 40: pass --config.warmup_steps=N with N <= 40 "
        "(e.g. 4, a tenth of the run)"
    )
    config.warmup_steps = 4  # the suggestion is valid
    validate_pretraining_config(config, 1, check_files=False)


@pytest.mark.parametrize(
    "length, prob", [(512, 0.15), (128, 0.15), (64, 0.15), (32, 0.15), (6, 0.9)]
)
def test_max_predictions_check_is_what_masking_a_full_row_takes(length, prob):
    """The config check asks for the most masks `mask_tokens` puts in a row ([CLS] and both
    [SEP] counted, as google's create_pretraining_data.py): 77 at 512 x 0.15, not 76."""
    from bert_jax.data.examples import ExampleOptions, Vocabulary
    from bert_jax.data.masking import mask_tokens

    rows, rng = 64, np.random.default_rng(0)
    a_length = rng.integers(1, length - 3, rows)  # full rows: A + B = L - 3 tokens
    options = ExampleOptions(max_seq_length=length, max_predictions_per_seq=length,
                             masked_lm_prob=prob)  # fmt: skip
    vocab = Vocabulary(size=100, pad_id=0, cls_id=1, sep_id=2, mask_id=3)
    ids = rng.integers(4, 100, (rows, length)).astype(np.int32)
    masked = mask_tokens(ids, a_length, length - 3 - a_length, rng, options, vocab)
    most = int(masked["masked_lm_weights"].sum(axis=1).max())

    config = load_config("configs/demo.py", "test")
    config.model.max_position_embeddings = config.data.max_seq_length = length
    config.data.masked_lm_prob = prob
    config.data.max_predictions_per_seq = most
    validate_pretraining_config(config, 1, check_files=False)
    config.data.max_predictions_per_seq = most - 1
    with pytest.raises(UserError) as raised:
        validate_pretraining_config(config, 1, check_files=False)
    assert str(raised.value) == (
        f"data.max_predictions_per_seq {most - 1} is below what masked_lm_prob {prob} needs at "
        f"max_seq_length {length} ({most}); raise it to at least {most}"
    )


def _pretraining_configs():
    """(file, mode) of every shipped pretraining config, the modes as its mode check lists them."""
    for path in sorted((REPO_ROOT / "configs").glob("*.py")):
        name = f"configs/{path.name}"
        with pytest.raises(UserError) as raised:
            load_config(name, "no such mode")
        yield from (
            (name, mode) for mode in re.findall(rf"{re.escape(name)}:(\w+)", str(raised.value))
        )


@pytest.mark.parametrize("path, mode", list(_pretraining_configs()))
def test_shipped_pretraining_configs_pass_the_checks(path, mode):
    config = load_config(path, mode)
    validate_pretraining_config(config, 1, check_files=False)


@pytest.mark.parametrize(
    "path, mode, valid",
    [
        ("configs/bert_large.py", "phase3", "configs/bert_large.py:phase1, "),
        ("configs/bert_large_lamb.py", "3", "configs/bert_large_lamb.py:phase1"),
        ("configs/finetune/squad.py", "tset", "configs/finetune/squad.py:default, "),
        ("configs/finetune/regression.py", "x", "configs/finetune/regression.py:test"),
    ],
)  # fmt: skip
def test_every_config_with_modes_refuses_an_unknown_one(path, mode, valid):
    with pytest.raises(UserError, match=f"{path} has no mode '{mode}': use one of .*{valid}"):
        load_config(path, mode)


def test_finetuning_values_out_of_range_are_named():
    from bert_jax.finetuning.config import validate_finetuning_config

    for key, value, message in [
        ("learning_rate", -2e-5, "learning_rate must be > 0, got -2e-05"),
        ("num_train_epochs", -1.0, "num_train_epochs must be >= 0"),
        ("hidden_dropout_prob", 1.0, "hidden_dropout_prob must be in [0, 1)"),
    ]:
        config = load_config("configs/finetune/classification.py", "test")
        config[key] = value
        with pytest.raises(UserError, match=re.escape(message)):
            validate_finetuning_config(config, 1)


def test_a_mistyped_key_set_in_python_is_an_error_not_ignored(tmp_path):
    """A notebook sets keys on an unlocked ConfigDict: a misspelt one is named, with the key it
    resembles, before anything runs (the command line's locked config refuses it itself)."""
    from bert_jax.finetuning.config import validate_finetuning_config
    from bert_jax.pretraining import train as pretrain_lib

    config = load_config("configs/demo.py", "test")
    config.data.whole_word_maskng = True
    with pytest.raises(UserError, match=r"config key data.whole_word_maskng is not a setting of "
                       r"pretraining; did you mean data.whole_word_masking\?"):  # fmt: skip
        pretrain_lib.train_and_evaluate(config, tmp_path / "run")
    assert not (tmp_path / "run").exists()
    config = load_config("configs/finetune/token_classification.py", "test")
    config.init_checkpoint = str(tmp_path)
    config.lerning_rate, config.task.label_colum = 1e-3, "tag"
    with pytest.raises(UserError, match=r"config key lerning_rate is not a setting "
                       r"of token_classification fine-tuning; did you mean learning_rate\? "
                       r"\(and 1 more: task.label_colum\)"):  # fmt: skip
        validate_finetuning_config(config, 1)


@pytest.mark.parametrize(
    "args, message",
    [
        (["bert_jax.pretrain", "--config", "configs/demo.py:nope", "--workdir", "runs/x"],
         "configs/demo.py has no mode 'nope': use one of configs/demo.py:demo, "
         "configs/demo.py:test"),
        (["bert_jax.pretrain", "--config", "configs/demo.py:test", "--workdir", "runs/x",
          "--config.num_train_steps=-5"], "num_train_steps must be >= 1, got -5"),
        (["bert_jax.data.prepare", "--input_files=x.txt", "--vocab_file=v.txt", "--data_dir=runs/d",
          "--validation_fraction=1.5"], "validation_fraction must be in [0, 1), got 1.5"),
    ],
    ids=["demo_mode", "negative_steps", "fraction"],
)  # fmt: skip
def test_cli_range_and_mode_errors_are_one_line(args, message):
    assert_one_line(run_cli(*args), message)
    assert not (REPO_ROOT / "runs" / "x").exists()
