"""Issue 5: a 2-process x 2-CPU-device run (jax.distributed over 127.0.0.1, gloo collectives,
launched by launch/local_multiprocess.sh) against 1 process x 4 devices, then 1 process resuming
from the 2-process checkpoint.

Each process reads its own share of the documents, so a 1-process run of the same config sees
other batches. The 1 x 4 reference therefore runs here, in this process on 4 of its 8 CPU devices,
with the train step fed the same global batches: process 0's rows, then process 1's. Equal
losses mean the multi-process run computes exactly what one process does with that data:
batch assembly from process shares, collectives, metric reduction.
"""

import itertools
import os
import re
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
from conftest import REPO_ROOT, demo_config

from bert_jax import sharding
from bert_jax.checkpointing import Checkpointer
from bert_jax.data import pipeline
from bert_jax.metrics import read_metrics
from bert_jax.train_lib import evaluate
from bert_jax.train_step import build_pretrainer, metrics_from_sums

STEPS = 8
CHECKPOINT_STEP = 4
COMPARED = ("loss", "mlm_loss", "mlm_accuracy", "nsp_loss", "nsp_accuracy", "grad_norm")


def _config(data_dir):
    config = demo_config("test")
    config.data.data_dir = str(data_dir)
    config.data.show_progress = False
    config.num_train_steps = STEPS
    config.log_every_steps = 1
    config.checkpoint_every_steps = CHECKPOINT_STEP
    config.eval_every_steps = 1000  # evaluates once, after the last step
    config.eval_steps = 1000  # the whole held-out split: the two shares run out at other steps
    config.mesh.data = 4
    return config


def _cli_flags(config, workdir):
    return [
        "-m",
        "bert_jax.pretrain",
        "--config",
        "configs/demo.py:test",
        "--workdir",
        str(workdir),
        f"--config.data.data_dir={config.data.data_dir}",
        "--config.data.show_progress=False",
        f"--config.num_train_steps={STEPS}",
        "--config.log_every_steps=1",
        f"--config.checkpoint_every_steps={CHECKPOINT_STEP}",
        "--config.eval_every_steps=1000",
        "--config.eval_steps=1000",
        "--config.mesh.data=4",
    ]


