"""The training loop both pretraining and fine-tuning run: `run(loop, state, start_step)`.

Step metrics stay on the devices until a log fetches them together; compilation (the first step)
and evaluations are left out of throughput; SIGTERM or Ctrl-C stops the run after saving the
step; NaN or infinite metrics stop it before anything of theirs is saved (`divergence`). What
differs between the two loops comes as the fields of a `Loop`; see docs/design/training_loop.md.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

import jax
from tqdm.auto import tqdm

from bert_jax.training import distributed, divergence
from bert_jax.training.metrics import MetricWriter


@dataclasses.dataclass
class Timing:
    """The training time of the steps since the last log, compilation and evaluations left out."""

    steps: int  # timed steps (the first step of a run, mostly compilation, is not one)
    seconds: float
    counts: dict[str, float]  # the host counts train_step returned for the timed steps, summed

    @property
    def steps_per_sec(self) -> float:
        return self.steps / max(self.seconds, 1e-9) if self.steps else float("nan")


@dataclasses.dataclass
class Loop:
    """What a training loop does at each step, and what differs between pretraining and
    fine-tuning. Call-backs run on every process."""

    total_steps: int
    log_every: int
    eval_every: int  # 0: evaluate only after the last step
    checkpointer: Any  # checkpointing.Checkpointer (should_save, save, wait, directory, ...)
    workdir: Any  # where MetricWriter writes metrics.jsonl and TensorBoard
    divergence_keys: tuple[str, ...]  # per-step metrics whose NaN/inf stops the run
    # (state, step index) -> (state, device metrics, host counts for Timing.counts or None)
    train_step: Callable[[Any, int], tuple[Any, dict, dict | None]]
    # (fetched step metrics since the last log, their Timing) -> the scalars logged
    log_scalars: Callable[[list[dict], Timing], dict[str, float]]
    postfix: Callable[[dict], dict]  # logged scalars -> the progress bar's postfix
    # (state, step done) -> the scalars to log (may be {}); best-model saves happen here
    evaluate: Callable[[Any, int], dict[str, float]]
    data_state: Callable[[], Any] = lambda: None  # this process's data-iterator state to save
    rng: Any = None  # the run's dropout key, saved with each step
    desc: str = "train"  # the progress bar's label
    progress_bar: bool = True
    save_after_eval: bool = False  # also save the train state at every evaluated step
    stop_at_last_step: bool = True  # False: a stop requested at the last step is ignored
    announce_compile: bool = False  # print the first step's time (mostly compilation)


@dataclasses.dataclass
class Outcome:
    state: Any
    step: int  # the last step run
    stopped: bool  # by SIGTERM / Ctrl-C, after saving `step`


def run(loop: Loop, state, start_step: int, pending_metrics=()) -> Outcome:
    """Trains from start_step to loop.total_steps (or a requested stop), logging, evaluating and
    saving as `loop` says.

    Args:
      loop: the run's steps, call-backs and cadences.
      state: the train state at start_step.
      start_step: the number of steps already done (0, or a restored checkpoint's step).
      pending_metrics: the saved per-step metrics not yet logged at start_step, so a resumed
        run's logs average the same steps as an unbroken run's.

    Returns:
      The Outcome: the final state and step, and whether a stop request ended the run.
    """
    writer = MetricWriter(loop.workdir)
    checkpointer = loop.checkpointer
    is_main = jax.process_index() == 0
    pending = list(pending_metrics)
    step, stop = start_step, False
    # Throughput counts training only: the first step (compilation) and evaluations are left out.
    last_time, excluded, timed, compiled = time.perf_counter(), 0.0, 0, False
    counts: dict[str, float] = {}
    bar = tqdm(
        total=loop.total_steps,
        initial=start_step,
        desc=loop.desc,
        disable=not (loop.progress_bar and is_main),
        dynamic_ncols=True,
    )

    def fetch_and_check() -> list[dict]:
        fetched = jax.device_get(pending)
        divergence.stop_if_diverged(
            fetched, step, loop.divergence_keys, checkpointer, close=(bar, writer)
        )
        return fetched

    with distributed.PreemptionFlag() as preemption:
        while step < loop.total_steps:
            state, metrics, step_counts = loop.train_step(state, step)
            step += 1
            pending.append(metrics)
            if compiled:
                timed += 1
                for key, value in (step_counts or {}).items():
                    counts[key] = counts.get(key, 0.0) + value
            else:
                jax.block_until_ready(metrics)
                compiled, start = True, last_time
                last_time = time.perf_counter()
                if loop.announce_compile and is_main:
                    bar.write(f"compiled and ran the first train step in {last_time - start:.1f} s")
            bar.update(1)
            last = step == loop.total_steps
            if step % loop.log_every == 0 or last:
                fetched = fetch_and_check()
                elapsed = time.perf_counter() - last_time - excluded
                scalars = loop.log_scalars(fetched, Timing(timed, elapsed, counts))
                writer.write(step, scalars)
                bar.set_postfix(**loop.postfix(scalars))
                pending, last_time, excluded, timed, counts = [], time.perf_counter(), 0.0, 0, {}
            evaluated = last or (loop.eval_every > 0 and step % loop.eval_every == 0)
            if evaluated:
                pending = fetch_and_check()  # no diverged step is evaluated
                eval_start = time.perf_counter()
                eval_scalars = loop.evaluate(state, step)
                if eval_scalars:
                    writer.write(step, eval_scalars)
                    shown = " ".join(f"{k}={v:.4f}" for k, v in eval_scalars.items())
                    bar.write(f"step {step}: {shown}")
                excluded += time.perf_counter() - eval_start
            stop = distributed.stop_requested(step, preemption.requested)
            stop = stop and (loop.stop_at_last_step or not last)
            save = checkpointer.should_save(step) or last or stop
            if save or (loop.save_after_eval and evaluated):
                pending = fetch_and_check()  # no diverged step is saved
                checkpointer.save(
                    step,
                    state,
                    loop.data_state(),
                    rng=loop.rng,
                    pending_metrics=pending,
                    force=stop,
                )
            if stop:
                checkpointer.wait()
                bar.close()
                if is_main:
                    print(preemption.stop_message(step, checkpointer.directory))
                break
    bar.close()
    writer.close()
    return Outcome(state=state, step=step, stopped=stop)
