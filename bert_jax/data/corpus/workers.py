"""Running the units on one machine: in this process (1 worker) or in N worker processes.

Each worker tokenizes single-threaded and writes its units' shards itself, so N workers use N
cores; the parent hands out units one at a time (the next to whoever is free), keeps the progress
bar (bytes read, over all workers) and collects the counts. Workers are fresh interpreters
(`python -c "...workers import _serve; _serve(FD)"`) talking over a socket: nothing is forked from a
parent that may run JAX threads, and a script that calls `prepare` needs no
`if __name__ == "__main__"` guard (multiprocessing's spawn would re-run it).
"""

from __future__ import annotations

import collections
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import traceback
from collections.abc import Sequence
from multiprocessing.connection import Connection, wait

import tqdm

from bert_jax.data.corpus.reader import Unit
from bert_jax.data.corpus.summary import peak_rss_bytes
from bert_jax.data.corpus.writer import UnitTask
from bert_jax.errors import UserError

_PROGRESS_SECONDS = 0.2


def default_workers() -> int:
    """All cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return os.cpu_count() or 1


@contextlib.contextmanager
def _single_threaded_tokenizers():
    """TOKENIZERS_PARALLELISM=false meanwhile: one core per worker."""
    previous = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    try:
        yield
    finally:
        if previous is None:
            del os.environ["TOKENIZERS_PARALLELISM"]
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = previous


class _Worker:
    def __init__(self, task: UnitTask):
        parent, child = socket.socketpair()
        package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
        env = dict(os.environ, TOKENIZERS_PARALLELISM="false")
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
        self.process = subprocess.Popen(
            [sys.executable, "-c", f"from {__name__} import _serve; _serve({child.fileno()})"],
            pass_fds=[child.fileno()],
            env=env,
        )
        child.close()
        self.connection = Connection(parent.detach())
        self.connection.send(task)
        self.unit: Unit | None = None

    def give(self, unit: Unit | None) -> None:
        self.unit = unit
        self.connection.send(unit)

    def close(self, kill: bool) -> None:
        if kill and self.process.poll() is None:
            self.process.kill()
        self.connection.close()
        self.process.wait()


def run_units(
    task: UnitTask, units: Sequence[Unit], num_workers: int, show_progress: bool
) -> tuple[list[dict], int]:
    """Runs every unit; returns their results in unit order and the peak memory of all
    processes together (each worker's peak added to this process's)."""
    num_workers = max(1, min(num_workers, len(units)))
    bar = tqdm.tqdm(
        total=sum(u.size for u in units),
        unit="B",
        unit_scale=True,
        desc=f"tokenizing ({num_workers} worker{'s' if num_workers > 1 else ''})",
        disable=not show_progress,
        dynamic_ncols=True,
    )
    with bar:
        if num_workers == 1:
            with _single_threaded_tokenizers():
                return [task(unit, on_bytes=bar.update) for unit in units], peak_rss_bytes()
        results: dict[int, dict] = {}
        queue = collections.deque(units)
        pool = [_Worker(task) for _ in range(num_workers)]
        failed = True
        try:
            for worker in pool:
                worker.give(queue.popleft())
            while len(results) < len(units):
                for connection in wait([w.connection for w in pool if w.unit is not None]):
                    worker = next(w for w in pool if w.connection is connection)
                    kind, value = _receive(worker)
                    if kind == "bytes":
                        bar.update(value)
                    elif kind == "done":
                        results[value["unit"]] = value
                        worker.give(queue.popleft() if queue else None)
                    else:
                        _raise(worker.unit, value)
            failed = False
        finally:
            for worker in pool:
                worker.close(kill=failed)
    ordered = [results[u.index] for u in units]
    peaks: dict[int, int] = {}
    for result in ordered:
        peaks[result["pid"]] = max(peaks.get(result["pid"], 0), result["peak_rss"])
    return ordered, peak_rss_bytes() + sum(peaks.values())


def _receive(worker: _Worker):
    try:
        return worker.connection.recv()
    except EOFError:
        code = worker.process.wait()
        raise RuntimeError(
            f"a tokenizing worker died (exit status {code}) on {_where(worker.unit)}"
        ) from None


def _where(unit: Unit | None) -> str:
    return "?" if unit is None else f"{unit.path} bytes {unit.start}-{unit.stop}"


def _raise(unit: Unit | None, error: tuple[bool, str]):
    is_user_error, message = error
    if is_user_error:
        raise UserError(message)
    raise RuntimeError(f"tokenizing {_where(unit)} failed:\n{message}")


def _serve(fd: int) -> None:
    """A worker: receives the task, then units until None; sends progress and results."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops us
    connection = Connection(fd)
    task: UnitTask = connection.recv()
    pending, last = 0, time.monotonic()

    def on_bytes(count: int) -> None:
        nonlocal pending, last
        pending += count
        if time.monotonic() - last > _PROGRESS_SECONDS:
            connection.send(("bytes", pending))
            pending, last = 0, time.monotonic()

    while (unit := connection.recv()) is not None:
        try:
            result = task(unit, on_bytes=on_bytes)
        except Exception as err:  # reported by the parent, with the unit it was reading
            detail = str(err) if isinstance(err, UserError) else traceback.format_exc()
            connection.send(("error", (isinstance(err, UserError), detail)))
            return
        if pending:
            connection.send(("bytes", pending))
            pending = 0
        connection.send(("done", result))
