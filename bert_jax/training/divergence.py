"""A run whose loss or gradient norm became NaN or infinite stops before anything of it is saved.

The loops look at the per-step metrics where they fetch them to the host anyway: at each log and
before each checkpoint or best-model save (whose metrics are saved or compared), so the check adds
no device sync per step. The error names the first bad step and the last good checkpoint.
"""

from __future__ import annotations

import math

from bert_jax.errors import UserError


def non_finite(fetched: list[dict], last_step: int, keys) -> str | None:
    """'loss is nan at step 7' for the first of the fetched steps (the last is last_step) whose
    value under one of `keys` is NaN or infinite; None when all are finite."""
    first = last_step - len(fetched) + 1
    for offset, metrics in enumerate(fetched):
        for key in [k for k in keys if k in metrics]:
            value = float(metrics[key])
            if not math.isfinite(value):
                name = "loss" if key.endswith("loss_sum") else key.replace("_", " ")
                return f"{name} is {value} at step {first + offset}"
    return None


def stop_if_diverged(
    fetched: list[dict], last_step: int, keys, checkpoints, close=(), wait=()
) -> None:
    """Raises the one line a diverged run stops with when a fetched step's value under `keys` is
    NaN or infinite (non_finite), after closing `close` (progress bar, writer) and completing the
    saves in flight (of good steps) of `checkpoints` (the run's manager: `directory`,
    `latest_step()`, `wait()`) and of the managers in `wait`."""
    problem = non_finite(fetched, last_step, keys)
    if problem is None:
        return
    for thing in close:
        thing.close()
    for manager in (checkpoints, *wait):
        manager.wait()
    last_good = checkpoints.latest_step()
    if last_good is None:
        raise UserError(
            f"training diverged: {problem}, before any checkpoint was saved. Lower learning_rate "
            "(or check the data) and run again"
        )
    raise UserError(
        f"training diverged: {problem}; nothing from that step on was saved, the last good "
        f"checkpoint is {checkpoints.directory}/{last_good}. Lower learning_rate (or check the "
        "data), then rerun with --config.resume_with_changes=True to continue from it, or use a "
        "new workdir"
    )
