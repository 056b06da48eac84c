"""Checkpoint integrity that scales to pods and gs://: manifests, array fingerprints, markers.

`SealedManager` wraps an Orbax manager: each committed step gets `bert_jax_manifest.json`
(fingerprints of the arrays computed on their devices, CRCs of the small files); restoring
verifies only what it reads and marks a damaged step with `bert_jax_damaged.json`; old steps go
only after a newer one is committed; a failed save is retried, then raises `SaveFailed`.
See docs/design/checkpoints_and_sealing.md.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import os
import sys
import threading
import time
import traceback
import zlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from bert_jax.errors import SaveFailed, UserError
from bert_jax.paths import as_path
from bert_jax.training import distributed
from bert_jax.untrusted import MAX_JSON_BYTES, check_file_size, is_int

MANIFEST_NAME = "bert_jax_manifest.json"
DAMAGED_NAME = "bert_jax_damaged.json"
FORMAT = 2
# Orbax bookkeeping written or rewritten after the manifest; array values never depend on them.
_UNSEALED_FILES = frozenset({"_CHECKPOINT_METADATA", "commit_success.txt", MANIFEST_NAME})
_TMP_SUFFIX = ".orbax-checkpoint-tmp"
_READ_CHUNK = 1 << 22
SAVE_ATTEMPTS = 4  # of one step, when a save fails after the storage client's own retries
_RETRY_DELAYS = (1.0, 4.0, 16.0)  # seconds before the second, third and fourth attempt


class DamagedCheckpoint(Exception):
    """A step failed its checks; str() says why (one line)."""


# ---------------------------------------------------------------------------------------------
# Array fingerprints


def _bits(x) -> jax.Array:
    """The array's bits as uint32 (narrower types widened), same shape (+2 for 8-byte types)."""
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        x = jax.random.key_data(x)
    if x.dtype == jnp.bool_:
        x = x.astype(jnp.uint8)
    if x.dtype.itemsize == 8:
        return jax.lax.bitcast_convert_type(x, jnp.uint32)
    unsigned = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32}[x.dtype.itemsize]
    return jax.lax.bitcast_convert_type(x, unsigned).astype(jnp.uint32)


def _fingerprint(x) -> jax.Array:
    """[sum of the words, sum of word x (2 x flat index + 1)], uint32 with wrap-around.

    Integer sums do not depend on the reduction order, so any mesh gives the same numbers; a
    flipped bit always changes the first, swapped words change the second. No reshape: the
    array stays sharded as it is.
    """
    bits = _bits(x)
    index = jnp.zeros(bits.shape, jnp.uint32)
    stride = 1
    for dim in reversed(range(bits.ndim)):
        iota = jax.lax.broadcasted_iota(jnp.uint32, bits.shape, dim)
        index = index + iota * jnp.uint32(stride % 2**32)
        stride *= bits.shape[dim]
    weighted = bits * (index * jnp.uint32(2) + jnp.uint32(1))
    return jnp.stack([jnp.sum(bits, dtype=jnp.uint32), jnp.sum(weighted, dtype=jnp.uint32)])


@functools.lru_cache(maxsize=8)
def _fingerprint_fn(out_sharding):
    return jax.jit(
        lambda leaves: jnp.stack([_fingerprint(x) for x in leaves]), out_shardings=out_sharding
    )


def key_name(key) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def fingerprints(tree, prefix: str = "") -> dict[str, str]:
    """'prefix/a/b' -> hex fingerprint of every array leaf of tree (a collective when the arrays
    span processes: call on every process)."""
    flat = [
        (path, leaf)
        for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
        if hasattr(leaf, "dtype") and hasattr(leaf, "shape")
    ]
    if not flat:
        return {}
    shardings = [getattr(leaf, "sharding", None) for _, leaf in flat]
    mesh = next((s.mesh for s in shardings if isinstance(s, jax.sharding.NamedSharding)), None)
    replicated = None
    if mesh is not None:
        replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    leaves = [leaf if isinstance(leaf, jax.Array) else jnp.asarray(leaf) for _, leaf in flat]
    with jax.set_mesh(mesh) if mesh is not None else contextlib.nullcontext():
        values = np.asarray(jax.device_get(_fingerprint_fn(replicated)(leaves)))
    names = ["/".join([prefix] * bool(prefix) + [key_name(k) for k in path]) for path, _ in flat]
    return {name: f"{int(a):08x}{int(b):08x}" for name, (a, b) in zip(names, values, strict=True)}


