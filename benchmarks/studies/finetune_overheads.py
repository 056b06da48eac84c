r"""Fine-tuning's time outside the training step (docs/finetune_overheads.md).

  python -m benchmarks.studies.finetune_overheads --sections=host [--rows=10000,400000]
  python -m benchmarks.studies.finetune_overheads --sections=phases --workdir runs/overheads

host    Host time per packed training step (batch, inputs, real-token count) and per packed
        evaluation batch (inputs, prediction scatter) on synthetic rows of 128, at each --rows.
phases  A whole run (all-MiniLM-L6-v2, 6,000 sentiment rows, batch 32, 2 epochs, evaluating
        after each) timed by phase in one process, per part: setup, each epoch, finish.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import pathlib
import shutil
import statistics
import sys
import time

import numpy as np

from benchmarks.finetune_vs_hf import (
    VOCAB,
    add_run_arguments,
    bert_jax_config,
    cpu_seconds,
    load_average,
    minilm_dir,
    run_sections,
    task_subsample,
)

# --- host ------------------------------------------------------------------------------------


def synthetic_task(rows: int, max_seq_length: int = 128, seed: int = 0):
    """A classification TaskData of `rows` features, 8 to max_seq_length / 2 real tokens each."""
    from bert_jax.finetuning.tasks.features import TaskData

    rng = np.random.default_rng(seed)
    lengths = rng.integers(8, max_seq_length // 2 + 1, rows)
    mask = (np.arange(max_seq_length) < lengths[:, None]).astype(np.int32)
    arrays = {
        "input_ids": (rng.integers(1000, 30000, (rows, max_seq_length)) * mask).astype(np.int32),
        "token_type_ids": np.zeros((rows, max_seq_length), np.int32),
        "attention_mask": mask,
        "labels": rng.integers(0, 3, rows).astype(np.int32),
    }
    return TaskData(
        kind="classification", split="train", source="synthetic", examples=[], arrays=arrays,
        feature_info={}, label_list=["a", "b", "c"], labeled=True, columns=["sentence", "label"],
        max_seq_length=max_seq_length,
    )  # fmt: skip


def _median_seconds(calls, repeats: int) -> tuple[float, float]:
    """Median (wall, CPU) seconds of each of `calls`' calls, run `repeats` times each."""
    walls, cpus = [], []
    for _ in range(repeats):
        for call in calls:
            wall, cpu = time.perf_counter(), time.process_time()
            call()
            walls.append(time.perf_counter() - wall)
            cpus.append(time.process_time() - cpu)
    return statistics.median(walls), statistics.median(cpus)


def host_times(rows: int, steps: int, batch_size: int = 32, eval_rows: int = 64) -> dict:
    """Host seconds per training step and per evaluation batch, packed, on `rows` rows."""
    from bert_jax.finetuning import batches as task_batches

    data = synthetic_task(rows)
    start = time.perf_counter()
    batches = task_batches.TrainBatches(data, batch_size, seed=0, packed=True,
                                        max_sequences_per_row=16)  # fmt: skip
    batches.batch(0)  # the epoch's packing, once per epoch
    setup = time.perf_counter() - start

    def train_step(step: int):
        batch = batches.batch(step)
        task_batches.build_batch("classification", data, batch)
        task_batches.real_tokens(data, batch)

    evals = task_batches.eval_batches(data, eval_rows, packed=True, max_sequences_per_row=16)
    buffers = task_batches.predictions_buffers("classification", data, 3)

    def eval_batch(batch):
        task_batches.build_batch("classification", data, batch)
        outputs = np.zeros((*batch.slots.shape, 3), np.float32)
        task_batches.scatter_predictions("classification", data, batch, outputs, buffers)

    train = [functools.partial(train_step, step) for step in range(1, steps + 1)]
    evaluation = [functools.partial(eval_batch, batch) for batch in evals[:steps]]
    step_wall, step_cpu = _median_seconds(train, 1)
    eval_wall, eval_cpu = _median_seconds(evaluation, 1)
    return {
        "rows": rows,
        "setup_s": setup,
        "step_ms": 1000 * step_wall,
        "step_cpu_ms": 1000 * step_cpu,
        "eval_batch_ms": 1000 * eval_wall,
        "eval_batch_cpu_ms": 1000 * eval_cpu,
        "steps_per_epoch": batches.steps_per_epoch,
    }


