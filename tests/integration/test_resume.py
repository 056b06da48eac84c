"""Exact resume after SIGKILL and after SIGTERM (preemption), against an unbroken run.

One workdir goes through three processes: killed with SIGKILL after its step-10 checkpoint,
resumed and stopped with SIGTERM at whatever step it reached, resumed again to the end. Every
logged metric (train and eval, timing aside) must equal the unbroken run's to 1e-6 relative.
Checkpoints taken inside a logging window (log_every_steps=3) check that a resumed run logs the
same averages as the unbroken one. Both with one example per row and with packed rows.
"""

import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from conftest import REPO_ROOT, write_short_documents

from bert_jax.checkpoints.checkpointing import load_params_for_init
from bert_jax.training.metrics import read_metrics

STEPS = 30
CHECKPOINT_EVERY = 5
LOG_EVERY = 3  # checkpoints fall inside log windows: a resumed run must log the same averages
TIMING_KEYS = {"steps_per_sec", "tokens_per_sec", "real_tokens_per_sec", "examples_per_sec", "mfu"}
# Packed rows: short documents, several examples per row of 256.
PACKED = [
    "--config.data.packing=True",
    "--config.data.max_sequences_per_row=4",
    "--config.data.max_seq_length=256",
    "--config.data.max_predictions_per_seq=40",
    "--config.model.max_position_embeddings=256",
]