# ---------------------------------------------------------------------------------------------
# Manifest, markers, checks


def _digest(path: epath.Path, limit: int | None = None) -> tuple[int, str]:
    """(size, CRC32) of a file; with `limit`, reads no more than that many bytes."""
    crc, size = 0, 0
    with path.open("rb") as f:
        while chunk := f.read(_READ_CHUNK if limit is None else min(_READ_CHUNK, limit - size)):
            crc = zlib.crc32(chunk, crc)
            size += len(chunk)
    return size, f"{crc:08x}"


def _small_files(step_dir: epath.Path, array_items) -> list[str]:
    """Relative paths of the files to CRC: all but the array items' directories and Orbax's
    late bookkeeping (an explicit walk: epath has no rglob)."""
    found, pending = [], [step_dir]
    while pending:
        for path in pending.pop().iterdir():
            if path.is_dir():
                if not (path.parent == step_dir and path.name in array_items):
                    pending.append(path)
            elif path.name not in _UNSEALED_FILES and path.name != DAMAGED_NAME:
                found.append(str(path.relative_to(step_dir)))
    return sorted(found)


def write_manifest(step_dir, step: int, arrays: dict[str, str] | None, array_items=()) -> None:
    """Seals a finished (not yet committed) step: array fingerprints and small-file CRCs.

    arrays None: no fingerprints; every file is CRC'd whole instead (as format 1)."""
    step_dir = as_path(step_dir)
    files = {}
    for name in _small_files(step_dir, frozenset(array_items)):
        size, crc = _digest(step_dir / name)
        files[name] = {"size": size, "crc32": crc}
    manifest = {"format": FORMAT, "step": int(step), "files": files, "arrays": arrays}
    (step_dir / MANIFEST_NAME).write_text(json.dumps(manifest, indent=1))


def read_manifest(step_dir) -> tuple[dict | None, str | None]:
    """(manifest, None) or (None, why the step cannot be trusted)."""
    step_dir = as_path(step_dir)
    marker = step_dir / DAMAGED_NAME
    if marker.exists():
        try:
            reason = json.loads(marker.read_text()).get("reason", "")
        except ValueError:
            reason = ""
        return None, f"marked damaged ({reason or DAMAGED_NAME})"
    path = step_dir / MANIFEST_NAME
    if not path.exists():
        return None, f"no {MANIFEST_NAME} (the save never completed)"
    try:  # bounded in size first: a checkpoint may come from elsewhere
        check_file_size(path, MAX_JSON_BYTES, MANIFEST_NAME)
        manifest = json.loads(path.read_text())
    except (UserError, ValueError, UnicodeDecodeError, RecursionError) as err:
        return None, f"{MANIFEST_NAME} is unreadable ({err})"
    # A checkpoint may come from elsewhere: the manifest's form is checked before it is used.
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        return None, f"{MANIFEST_NAME} is malformed (no 'files' object)"
    arrays = manifest.get("arrays")
    if arrays is not None and not (
        isinstance(arrays, dict) and all(isinstance(v, str) for v in arrays.values())
    ):
        return None, f"{MANIFEST_NAME} is malformed ('arrays' is not names -> fingerprints)"
    return manifest, None