def section_host(args, results: dict) -> None:
    measured = []
    load = load_average()
    for rows in (int(r) for r in args.rows.split(",")):
        measured.append(host_times(rows, args.host_steps))
        print(json.dumps(measured[-1]), flush=True)
    small, large = measured[0], measured[-1]
    results["host"] = {
        "runs": measured,
        "step_ratio": large["step_ms"] / small["step_ms"],
        "step_cpu_ratio": large["step_cpu_ms"] / small["step_cpu_ms"],
        "eval_batch_ratio": large["eval_batch_ms"] / small["eval_batch_ms"],
        "load_before": load,
        "load_after": load_average(),
    }


# --- phases ----------------------------------------------------------------------------------

# A run's time by part (setup, each epoch, finish: what follows the last step) and phase.
PHASES = ("steps", "compile", "eval", "eval compile", "state save", "best save", "host batches",
          "data loading", "logging", "other")  # fmt: skip


class PhaseTimer:
    """Exclusive wall and CPU seconds per (part, phase) of the calls `patched` wraps: a nested
    call's time is its own phase's, not its caller's; `set_part` starts the next part."""

    def __init__(self):
        self.part = "setup"
        self.wall: dict[str, dict[str, float]] = {}
        self.cpu: dict[str, dict[str, float]] = {}
        self._stack: list[list] = []  # [phase, wall start, cpu start]

    def _charge_top(self) -> None:
        wall, cpu = time.perf_counter(), cpu_seconds()
        if self._stack:
            phase, wall_start, cpu_start = self._stack[-1]
            for totals, value in ((self.wall, wall - wall_start), (self.cpu, cpu - cpu_start)):
                totals.setdefault(self.part, dict.fromkeys(PHASES, 0.0))[phase] += value
            self._stack[-1][1:] = [wall, cpu]

    def set_part(self, part: str) -> None:
        if part != self.part:
            self._charge_top()
            self.part = part

    @contextlib.contextmanager
    def phase(self, name: str):
        self._charge_top()
        self._stack.append([name, time.perf_counter(), cpu_seconds()])
        try:
            yield
        finally:
            self._charge_top()
            self._stack.pop()
            if self._stack:
                self._stack[-1][1:] = [time.perf_counter(), cpu_seconds()]

    def current(self) -> str | None:
        return self._stack[-1][0] if self._stack else None

    def wrap(self, name, function, block: bool = False):
        """`function` timed as phase `name` (a fixed name, or a function of the call's arguments
        giving it); block: wait for its device results, so a step's time is its own."""
        import jax

        @functools.wraps(function)
        def timed(*args, **kwargs):
            with self.phase(name(*args, **kwargs) if callable(name) else name):
                out = function(*args, **kwargs)
                if block:
                    jax.block_until_ready(out)
                return out

        return timed


