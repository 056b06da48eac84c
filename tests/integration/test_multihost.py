"""A 2-process x 2-CPU-device run (jax.distributed over 127.0.0.1, gloo collectives,
launched by launch/local_multiprocess.sh) against 1 process x 4 devices, then 1 process resuming
from the 2-process checkpoint.

Each process reads its own share of the documents, so a 1-process run of the same config sees
other batches. The 1 x 4 reference therefore runs here, in this process on 4 of its 8 CPU devices,
with the train step fed the same global batches: process 0's rows, then process 1's. Equal
losses mean the multi-process run computes exactly what one process does with that data:
batch assembly from process shares, collectives, metric reduction.
"""

import itertools
import json
import os
import re
import shutil
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from conftest import REPO_ROOT, demo_config

from bert_jax.checkpoints.checkpointing import Checkpointer, _data_state_for_this_process
from bert_jax.data import input_pipeline
from bert_jax.pretraining.step import build_pretrainer, metrics_from_sums
from bert_jax.pretraining.train import evaluate
from bert_jax.training import sharding
from bert_jax.training.metrics import read_metrics

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
        input_pipeline.make_pretraining_iterator(
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
    input_pipeline.prepare_data(config.data)
    return config.data.data_dir


def _resumed_on_a_fresh_stream(pretrainer, config, workdir) -> list[dict]:
    """Metrics of the workdir's CHECKPOINT_STEP state stepped to STEPS over a fresh one-share
    stream (what a resume whose share count changed must log)."""
    restored = Checkpointer(workdir, CHECKPOINT_STEP, 2).restore(
        pretrainer.abstract_state, step=CHECKPOINT_STEP
    )
    fresh = input_pipeline.make_pretraining_iterator(
        config.data, split="train", global_batch_size=config.batch_size, seed=config.seed
    )
    batches = (next(fresh) for _ in range(STEPS - CHECKPOINT_STEP))
    return _step_metrics(pretrainer, restored.state, batches, restored.rng)[1]


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
    assert "fed in 2 shares, this run in 1; the data stream starts afresh" in out
    resumed = [{k: r[k] for k in COMPARED} for r in read_metrics(one_dir) if "loss" in r]
    assert len(resumed) == STEPS - CHECKPOINT_STEP

    # Expected: the restored step-4 state stepped over a fresh 1-process stream.
    with jax.set_mesh(mesh):
        expected = _resumed_on_a_fresh_stream(pretrainer, config, two_dir)
    worst_resume = _assert_same(resumed, expected, 1e-5, "1-process resume")
    print(
        f"2x2 vs 1x4: {STEPS} train steps worst rel diff {worst_train:.2e}, eval {worst_eval:.2e};"
        f" 1-process resume from step {CHECKPOINT_STEP}: worst rel diff {worst_resume:.2e};"
        f" losses 2x2 {[round(r['loss'], 6) for r in two_train]}"
    )


def _resume_config(data_dir):
    """`_config` with chunks of one document: the shares' chunks hold unequal numbers of
    examples, so after CHECKPOINT_STEP steps the two shares' iterator positions differ."""
    config = _config(data_dir)
    config.batch_size = 16
    config.data.documents_per_chunk = 1
    config.eval_steps = 1
    return config


def _pretrain_on_device_order(config, workdir, order):
    """A 2-process x 2-device pretraining run of `config` on a mesh in device `order`."""
    config_file = workdir.parent / f"{workdir.name}_config.json"
    config_file.write_text(config.to_json())
    launcher = str(REPO_ROOT / "launch" / "local_multiprocess.sh")
    script = str(REPO_ROOT / "tests" / "helpers" / "pretrain_device_order.py")
    return _run(
        [launcher, "-n", "2", "-d", "2", "--", sys.executable, script, str(config_file)]
        + [str(workdir), order]
    )


def _train_records(workdir):
    return [{k: r[k] for k in COMPARED} for r in read_metrics(workdir) if "loss" in r]


def test_resume_on_another_mesh_restores_each_share_position(tmp_path, data_dir):
    """A data iterator position belongs to a batch share, not to a process index: resumed on a
    mesh where process 1 feeds share 0, each process continues the stream of the share it now
    feeds (the losses of an unbroken run); with a tensor axis across both processes (one share
    for two) the stream starts afresh on both, the same rows on both."""
    config = _resume_config(data_dir)
    unbroken = tmp_path / "unbroken"
    out = _pretrain_on_device_order(config, unbroken, "default")
    assert "process 1 fed batch share (1, 2)" in out, out[-3000:]
    saved = Checkpointer(unbroken, CHECKPOINT_STEP, 2).sealed.manager.restore(
        CHECKPOINT_STEP, args=ocp.args.Composite(data_iterator=ocp.args.JsonRestore())
    )["data_iterator"]["states"]
    assert saved[0] != saved[1], saved  # else a swapped restore could not show
    want = _train_records(unbroken)[CHECKPOINT_STEP:]
    assert len(want) == STEPS - CHECKPOINT_STEP

    swapped = tmp_path / "swapped"
    shutil.copytree(unbroken / "checkpoints" / "4", swapped / "checkpoints" / "4")
    out = _pretrain_on_device_order(config, swapped, "swapped")
    assert "process 1 fed batch share (0, 2)" in out, out[-3000:]
    worst_swapped = _assert_same(_train_records(swapped), want, 1e-5, "swapped shares")

    across = tmp_path / "across"
    shutil.copytree(unbroken / "checkpoints" / "4", across / "checkpoints" / "4")
    config.mesh.data, config.mesh.tensor = 2, 2
    out = _pretrain_on_device_order(config, across, "interleaved")
    assert out.count("fed batch share (0, 1)") == 2, out[-3000:]
    assert "fed in 2 shares, this run in 1; the data stream starts afresh" in out, out[-3000:]
    # Expected: the step-4 state stepped over the one share's fresh stream, on the same mesh.
    mesh = sharding.make_mesh(config.mesh, devices=jax.devices()[:4])
    with jax.set_mesh(mesh):
        expected = _resumed_on_a_fresh_stream(build_pretrainer(config, mesh), config, unbroken)
    worst_across = _assert_same(_train_records(across), expected, 1e-5, "tensor across")
    print(
        f"saved positions {saved}; resumed swapped worst rel diff {worst_swapped:.2e}, "
        f"tensor across {worst_across:.2e}"
    )


def test_checkpoint_naming_no_shares_resumes_each_process_share():
    """Checkpoints written before the shares were recorded: process i fed share i."""
    saved = {"process_count": 2, "states": [{"position": 3}, {"position": 4}]}
    assert _data_state_for_this_process(saved, [1, 2]) == {"position": 4}
    assert _data_state_for_this_process(saved, [0, 1]) is None  # another number of shares


def _finetuning_setup(tmp_path):
    """A tiny random Hugging Face BERT and a regression task (its outputs differ per example)."""
    from bert_jax.convert import hf
    from bert_jax.data.tokenization import WordPieceTokenizer
    from bert_jax.finetuning.config import finetuning_config, use_test_mode
    from bert_jax.model.modeling import BertConfig

    sentiment = REPO_ROOT / "tests" / "data" / "tasks" / "sentiment"
    tokenizer = WordPieceTokenizer.train([sentiment / "train.tsv"], vocab_size=300)
    model_config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=16,
                              num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                              max_position_embeddings=64, initializer_range=0.5)  # fmt: skip
    model_dir = hf.save_hf_checkpoint(
        model_config, hf.init_params(model_config, jax.random.key(0)), tmp_path / "tiny"
    )
    tokenizer.save_vocab(model_dir / "vocab.txt")
    rng = np.random.default_rng(0)
    files = {}
    for split, rows in (("train", 64), ("dev", 60), ("test", 44)):
        lines = (sentiment / f"{split}.tsv").read_text(encoding="utf-8").splitlines()[1 : rows + 1]
        values = [f"{line.split(chr(9))[0]}\t{rng.normal():.3f}" for line in lines]
        files[split] = tmp_path / f"{split}.tsv"
        files[split].write_text("sentence\tlabel\n" + "\n".join(values) + "\n", encoding="utf-8")
    config = finetuning_config("regression")
    use_test_mode(config)
    config.init_checkpoint = str(model_dir)
    config.task.train_file, config.task.dev_file = str(files["train"]), str(files["dev"])
    config.task.test_file, config.do_predict = str(files["test"]), True
    config.num_train_steps, config.mesh.data = 4, 4
    config_file = tmp_path / "config.json"
    config_file.write_text(config.to_json())
    return config_file


