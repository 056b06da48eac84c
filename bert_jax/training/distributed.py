"""Multi-process start-up: `jax.distributed.initialize()` when the job runs as several processes.

A job is multi-process when launched so (BERT_JAX_* env vars, `srun` with several tasks, a
multi-host Cloud TPU slice), single-process otherwise, so one command runs on a laptop, a SLURM
cluster and a TPU pod. Preemption: `stop_requested` stops every process at the same step;
`PreemptionFlag` stops (and saves) a single process on SIGTERM or the first Ctrl-C.
See docs/design/multihost_and_sharding.md.
"""

from __future__ import annotations

import os
import signal

import jax

from bert_jax.errors import UserError

_initialized = False


def multiprocess_launch(env=None) -> str | None:
    """Why this process belongs to a multi-process job, or None for a single-process run."""
    env = os.environ if env is None else env
    if env.get("BERT_JAX_COORDINATOR"):
        return f"BERT_JAX_COORDINATOR={env['BERT_JAX_COORDINATOR']}"
    if env.get("BERT_JAX_DISTRIBUTED", "") not in ("", "0"):
        return "BERT_JAX_DISTRIBUTED"
    slurm_tasks = env.get("SLURM_STEP_NUM_TASKS") or env.get("SLURM_NTASKS") or "1"
    if "SLURM_STEP_ID" in env and int(slurm_tasks) > 1:
        return f"SLURM step with {slurm_tasks} tasks"
    tpu_hosts = env.get("TPU_WORKER_HOSTNAMES", "").split(",")
    if len(tpu_hosts) > 1 and all(h and not any(c.isspace() for c in h) for h in tpu_hosts):
        return f"Cloud TPU slice of {len(tpu_hosts)} hosts"
    if env.get("MEGASCALE_COORDINATOR_ADDRESS"):
        return "multi-slice Cloud TPU"
    return None


def _explicit_int(name: str) -> int:
    value = os.environ.get(name, "")
    if not value.isdigit():
        raise UserError(
            f"BERT_JAX_COORDINATOR is set but {name}={value!r} is not a non-negative integer; "
            "set BERT_JAX_NUM_PROCESSES and BERT_JAX_PROCESS_ID for every process"
        )
    return int(value)


def initialize_if_needed() -> bool:
    """Initialises jax.distributed once when launched as several processes; True if it did.

    Must run before anything touches a JAX backend (device lists, arrays).
    """
    global _initialized
    reason = multiprocess_launch()
    if _initialized or reason is None:
        return _initialized
    # Gloo carries cross-process collectives between CPU devices (tests, CPU clusters);
    # accelerators use their own interconnect whatever this says.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if os.environ.get("BERT_JAX_COORDINATOR"):
        num_processes = _explicit_int("BERT_JAX_NUM_PROCESSES")
        process_id = _explicit_int("BERT_JAX_PROCESS_ID")
        if process_id >= num_processes:
            raise UserError(
                f"BERT_JAX_PROCESS_ID {process_id} must be below BERT_JAX_NUM_PROCESSES "
                f"{num_processes}"
            )
        jax.distributed.initialize(
            coordinator_address=os.environ["BERT_JAX_COORDINATOR"],
            num_processes=num_processes,
            process_id=process_id,
        )
    else:
        jax.distributed.initialize()  # JAX reads SLURM / Cloud TPU / MPI settings itself
    _initialized = True
    if jax.process_index() == 0:
        print(
            f"jax.distributed: {jax.process_count()} processes, {jax.device_count()} devices "
            f"({reason})",
            flush=True,
        )
    return True


def barrier(name: str) -> None:
    """Blocks until every process reaches the barrier of this name (no-op single-process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def all_processes(flag: bool) -> bool:
    """True when `flag` is true on every process (a collective when multi-process)."""
    if jax.process_count() == 1:
        return bool(flag)
    import numpy as np
    from jax.experimental import multihost_utils

    return bool(np.min(multihost_utils.process_allgather(np.asarray(bool(flag), np.int32))))


_interrupted_by_user = False  # set by the last PreemptionFlag that stopped on Ctrl-C


def interrupted_by_user() -> bool:
    """True when the last training loop stopped because of Ctrl-C (the CLIs then exit 130)."""
    return _interrupted_by_user


class PreemptionFlag:
    """`requested` turns True on SIGTERM (how Cloud TPU and SLURM preempt) or on the first Ctrl-C
    (SIGINT), so a training loop can finish its step, save and stop; pass it to
    `stop_requested` at every step and end with `stop_message`. A second Ctrl-C raises
    KeyboardInterrupt at once (the CLIs then exit without saving; a notebook gets its usual
    interrupt).

    A context manager that installs the handlers and restores the previous ones. Multi-process
    jobs install none: JAX's preemption sync service owns SIGTERM there, and Ctrl-C keeps its
    default meaning (stop now) since the processes could not agree on a step to save.
    """

    def __init__(self):
        self.requested = False
        self.signal_name: str | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self):
        global _interrupted_by_user
        _interrupted_by_user = False
        if jax.process_count() > 1:
            return self
        try:
            for signum in (signal.SIGTERM, signal.SIGINT):
                self._previous[signum] = signal.signal(signum, self._handle)
        except ValueError:  # not the main thread (e.g. a notebook's background thread)
            self._restore()
        return self

    def _handle(self, signum, frame):
        if signum == signal.SIGINT and self.signal_name == "SIGINT":
            self._restore()  # the second Ctrl-C: stop now, save nothing
            raise KeyboardInterrupt
        if self.signal_name is None:
            self.signal_name = signal.Signals(signum).name
        self.requested = True

    def stop_message(self, step: int, directory) -> str:
        """The one line a loop prints when it stopped on request, after saving."""
        global _interrupted_by_user
        _interrupted_by_user = self.signal_name == "SIGINT"
        why = "interrupted (Ctrl-C)" if _interrupted_by_user else "preempted"
        return f"{why}: saved step {step} to {directory}; exiting"

    def _restore(self):
        for signum, previous in self._previous.items():
            if previous is not None:
                signal.signal(signum, previous)
        self._previous = {}

    def __exit__(self, *exc):
        self._restore()


def stop_requested(step: int, local_flag: bool) -> bool:
    """True on every process at the same step once any of them was asked to stop (SIGTERM).

    Single-process: the local SIGTERM flag (a Python signal handler). Multi-process: JAX's
    preemption sync service, which catches SIGTERM itself (so no Python handler may replace
    its) and agrees on a step without a collective per step; call it at every step on every
    process.
    """
    if jax.process_count() == 1:
        return local_flag
    from jax.experimental import multihost_utils

    return bool(multihost_utils.reached_preemption_sync_point(step))