@contextlib.contextmanager
def patched(timer: PhaseTimer):
    """finetune_lib's phases timed. Each patched function is one finetune_lib looks up by name at
    every call (module attributes, methods), so the run is unchanged, except that every train and
    eval step is waited for: its time is its own, not the next synchronisation's."""
    from bert_jax.checkpoints import sealing
    from bert_jax.finetuning import batches as task_batches
    from bert_jax.finetuning import train as finetune_lib
    from bert_jax.finetuning.tasks import features as tasks
    from bert_jax.training.metrics import MetricWriter

    compiled: set = set()

    def step_phase(kind: str):
        def name(trainable, frozen, arrays, *rest):
            shapes = (kind, *(v.shape for v in arrays.values()))
            first = shapes not in compiled
            compiled.add(shapes)
            if kind == "train":
                return "compile" if first else "steps"
            return "eval compile" if first else "eval"

        return name

    def build_finetuner(*args, **kwargs):
        finetuner = originals[(finetune_lib, "build_finetuner")](*args, **kwargs)
        finetuner.train_step = timer.wrap(step_phase("train"), finetuner.train_step, block=True)
        finetuner.eval_step = timer.wrap(step_phase("eval"), finetuner.eval_step, block=True)
        finetuner.shard_batch = timer.wrap(batch_phase, finetuner.shard_batch)
        return finetuner

    def batch_phase(*args, **kwargs):  # evaluation's own batches count to evaluation
        return "eval" if timer.current() == "eval" else "host batches"

    def save_phase(manager, *args, **kwargs):
        return "best save" if manager.directory.name == "best" else "state save"

    def train_batch(self, step):
        timer.set_part(f"epoch {step // self.steps_per_epoch + 1}")
        return timed_batch(self, step)

    def run_loop(*args, **kwargs):
        out = originals[(finetune_lib, "_run_loop")](*args, **kwargs)
        timer.set_part("finish")
        return out

    timed_batch = timer.wrap("host batches", task_batches.TrainBatches.batch)
    replacements = {
        (finetune_lib, "build_finetuner"): build_finetuner,
        (finetune_lib, "_run_loop"): run_loop,
        (finetune_lib, "evaluate"): timer.wrap("eval", finetune_lib.evaluate),
        (finetune_lib, "local_batch"): timer.wrap(batch_phase, finetune_lib.local_batch),
        (task_batches, "real_tokens"): timer.wrap("host batches", task_batches.real_tokens),
        (task_batches.TrainBatches, "batch"): train_batch,
        (tasks, "load_task"): timer.wrap("data loading", tasks.load_task),
        (MetricWriter, "write"): timer.wrap("logging", MetricWriter.write),
        (sealing.SealedManager, "save"): timer.wrap(save_phase, sealing.SealedManager.save),
        (sealing.SealedManager, "wait"): timer.wrap(save_phase, sealing.SealedManager.wait),
        (sealing.SealedManager, "close"): timer.wrap(save_phase, sealing.SealedManager.close),
    }
    originals = {key: getattr(*key) for key in replacements}
    for (owner, name), replacement in replacements.items():
        setattr(owner, name, replacement)
    try:
        yield
    finally:
        for (owner, name), function in originals.items():
            setattr(owner, name, function)


def steps_per_epoch(config, encoder) -> int:
    from bert_jax.finetuning import train as finetune_lib
    from bert_jax.finetuning.tasks import features as tasks
    from bert_jax.training import sharding

    data = tasks.load_task(config, "train", encoder.tokenizer)
    return finetune_lib.train_batches(config, data, sharding.make_mesh(config.mesh)).steps_per_epoch


def run_phases(config, workdir: pathlib.Path, encoder) -> dict:
    from bert_jax.finetuning import train as finetune_lib

    shutil.rmtree(workdir, ignore_errors=True)
    timer = PhaseTimer()
    load, wall, cpu = load_average(), time.perf_counter(), cpu_seconds()
    with patched(timer), timer.phase("other"):
        result = finetune_lib.train_and_evaluate(config, workdir, encoder=encoder)
    return {
        "accuracy": result.eval_metrics["accuracy"],
        "seconds": time.perf_counter() - wall,
        "cpu_seconds": cpu_seconds() - cpu,
        "wall": timer.wall,
        "cpu": timer.cpu,
        "load_before": load,
        "load_after": load_average(),
    }