def test_finetuning_on_an_interleaved_two_process_mesh_matches_one_process(tmp_path):
    """Each process supplies the rows its devices hold, wherever the mesh puts them,
    so dev metrics and test predictions are those of one process, row for row."""
    config_file = _finetuning_setup(tmp_path)
    script = str(REPO_ROOT / "tests" / "helpers" / "finetune_device_order.py")
    launcher = str(REPO_ROOT / "launch" / "local_multiprocess.sh")
    two, one = tmp_path / "two_processes", tmp_path / "one_process"
    out = _run([launcher, "-n", "2", "-d", "2", "--", sys.executable, script, str(config_file),
                str(two), "interleaved"])  # fmt: skip
    assert "mesh device processes: [0, 1, 0, 1]" in out, out[-3000:]
    _run([sys.executable, script, str(config_file), str(one)])
    got = json.loads((two / "eval_results.json").read_text())
    want = json.loads((one / "eval_results.json").read_text())
    # Equal but for the float rounding of collectives over 2 processes: ranks (spearman) of
    # nearly equal predictions may swap; a permuted row would move pearson by ~0.1.
    assert got.pop("spearman") == pytest.approx(want.pop("spearman"), abs=5e-3)
    assert got == pytest.approx(want, rel=1e-4)
    predicted = [(d / "test_predictions.tsv").read_text().splitlines() for d in (two, one)]
    assert len(predicted[0]) == len(predicted[1]) == 45
    for got_line, want_line in zip(*predicted, strict=True):
        got_text, got_value = got_line.rsplit("\t", 1)
        want_text, want_value = want_line.rsplit("\t", 1)
        assert got_text == want_text
        if want_text != "sentence":
            assert float(got_value) == pytest.approx(float(want_value), rel=1e-4, abs=1e-5)
    values = [float(line.rsplit("\t", 1)[1]) for line in predicted[1][1:]]
    assert np.std(values) > 0.1  # predictions differ by example, so a permutation would show


TIMING_KEYS = {"steps_per_sec", "tokens_per_sec", "real_tokens_per_sec", "examples_per_sec", "mfu"}
_TENSOR_ACROSS_PROCESSES = """
import sys
import jax
from bert_jax.training import distributed
from bert_jax.training import sharding
from bert_jax.pretraining import train as train_lib
from bert_jax.pretraining.config import pretraining_config

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
    """With a tensor axis spanning the two processes, each process holds rows
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
        for key in set(want) - TIMING_KEYS:
            assert got[key] == pytest.approx(want[key], rel=1e-5), key
