"""Ctrl-C: the first one saves and exits with one line (as SIGTERM does), a second aborts at once.

Real SIGINTs to real processes: the pretraining and fine-tuning CLIs in subprocesses, and the
handler itself in this process.
"""

import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import pytest
from conftest import REPO_ROOT

from bert_jax.training import distributed

TASKS = REPO_ROOT / "tests" / "data" / "tasks"


def _env():
    return dict(
        os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1"
    )


def _ctrl_c_as_in_a_terminal():
    """A child inherits an ignored SIGINT (as a shell's background job does), and Python then
    never raises KeyboardInterrupt: the CLI gets Ctrl-C as from a terminal, whatever the test
    process's disposition is."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start(cmd, workdir: pathlib.Path):
    logs = workdir.parent / f"{workdir.name}_log"
    process = subprocess.Popen(
        [sys.executable, "-m", *cmd], cwd=REPO_ROOT, env=_env(),
        stdout=open(f"{logs}.out", "w"), stderr=open(f"{logs}.err", "w"),
        preexec_fn=_ctrl_c_as_in_a_terminal,
    )  # fmt: skip
    process.logs = logs
    return process


def _wait_for(condition, process, what, timeout=300.0):
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            pytest.fail(f"exited ({process.returncode}) before {what}:\n" + _output(process)[1])
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


def _output(process) -> tuple[str, str]:
    return open(f"{process.logs}.out").read(), open(f"{process.logs}.err").read()


def _logged(workdir) -> int:
    path = workdir / "metrics.jsonl"
    return len(path.read_text().splitlines()) if path.exists() else 0


def _interrupt_after_two_logs(process, workdir) -> tuple[str, str]:
    _wait_for(lambda: _logged(workdir) >= 2, process, "two logged steps")
    process.send_signal(signal.SIGINT)
    process.wait(timeout=120)
    return _output(process)


def _saved_step(stdout: str, directory) -> int:
    lines = [line for line in stdout.splitlines() if line.startswith("interrupted")]
    assert len(lines) == 1, stdout
    prefix = "interrupted (Ctrl-C): saved step "
    assert lines[0].startswith(prefix) and lines[0].endswith(f" to {directory}; exiting"), lines
    return int(lines[0][len(prefix) :].split()[0])


def test_ctrl_c_saves_pretraining_and_exits_with_one_line(tmp_path):
    workdir = tmp_path / "run"
    process = _start(
        ["bert_jax.pretrain", "--config", "configs/demo.py:test", "--workdir", str(workdir),
         f"--config.data.data_dir={tmp_path / 'data'}", "--config.num_train_steps=100000",
         "--config.log_every_steps=1", "--config.eval_every_steps=100000",
         "--config.checkpoint_every_steps=100000"],
        workdir,
    )  # fmt: skip
    stdout, stderr = _interrupt_after_two_logs(process, workdir)
    assert process.returncode == 130, stderr[-3000:]
    step = _saved_step(stdout, workdir / "checkpoints")
    assert step >= 2
    assert (workdir / "checkpoints" / str(step)).is_dir()  # the step it stopped at, saved
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr[-3000:]


def test_ctrl_c_saves_finetuning_and_exits_with_one_line(tmp_path):
    from bert_jax.convert import hf
    from bert_jax.data.tokenization import WordPieceTokenizer
    from bert_jax.model.modeling import BertConfig

    tokenizer = WordPieceTokenizer.train([TASKS / "sentiment" / "train.tsv"], vocab_size=300)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=16, num_hidden_layers=1,
        num_attention_heads=2, intermediate_size=32, max_position_embeddings=64,
    )  # fmt: skip
    model_dir = tmp_path / "tiny_hf"
    hf.save_hf_checkpoint(config, hf.init_params(config, jax.random.key(0)), model_dir)
    tokenizer.save_vocab(model_dir / "vocab.txt")
    workdir = tmp_path / "ft"
    process = _start(
        ["bert_jax.finetune", "--config", "configs/finetune/classification.py:test",
         "--workdir", str(workdir), f"--config.init_checkpoint={model_dir}",
         f"--config.task.train_file={TASKS / 'sentiment' / 'train.tsv'}",
         f"--config.task.dev_file={TASKS / 'sentiment' / 'dev.tsv'}",
         "--config.num_train_steps=100000", "--config.log_every_steps=1", "--config.mesh.data=1"],
        workdir,
    )  # fmt: skip
    stdout, stderr = _interrupt_after_two_logs(process, workdir)
    assert process.returncode == 130, stderr[-3000:]
    step = _saved_step(stdout, workdir / "checkpoints")
    assert (workdir / "checkpoints" / str(step)).is_dir()
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr[-3000:]


def test_second_ctrl_c_raises_at_once_and_handlers_are_restored():
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        with distributed.PreemptionFlag() as flag:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.1)  # the handler runs between bytecodes of this thread
            assert flag.requested and flag.signal_name == "SIGINT"
            assert flag.stop_message(7, "ckpt") == (
                "interrupted (Ctrl-C): saved step 7 to ckpt; exiting"
            )
            assert distributed.interrupted_by_user()
            os.kill(os.getpid(), signal.SIGINT)  # the second: no save, stop now
            time.sleep(1.0)
            pytest.fail("the second Ctrl-C did not interrupt")
    assert signal.getsignal(signal.SIGINT) is before
    with distributed.PreemptionFlag() as flag:  # SIGTERM keeps its meaning: preemption
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.1)
        assert flag.requested and flag.stop_message(3, "d").startswith("preempted: saved step 3")
    assert not distributed.interrupted_by_user()


def test_ctrl_c_before_training_is_one_line(tmp_path):
    """Ctrl-C while the run starts (data, compilation): one line, 130."""
    workdir = tmp_path / "run"
    process = _start(
        ["bert_jax.pretrain", "--config", "configs/demo.py:test", "--workdir", str(workdir),
         f"--config.data.data_dir={tmp_path / 'data'}",
         "--config.num_train_steps=100000"],  # never done before the signal, however slow
        workdir,
    )  # fmt: skip
    _wait_for(lambda: (workdir / "config.json").exists(), process, "the run's start")
    process.send_signal(signal.SIGINT)
    process.wait(timeout=120)
    stdout, stderr = _output(process)
    assert process.returncode == 130, stderr[-3000:]
    lines = stderr.strip().splitlines()
    if "interrupted (Ctrl-C): saved step" not in stdout:  # it had not reached the loop yet
        assert lines[-1] == "error: interrupted (Ctrl-C)", stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