def section_phases(args, workdir: pathlib.Path, results: dict) -> None:
    from bert_jax.finetuning import train as finetune_lib

    task = args.tasks.split(",")[0]
    train, dev, n_train, n_dev = task_subsample(args, workdir, task)
    config = bert_jax_config(
        "classification", args, train, dev, minilm_dir(), vocab_file=str(VOCAB), packing=True,
        log_every_steps=args.log_every_steps, progress_bar=False,
    )  # fmt: skip
    encoder = finetune_lib.load_pretrained_encoder(config)
    per_epoch = steps_per_epoch(config, encoder)
    config.eval_every_steps = per_epoch if args.eval_every_steps < 0 else args.eval_every_steps
    every = config.eval_every_steps
    print(f"== {task}: {args.epochs:g} epochs of {per_epoch} steps, evaluation every {every} "
          f"steps ({n_train} train, {n_dev} dev)", flush=True)  # fmt: skip
    run = run_phases(config, workdir / "phases", encoder)
    run.update(task=task, train_examples=n_train, dev_examples=n_dev, steps_per_epoch=per_epoch,
               eval_every_steps=int(config.eval_every_steps))  # fmt: skip
    results["phases"] = run
    print(json.dumps(run, indent=1), flush=True)


# --- report ----------------------------------------------------------------------------------


def markdown(results: dict) -> str:
    lines = []
    host = results.get("host")
    if host:
        lines += [
            f"Host time, packed (load {host['load_before']} -> {host['load_after']}):",
            "",
            "| training rows | ms per step | CPU ms per step | ms per eval batch | packing s |",
            "|---:|---:|---:|---:|---:|",
        ]
        for run in host["runs"]:
            lines.append(
                f"| {run['rows']:,} | {run['step_ms']:.2f} | {run['step_cpu_ms']:.2f} | "
                f"{run['eval_batch_ms']:.2f} | {run['setup_s']:.2f} |"
            )
        lines.append(
            f"| **ratio** | **{host['step_ratio']:.2f}x** | {host['step_cpu_ratio']:.2f}x | "
            f"{host['eval_batch_ratio']:.2f}x | |"
        )
    run = results.get("phases")
    if run:
        parts = list(run["wall"])
        lines += [
            "",
            f"Whole run by phase, wall s (process CPU s), {run['task']}: {run['train_examples']} "
            f"train / {run['dev_examples']} dev, {run['steps_per_epoch']} steps per epoch, "
            f"evaluation every {run['eval_every_steps']} steps, load {run['load_before']} -> "
            f"{run['load_after']}:",
            "",
            "| phase | " + " | ".join(parts) + " | total |",
            "|---|" + "---:|" * (len(parts) + 1),
        ]
        for phase in (*PHASES, "total"):
            cells = []
            for part in (*parts, "total"):
                if part == "total" and phase == "total":
                    wall, cpu = run["seconds"], run["cpu_seconds"]
                elif part == "total":
                    wall = sum(run["wall"][p][phase] for p in parts)
                    cpu = sum(run["cpu"][p][phase] for p in parts)
                elif phase == "total":
                    wall, cpu = sum(run["wall"][part].values()), sum(run["cpu"][part].values())
                else:
                    wall, cpu = run["wall"][part][phase], run["cpu"][part][phase]
                cells.append(f"{wall:.1f} ({cpu:.1f})")
            lines.append(f"| {phase} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", default="runs/finetune_overheads")
    parser.add_argument("--sections", default="host,phases")
    parser.add_argument("--rows", default="10000,400000", help="host: training rows, compared")
    parser.add_argument("--host_steps", type=int, default=50, help="host: steps timed")
    parser.add_argument("--log_every_steps", type=int, default=50)
    parser.add_argument("--eval_every_steps", type=int, default=-1, help="-1: once per epoch")
    add_run_arguments(parser, train_examples=6000, max_seq_length=128)
    args = parser.parse_args(argv)
    sections = {
        "host": lambda args, workdir, results: section_host(args, results),
        "phases": section_phases,
    }
    return run_sections(args, "phases", sections, "phases", markdown)


if __name__ == "__main__":
    sys.exit(main())