def checkpoint_problem(step_dir) -> str | None:
    """None if the step is sealed, not marked damaged, and the files its manifest lists (the
    small ones; every file for format 1) are present with their size and CRC32. The arrays are
    checked when restored (`verify_arrays`)."""
    step_dir = as_path(step_dir)
    manifest, problem = read_manifest(step_dir)
    if problem is not None:
        return problem
    for name, expected in manifest["files"].items():
        problem = _file_problem(step_dir, name, expected)
        if problem is not None:
            return problem
    return None


def _file_problem(step_dir: epath.Path, name: str, expected) -> str | None:
    parts = name.split("/")
    valid = (
        not any(part in ("", ".", "..") for part in parts)
        and isinstance(expected, dict)
        and is_int(expected.get("size"))
        and expected["size"] >= 0
        and isinstance(expected.get("crc32"), str)
    )
    if not valid:  # names outside the step, or nonsense
        return f"{MANIFEST_NAME} has a malformed entry for {name[:100]!r}"
    path = step_dir / name
    if not path.exists():
        return f"{name} is missing"
    local = "://" not in str(path)  # epath calls a device such as /dev/zero a file
    if not (os.path.isfile(path) if local else path.is_file()):
        return f"{name} is not a regular file"
    size, crc = _digest(path, limit=expected["size"] + 1)
    if size < expected["size"]:
        return f"{name} is truncated ({size} of {expected['size']} bytes)"
    if size > expected["size"]:
        return f"{name} is longer than the {expected['size']} bytes recorded"
    if crc != expected["crc32"]:
        return f"{name} is corrupted (CRC32 {crc}, expected {expected['crc32']})"
    return None


def verify_arrays(step_dir, restored: dict[str, Any], manifest: dict | None = None) -> str | None:
    """None if every array restored matches its fingerprint in the manifest.

    restored: item name -> the tree restored from it (a subtree for a partial restore: only the
    arrays read are checked). A collective when the arrays span processes.
    """
    if manifest is None:
        manifest, problem = read_manifest(step_dir)
        if problem is not None:
            return problem
    saved = manifest.get("arrays")
    if saved is None:  # format 1: the files were checked whole
        return None
    for item, tree in restored.items():
        for name, value in fingerprints(tree, prefix=item).items():
            if name not in saved:
                return f"array {name} is not in {MANIFEST_NAME}"
            if saved[name] != value:
                return f"array {name} is corrupted (fingerprint {value}, saved {saved[name]})"
    return None


def mark_damaged(step_dir, reason: str) -> str:
    """Writes the marker (primary process; one object); returns what happened, for a message."""
    step_dir = as_path(step_dir)
    result = f"marked damaged ({step_dir / DAMAGED_NAME})"
    if jax.process_index() == 0:
        try:
            (step_dir / DAMAGED_NAME).write_text(json.dumps({"reason": reason}) + "\n")
        except OSError as err:
            result = f"could not be marked damaged ({err}); it is skipped all the same"
    distributed.barrier("bert_jax_mark_damaged")
    return result


def agreed_problem(problem: str | None) -> str | None:
    """Every process's verdict combined: damaged for all if damaged for one."""
    if distributed.all_processes(problem is None):
        return None
    return problem or "another process found it damaged"


def error_line(err: Exception) -> str:
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text[:300]}"


# ---------------------------------------------------------------------------------------------
# A sealed Orbax CheckpointManager


@dataclasses.dataclass
class _Sealing:
    step: int
    arrays: dict[str, str]