@pytest.fixture(scope="module")
def compile_cache(tmp_path_factory):
    """A persistent compilation cache: the runs after the first skip XLA compilation."""
    return str(tmp_path_factory.mktemp("jax_cache"))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """(data_dir, short documents): the bundled corpus and a corpus of short documents (for
    packing), tokenized once for every run of this module."""
    spec = importlib.util.spec_from_file_location("demo_config", REPO_ROOT / "configs" / "demo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config("test")
    config.data.data_dir = str(tmp_path_factory.mktemp("data"))
    config.data.show_progress = False
    from bert_jax.data import input_pipeline

    input_pipeline.prepare_data(config.data)
    short = write_short_documents(tmp_path_factory.mktemp("short") / "short.txt")
    config.data.input_files = str(short)
    input_pipeline.prepare_data(config.data)
    return config.data.data_dir, str(short)


def start_pretrain(workdir, data_dir, compile_cache, log_name, packed=False):
    """The CLI on the tiny config, 1 CPU device, output to workdir/../<log_name>.{out,err};
    packed: on the short documents, several examples per row."""
    data_dir, short_documents = data_dir
    env = dict(
        os.environ,
        JAX_PLATFORMS="cpu",
        XLA_FLAGS="--xla_force_host_platform_device_count=1",
        JAX_COMPILATION_CACHE_DIR=compile_cache,
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
    )
    cmd = [
        sys.executable,
        "-m",
        "bert_jax.pretrain",
        "--config",
        "configs/demo.py:test",
        "--workdir",
        str(workdir),
        f"--config.data.data_dir={data_dir}",
        "--config.data.show_progress=False",
        f"--config.num_train_steps={STEPS}",
        f"--config.checkpoint_every_steps={CHECKPOINT_EVERY}",
        "--config.keep_checkpoints=2",
        f"--config.log_every_steps={LOG_EVERY}",
        "--config.eval_every_steps=10",
    ]
    if packed:
        cmd += [*PACKED, f"--config.data.input_files={short_documents}"]
    logs = workdir.parent / log_name
    process = subprocess.Popen(
        cmd,
        cwd=REPO_ROOT,
        env=env,
        stdout=open(f"{logs}.out", "w"),
        stderr=open(f"{logs}.err", "w"),
    )
    process.logs = logs
    return process


def finish(process, timeout=240) -> str:
    process.wait(timeout=timeout)
    return open(f"{process.logs}.out").read()


def wait_until(condition, process, what: str, timeout=240.0):
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            err = open(f"{process.logs}.err").read()[-3000:]
            pytest.fail(f"the run exited ({process.returncode}) before {what}:\n{err}")
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


def train_records_after(workdir, offset: int) -> int:
    path = workdir / "metrics.jsonl"
    if not path.exists():
        return 0
    return sum('"loss"' in line for line in path.read_text().splitlines()[offset:])


def metric_line_count(workdir) -> int:
    path = workdir / "metrics.jsonl"
    return len(path.read_text().splitlines()) if path.exists() else 0


def resumed_step(output: str, workdir) -> int:
    found = re.findall(rf"resumed from {re.escape(str(workdir))}/checkpoints/(\d+)", output)
    assert len(found) == 1, output
    return int(found[0])


@pytest.mark.parametrize("packed", [False, True], ids=["one_per_row", "packed"])
def test_sigkill_and_sigterm_resume_exactly(tmp_path, data_dir, compile_cache, packed):
    def start(workdir, log_name):
        return start_pretrain(workdir, data_dir, compile_cache, log_name, packed)

    reference_dir, broken_dir = tmp_path / "unbroken", tmp_path / "broken"
    reference = start(reference_dir, "unbroken")
    # The unbroken run goes on alongside once it has compiled (and filled the cache).
    wait_until(lambda: metric_line_count(reference_dir) > 0, reference, "the first log")

    # 1. SIGKILL once the step-10 checkpoint is sealed, while later steps are running.
    first = start(broken_dir, "first")
    sealed = broken_dir / "checkpoints" / "10" / "bert_jax_manifest.json"
    wait_until(sealed.exists, first, "the step-10 checkpoint")
    first.send_signal(signal.SIGKILL)
    finish(first)
    assert first.returncode == -signal.SIGKILL
    assert not (broken_dir / "final_step.json").exists()  # it really died mid-run
    loop = json.loads((broken_dir / "checkpoints" / "10" / "loop" / "metadata").read_text())
    assert len(loop["pending_metrics"]) == 10 % LOG_EVERY  # step 10 was not logged yet

    # 2. Resume; SIGTERM after it has logged two more windows; it saves and exits cleanly.
    offset = metric_line_count(broken_dir)
    second = start(broken_dir, "second")
    wait_until(lambda: train_records_after(broken_dir, offset) >= 2, second, "two new logs")
    second.send_signal(signal.SIGTERM)
    out = finish(second)
    assert second.returncode == 0, open(f"{second.logs}.err").read()[-3000:]
    first_resume = resumed_step(out, broken_dir)
    assert first_resume >= 10 and first_resume % CHECKPOINT_EVERY == 0
    preempted = [line for line in out.splitlines() if "preempted" in line]
    assert len(preempted) == 1, out
    stop_step = int(re.match(r"preempted: saved step (\d+) ", preempted[0]).group(1))
    assert first_resume < stop_step < STEPS

    # 3. The same command again continues from the preemption step to the end.
    third = start(broken_dir, "third")
    out = finish(third)
    assert third.returncode == 0, open(f"{third.logs}.err").read()[-3000:]
    assert resumed_step(out, broken_dir) == stop_step
    finish(reference)
    assert reference.returncode == 0, open(f"{reference.logs}.err").read()[-3000:]

    # Every logged step of the broken run (the last record of a step wins) equals the unbroken.
    want, got = read_metrics(reference_dir), read_metrics(broken_dir)
    assert [r["step"] for r in got] == [r["step"] for r in want]
    assert len(want) == STEPS // LOG_EVERY + STEPS // 10  # and an evaluation every 10 steps
    padding = [r["padding_fraction"] for r in want if "padding_fraction" in r]
    assert len(padding) == STEPS // LOG_EVERY
    assert max(padding) < 0.15 if packed else min(padding) > 0.0  # packed rows are full
    worst = 0.0
    for w, g in zip(want, got, strict=True):
        assert set(w) == set(g)
        for key in set(w) - TIMING_KEYS - {"step"}:
            assert g[key] == pytest.approx(w[key], rel=1e-6, abs=1e-12), (w["step"], key)
            worst = max(worst, abs(g[key] - w[key]) / max(abs(w[key]), 1e-12))
    print(
        f"killed after step-10 checkpoint, resumed at {first_resume}, SIGTERM saved {stop_step}; "
        f"{len(want)} records, worst relative difference {worst:.2e}"
    )

    # And the final parameters are identical.
    abstract = jax.eval_shape(lambda: _params(reference_dir))
    final_want = load_params_for_init(reference_dir, abstract)
    final_got = load_params_for_init(broken_dir, abstract)
    for a, b in zip(jax.tree.leaves(final_want), jax.tree.leaves(final_got), strict=True):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-6, atol=0)


def _params(workdir):
    """Abstract BertForPreTraining parameters of the run's model (shapes only)."""
    from bert_jax.convert.hf import init_params
    from bert_jax.model.modeling import BertConfig

    model = json.loads((workdir / "config.json").read_text())["model"]
    return init_params(BertConfig.from_dict(model), jax.random.key(0))