def _run(cmd, timeout=420):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHON=sys.executable)
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"  # for the 1-process run
    result = subprocess.run(
        cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    return result.stdout


def _step_metrics(pretrainer, state, batches, rng):
    """Runs the train step over `batches`; per-step scalars as the loop logs them."""
    records = []
    for batch in batches:
        state, metrics = pretrainer.train_step(state, pretrainer.shard_batch(batch), rng)
        fetched = jax.device_get(metrics)
        scalars = metrics_from_sums({k: float(v) for k, v in fetched.items()})
        scalars["grad_norm"] = float(fetched["grad_norm"])
        records.append(scalars)
    return state, records


def _shares(config, split):
    """The two processes' batch iterators of `split`."""
    return [
        pipeline.make_pretraining_iterator(
            config.data,
            split=split,
            global_batch_size=config.batch_size,
            seed=config.seed,
            process_index=index,
            process_count=2,
        )
        for index in range(2)
    ]


def _two_process_batches(config, split="train", count=None):
    """Global batches as 2 processes feed them: each process's rows, in process order; `count`
    of them, or until either share runs out."""
    for local in itertools.islice(zip(*_shares(config, split), strict=False), count):
        yield {k: np.concatenate([rows[k] for rows in local]) for k in local[0]}


def _assert_same(got, want, rel, label):
    worst = 0.0
    for step, (g, w) in enumerate(zip(got, want, strict=True), start=1):
        for key in w:
            assert g[key] == pytest.approx(w[key], rel=rel, abs=1e-9), (label, step, key)
            worst = max(worst, abs(g[key] - w[key]) / max(abs(w[key]), 1e-12))
    return worst


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """The bundled corpus tokenized once for this module."""
    config = _config(tmp_path_factory.mktemp("data"))
    pipeline.prepare_data(config.data)
    return config.data.data_dir


def test_two_processes_match_one_and_one_resumes(tmp_path, data_dir):
    config = _config(data_dir)
    two_dir, one_dir = tmp_path / "two_processes", tmp_path / "one_process"
    launcher = str(REPO_ROOT / "launch" / "local_multiprocess.sh")
    out = _run([launcher, "-n", "2", "-d", "2", "--", sys.executable, *_cli_flags(config, two_dir)])
    assert "jax.distributed: 2 processes, 4 devices" in out

    records = read_metrics(two_dir)
    two_train = [{k: r[k] for k in COMPARED} for r in records if "loss" in r]
    two_eval = [r for r in records if "eval_loss" in r]
    assert len(two_train) == STEPS and len(two_eval) == 1

    mesh = sharding.make_mesh(config.mesh, devices=jax.devices()[:4])
    with jax.set_mesh(mesh):
        pretrainer = build_pretrainer(config, mesh)
        init_rng, dropout_rng = jax.random.split(jax.random.key(config.seed))
        state = pretrainer.init(init_rng)
        state, one_train = _step_metrics(
            pretrainer, state, _two_process_batches(config, count=STEPS), dropout_rng
        )
        held_out = _two_process_batches(config, "validation")
        one_eval = evaluate(pretrainer, state.params, config, held_out)
    # The shares hold different numbers of held-out batches: the processes agreed where to stop.
    lengths = [sum(1 for _ in share) for share in _shares(config, "validation")]
    assert lengths[0] != lengths[1] and one_eval["eval_batches"] == min(lengths)
    worst_train = _assert_same(two_train, one_train, 1e-5, "2x2 vs 1x4 train")
    worst_eval = _assert_same(
        [{k: two_eval[0][k] for k in one_eval}], [one_eval], 1e-5, "2x2 vs 1x4 eval"
    )

    # One process picks up the 2-process step-4 checkpoint and trains to the end.
    shutil.copytree(two_dir / "checkpoints" / "4", one_dir / "checkpoints" / "4")
    out = _run([sys.executable, *_cli_flags(config, one_dir)])
    assert re.search(rf"resumed from {re.escape(str(one_dir))}/checkpoints/4\b", out), out
    assert "written by 2 processes, this run has 1; the data stream starts afresh" in out
    resumed = [{k: r[k] for k in COMPARED} for r in read_metrics(one_dir) if "loss" in r]
    assert len(resumed) == STEPS - CHECKPOINT_STEP

    # Expected: the restored step-4 state stepped over a fresh 1-process stream.
    with jax.set_mesh(mesh):
        restored = Checkpointer(two_dir, CHECKPOINT_STEP, 2).restore(
            pretrainer.abstract_state, step=CHECKPOINT_STEP
        )
        fresh = pipeline.make_pretraining_iterator(
            config.data, split="train", global_batch_size=config.batch_size, seed=config.seed
        )
        batches = (next(fresh) for _ in range(STEPS - CHECKPOINT_STEP))
        _, expected = _step_metrics(pretrainer, restored.state, batches, restored.rng)
    worst_resume = _assert_same(resumed, expected, 1e-5, "1-process resume")
    print(
        f"2x2 vs 1x4: {STEPS} train steps worst rel diff {worst_train:.2e}, eval {worst_eval:.2e};"
        f" 1-process resume from step {CHECKPOINT_STEP}: worst rel diff {worst_resume:.2e};"
        f" losses 2x2 {[round(r['loss'], 6) for r in two_train]}"
    )


_TENSOR_ACROSS_PROCESSES = """
import sys
import jax
from bert_jax import distributed, sharding, train_lib
from bert_jax.config_lib import pretraining_config

distributed.initialize_if_needed()
make_mesh = sharding.make_mesh


def interleaved(mesh_config, devices=None):
    # Device order p0d0, p1d0, p0d1, p1d1: as (data=2, tensor=2) each tensor pair spans both
    # processes, so both processes hold rows of both data shards (the whole batch).
    if jax.process_count() == 1:  # the reference run
        return make_mesh(mesh_config, jax.devices()[:4])
    mine = lambda p: [d for d in jax.devices() if d.process_index == p]  # noqa: E731
    return make_mesh(mesh_config, [d for pair in zip(mine(0), mine(1)) for d in pair])


sharding.make_mesh = interleaved
spec = __import__("importlib.util").util.spec_from_file_location("demo", "configs/demo.py")
demo = __import__("importlib.util").util.module_from_spec(spec)
spec.loader.exec_module(demo)
config = demo.get_config("test")
config.data.data_dir, config.data.show_progress = sys.argv[1], False
config.num_train_steps, config.log_every_steps, config.eval_every_steps = 3, 1, 3
config.mesh.data, config.mesh.tensor = 2, 2
train_lib.train_and_evaluate(config, sys.argv[2])
print("batch share", sharding.batch_share(interleaved(config.mesh)), flush=True)
"""


def test_tensor_axis_across_processes_feeds_whole_shares(tmp_path, data_dir):
    """Issue 13, point 5: with a tensor axis spanning the two processes, each process holds rows
    of both data shards; both feed the same whole batch, and the run logs what one process
    with the same mesh sizes logs."""
    config = _config(data_dir)
    launcher = str(REPO_ROOT / "launch" / "local_multiprocess.sh")
    script = tmp_path / "tensor_across.py"
    script.write_text(_TENSOR_ACROSS_PROCESSES)
    two_dir, one_dir = tmp_path / "two", tmp_path / "one"
    out = _run(
        [launcher, "-n", "2", "-d", "2", "--", sys.executable, str(script), config.data.data_dir]
        + [str(two_dir)],
    )
    assert out.count("batch share (0, 1)") == 2, out  # one share, fed by both processes
    # One process, 4 devices, the same mesh sizes: the same data stream and the same numbers.
    out = _run([sys.executable, str(script), config.data.data_dir, str(one_dir)])
    one, two = read_metrics(one_dir), read_metrics(two_dir)
    assert len(one) == len(two) == 4  # 3 train logs and one evaluation
    for got, want in zip(two, one, strict=True):
        for key in set(want) - {"steps_per_sec", "tokens_per_sec", "examples_per_sec", "mfu"}:
            assert got[key] == pytest.approx(want[key], rel=1e-5), key