class _NoTracebacks(logging.Filter):
    """Drops the tracebacks Orbax, gcsfs and fsspec log for a failed save or read: SealedManager
    reports each failure itself, in one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        source = record.name.split(".")[0] in ("gcsfs", "fsspec")
        source = source or f"{os.sep}orbax{os.sep}" in record.pathname
        # Orbax also logs a failed write's exception with its traceback folded into the message.
        folded = "Traceback (most recent call last)" in record.getMessage()
        return not (source and (record.exc_info or folded))


def _quiet_save_tracebacks() -> None:
    from absl import logging as absl_logging

    # Orbax logs through absl; fsspec's records come from child loggers: the handler sees them.
    handler = absl_logging.get_absl_handler()
    for where in (logging.getLogger("absl"), logging.getLogger("gcsfs"), handler):
        if not any(isinstance(f, _NoTracebacks) for f in where.filters):
            where.addFilter(_NoTracebacks())


def _quiet_stray_completions() -> None:
    """After a failed save, tensorstore completes the writes it still had in flight and reports
    each to an asyncio loop Orbax has closed; Python prints the error as a traceback (an
    unraisable exception). Those are dropped; everything else reaches the previous hook."""
    previous = sys.unraisablehook
    if getattr(previous, "bert_jax_stray_completions", False):
        return

    def hook(unraisable) -> None:
        frames = traceback.extract_tb(unraisable.exc_traceback)
        stray = isinstance(unraisable.exc_value, RuntimeError) and frames
        stray = stray and str(unraisable.exc_value) == "Event loop is closed"
        if not (stray and frames[0].name == "call_soon_threadsafe"):
            previous(unraisable)

    hook.bert_jax_stray_completions = True
    sys.unraisablehook = hook


def _operation_id() -> str | None:
    """The id Orbax gave the save just started (its threads wait for signals under it)."""
    try:
        from orbax.checkpoint._src.futures import synchronization

        return synchronization.OperationIdGenerator.get_current_operation_id()
    except (ImportError, AttributeError):
        return None


def _release_waiters(operation_id: str | None) -> None:
    """A failed save leaves Orbax threads waiting 300 s for a signal that never comes (and the
    interpreter waits for them at exit), and may leave one still creating the step's directory
    (which empties it): they are cancelled, signalled and joined. One process only (in a
    multi-process job the signal would reach the other processes' threads before they are
    cancelled: they time out instead)."""
    if operation_id is None or jax.process_count() > 1:
        return
    try:
        from orbax.checkpoint._src.futures import future as orbax_future

        threads = [
            thread
            for thread in threading.enumerate()
            if isinstance(thread, orbax_future._SignalingThread)
            and thread._operation_id == operation_id
        ]
        for thread in threads:
            thread.cancel()
            orbax_future.set_signals(thread._receive_signals, operation_id=operation_id)
    except (ImportError, AttributeError):  # another Orbax: its threads time out by themselves
        return
    # Those still writing (the step's directory) finish before the step is written again.
    for thread in threads:
        threading.Thread.join(thread, timeout=120)


def _arrays_alive(items: dict[str, Any]) -> bool:
    """False once any array of a save's items was deleted (donated to a later train step)."""
    leaves = jax.tree.leaves([getattr(arg, "item", None) for arg in items.values()])
    return not any(isinstance(x, jax.Array) and x.is_deleted() for x in leaves)


@functools.cache
def _whole_shards_on_cpu() -> None:
    """On CPU, Orbax writes each array from one replica, whole. Its default (replica-parallel:
    every replica slices off a part, one dispatched op per part) spreads device-to-host copies
    over accelerators; CPU devices share the host's memory, so the slicing is all it adds: on 8
    host devices, most of a small model's save time."""
    if jax.default_backend() == "cpu":
        from orbax.checkpoint._src.metadata import array_metadata_store  # as Orbax's default

        handler = ocp.type_handlers.ArrayHandler(
            array_metadata_store=array_metadata_store.Store(), use_replica_parallel=False
        )
        ocp.type_handlers.register_type_handler(jax.Array, handler, override=True)


class SealedManager:
    """An Orbax CheckpointManager whose steps are sealed and verified (module docstring).

    items: item name -> Orbax handler; StandardCheckpointHandler items are the array items
    (fingerprinted), the others are small files (CRC32). Call every method on every process.
    The manager is asynchronous: `save` returns once the arrays are copied off the devices;
    `wait()` blocks until the step is committed. A save found failed is saved again: by `wait`
    with the same arrays, by the next `save` with its own (then waiting for it), up to
    SAVE_ATTEMPTS times; then SaveFailed.
    """

    def __init__(
        self,
        directory,
        items: dict[str, Any],
        *,
        max_to_keep: int | None = 1,
        best_fn=None,
        best_mode: str = "max",
        keep_checkpoints_without_metrics: bool = True,
        create: bool = True,
    ):
        self.directory = as_path(directory)
        self.array_items = frozenset(
            name for name, h in items.items() if isinstance(h, ocp.StandardCheckpointHandler)
        )
        self._sealing: _Sealing | None = None
        self._in_flight = None  # (step, items, metrics) of the save not yet known committed
        _quiet_save_tracebacks()
        _quiet_stray_completions()
        _whole_shards_on_cpu()
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep,
            best_fn=best_fn,
            best_mode=best_mode,
            keep_checkpoints_without_metrics=keep_checkpoints_without_metrics,
            enable_async_checkpointing=True,  # post_finalization_callback needs it
            cleanup_tmp_directories=True,  # leftovers of saves that were killed mid-write
            async_options=ocp.AsyncOptions(post_finalization_callback=self._seal),
            create=create,
        )
        self._options, self._handlers, self._stale = options, items, False
        self._operation = None  # Orbax's id of the last save started
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_handlers=items)
        self._committed = list(self.manager.all_steps())  # as of the last save that committed

    def _seal(self) -> None:
        """Runs on the primary process after every process wrote its files, before the commit."""
        sealing = self._sealing
        tmp_dir = self.directory / f"{sealing.step}{_TMP_SUFFIX}"
        step_dir = tmp_dir if tmp_dir.exists() else self.directory / str(sealing.step)
        write_manifest(step_dir, sealing.step, sealing.arrays, self.array_items)

    def step_dir(self, step: int) -> epath.Path:
        return self.directory / str(step)

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def problem(self, step: int) -> str | None:
        """The cheap checks (marker, manifest, small files), agreed by every process."""
        return agreed_problem(checkpoint_problem(self.step_dir(step)))

    def save(self, step: int, items: dict[str, Any], metrics=None) -> bool:
        """Starts an asynchronous save of ocp.args per item; False if `step` is already saved
        intact. A step marked damaged or never sealed is deleted and written anew. When the
        previous save failed, this one is waited for (and retried); raises SaveFailed."""
        failed = self._settle()  # _seal must see the step it belongs to
        if failed is not None:
            self._report(failed[0], failed[1], f"saving step {step} now and waiting for it")
            self._renew()
        if step in self.manager.all_steps():
            if self.problem(step) is None:
                return False
            self._delete(step)
        if failed is not None:
            return self._save_until_committed(step, items, metrics)
        problem = self._start(step, items, metrics)
        if problem is not None:
            self._abandon()
            self._report(step, problem, "retrying")
            return self._save_until_committed(step, items, metrics, attempts=1)
        return True

    def _start(self, step: int, items: dict[str, Any], metrics) -> str | None:
        """Starts the save; None, or why it failed at once (agreed by every process)."""
        arrays = {}
        for name, arg in items.items():
            if name in self.array_items:
                arrays.update(fingerprints(arg.item, prefix=name))
        self._sealing = _Sealing(int(step), arrays)
        self._in_flight = (int(step), items, metrics)
        problem = None
        try:  # force: Orbax's own policy would skip a step while a previous save is in flight.
            self.manager.save(step, args=ocp.args.Composite(**items), metrics=metrics, force=True)
        except Exception as err:  # noqa: BLE001 (tensorstore, gcsfs and Orbax raise many kinds)
            problem = error_line(err)
        self._operation = _operation_id()
        return _agreed_failure(problem)

    def _settle(self) -> tuple[int, str] | None:
        """Waits for the save in flight: None if it committed (or none was), else (its step,
        why it failed), agreed by every process."""
        in_flight, self._in_flight = self._in_flight, None
        problem = _agreed_failure(self._drain_errors())
        if problem is None:
            self._committed = list(self.manager.all_steps())
            return None
        _release_waiters(self._operation)
        self._stale = True
        self._in_flight = in_flight
        return (in_flight[0] if in_flight else -1), problem

    def _drain_errors(self) -> str | None:
        """Waits for Orbax's background work; the first of its errors, each raised once (one per
        failed metadata write: all are drained, or the next save would raise them)."""
        problem = None
        try:
            self.manager.wait_until_finished()
        except Exception as err:  # noqa: BLE001 (tensorstore, gcsfs and Orbax raise many kinds)
            problem = error_line(err)
        for _ in range(1000):
            try:
                self.manager.check_for_errors()
                break
            except Exception as err:  # noqa: BLE001
                problem = problem or error_line(err)
        return problem

    def _abandon(self) -> None:
        """After a save that failed as it started: its background work drained, Orbax's waiting
        threads released, and a fresh manager for the next attempt (`_renew`)."""
        self._drain_errors()
        _release_waiters(self._operation)
        self._stale = True

    def _save_until_committed(self, step: int, items, metrics, attempts: int = 0) -> bool:
        """Saves `step` and waits, again after each failure (`attempts` already made), up to
        SAVE_ATTEMPTS in all; raises SaveFailed naming the step and the last error."""
        problem = None
        while attempts < SAVE_ATTEMPTS:
            if attempts:
                time.sleep(_RETRY_DELAYS[min(attempts, len(_RETRY_DELAYS)) - 1])
            attempts += 1
            self._renew()
            problem = self._start(step, items, metrics)
            if problem is None:
                failed = self._settle()
                problem = failed[1] if failed else self._unsealed(step)
                if problem is None:
                    return True
            else:
                self._abandon()
            if attempts < SAVE_ATTEMPTS:
                self._report(step, problem, f"attempt {attempts} of {SAVE_ATTEMPTS}; retrying")
        self._in_flight = None
        raise SaveFailed(self._failure_line(step, problem, attempts))

    def _unsealed(self, step: int) -> str | None:
        """None if the committed step is sealed too (a step without its manifest is never
        restored); else why not, and the step is deleted, to be written again."""
        problem = None
        try:
            problem = self.problem(step)
            if problem is not None:
                self._delete(step)
        except Exception as err:  # noqa: BLE001
            problem = problem or error_line(err)
            self._stale = True
        return problem

    def _renew(self) -> bool:
        """After a failed save, a fresh Orbax manager: the old one keeps failed metadata writes
        to raise at later saves, and has dropped from its list the steps the failed save was to
        replace (they are still there). False while the storage does not answer.

        The new manager deletes the failed save's temporary directory in a background thread,
        which Orbax awaits only at its next save; it is awaited here, so that no deletion
        outlives a failed save (a run that stops, or a new Checkpointer saving the same step)."""
        if not self._stale:
            return True
        try:
            self.manager = ocp.CheckpointManager(
                self.directory, options=self._options, item_handlers=self._handlers
            )
        except Exception:  # noqa: BLE001
            return False
        # Orbax has no public way to wait for it; an Orbax that renames it raises here, rather
        # than reading as storage that does not answer.
        wait_for_cleanup = self.manager._maybe_await_cleanup_tmp_directory
        try:
            wait_for_cleanup()
        except Exception:  # noqa: BLE001
            return False
        self._stale = False
        return True

    def _failure_line(self, step: int, problem: str, attempts: int) -> str:
        listed = self.manager.all_steps() if self._renew() else self._committed
        intact = [s for s in listed if s != step]
        kept = (
            f"the newest checkpoint, {self.step_dir(max(intact))}, is intact: run the same "
            "command to resume from it"
            if intact
            else "no earlier checkpoint: a new run starts from step 0"
        )
        return (
            f"checkpoint {self.step_dir(step)} could not be saved ({attempts} attempts; "
            f"last: {problem}); the run stopped; {kept}"
        )

    def _report(self, step: int, problem: str, what: str) -> None:
        if jax.process_index() == 0:
            print(f"checkpoint {self.step_dir(step)} not saved: {problem}; {what}", flush=True)

    def _delete(self, step: int) -> None:
        """Removes a damaged step; the manifest goes first, so an interrupted delete leaves a step
        that reads as never completed, not one that looks intact."""
        if jax.process_index() == 0:
            (self.step_dir(step) / MANIFEST_NAME).unlink(missing_ok=True)
        distributed.barrier("bert_jax_unseal")
        self.manager.delete(step)

    def restore(self, step: int, items) -> dict:
        """The step's items, verified; raises DamagedCheckpoint.

        items: ocp.args per item, or a function of the step returning them (called only once
        the cheap checks passed, e.g. to compare the saved shapes with the model's first).
        """
        problem = self.problem(step)
        if problem is not None:
            raise DamagedCheckpoint(problem)
        restored = None
        try:
            args = items(step) if callable(items) else items
            restored = self.manager.restore(step, args=ocp.args.Composite(**args))
        except UserError:
            raise
        except Exception as err:  # noqa: BLE001 (tensorstore/Orbax raise many kinds)
            problem = f"it could not be read ({error_line(err)})"
        # Agreed before fingerprinting: that is a collective every process must join.
        problem = agreed_problem(problem)
        if problem is None:
            arrays = {name: restored[name] for name in args if name in self.array_items}
            problem = agreed_problem(verify_arrays(self.step_dir(step), arrays))
        if problem is not None:
            raise DamagedCheckpoint(problem)
        return restored

    def mark_damaged(self, step: int, reason: str) -> str:
        return mark_damaged(self.step_dir(step), reason)

    def restore_newest(self, items, step: int | None = None):
        """(step, restored items) of the newest intact step, or None when there is none.

        items: as for `restore`. Damaged steps are marked and reported with one printed line
        each; an explicit `step` that is damaged is a UserError.
        """
        steps = sorted(self.manager.all_steps(), reverse=True)
        if step is not None:
            if step not in steps:
                raise UserError(f"{self.directory}: no checkpoint at step {step}; have {steps}")
            steps = [step]
        for candidate in steps:
            try:
                return candidate, self.restore(candidate, items)
            except DamagedCheckpoint as damaged:
                where = self.step_dir(candidate)
                if step is not None:
                    raise UserError(f"checkpoint {where} is damaged: {damaged}") from None
                note = "" if str(damaged).startswith("marked damaged") else "; "
                if note:
                    note += self.mark_damaged(candidate, str(damaged))
                if jax.process_index() == 0:
                    print(
                        f"checkpoint {where} not loaded: {damaged}{note}; "
                        "falling back to an older checkpoint",
                        flush=True,
                    )
        return None

    def wait(self) -> None:
        """Blocks until the last save is committed; a failed one is saved again with the same
        arrays (they are still alive: no train step ran since). Raises SaveFailed."""
        failed = self._settle()
        if failed is None:
            return
        step, problem = failed
        items, metrics = self._in_flight[1:] if self._in_flight else (None, None)
        if items is None or not _arrays_alive(items):
            self._in_flight = None
            raise SaveFailed(self._failure_line(step, problem, 1))
        self._report(step, problem, f"attempt 1 of {SAVE_ATTEMPTS}; retrying")
        self._save_until_committed(step, items, metrics, attempts=1)

    def close(self) -> None:
        self.wait()
        self.manager.close()


def _agreed_failure(problem: str | None) -> str | None:
    """Every process's outcome of a save combined: failed for all if failed for one."""
    if distributed.all_processes(problem is None):
        return None
    return problem or "it failed on another process"
