"""Orbax checkpoints: the train state, every process's data-iterator state, the rng and the config.

WORKDIR/checkpoints/<step>/
  state/          TrainState (step, params, opt_state), sharded arrays
  data_iterator/  JSON: every process's iterator state, in process order
  loop/           JSON: the base dropout rng and the per-step metrics not yet logged
  config/         JSON: the run's config
  bert_jax_manifest.json

Saves are asynchronous. Orbax writes each step into `<step>.orbax-checkpoint-tmp` and renames it
when every process has finished; just before the rename we record the size and CRC32 of every
file in `bert_jax_manifest.json`. Orbax itself does not notice flipped bytes in array data (it
restores them silently), so a step is only loaded after its files match the manifest; a step
without one was never completed. Damaged steps are moved to WORKDIR/damaged_checkpoints/ with
one printed line and the next older one is tried. Old steps are deleted only after a newer one is
sealed, so the last good checkpoint always survives an interrupted save. Checking reads every
file once (CRC32 runs at over 1 GB/s), on process 0 only.

`load_params_for_init` reads only the parameter tree, from a bert_jax checkpoint or a Hugging
Face BERT directory, for continued pretraining and fine-tuning. Nothing here unpickles.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import zlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from bert_jax.errors import UserError
from bert_jax.untrusted import is_int, read_json_object, shown

MANIFEST_NAME = "bert_jax_manifest.json"
# Orbax bookkeeping rewritten after the manifest is sealed; array values never depend on them.
_UNSEALED_FILES = frozenset({"_CHECKPOINT_METADATA", "commit_success.txt", MANIFEST_NAME})
_TMP_SUFFIX = ".orbax-checkpoint-tmp"
_READ_CHUNK = 1 << 22
_MAX_LISTED_PATHS = 20


@dataclasses.dataclass
class Restored:
    """What `Checkpointer.restore` returns; data_state is this process's iterator state."""

    step: int
    state: Any
    data_state: Any
    rng: jax.Array | None
    pending_metrics: list[dict] | None  # per-step metrics since the last log, not yet written


# ---------------------------------------------------------------------------------------------
# Integrity manifest


def _as_path(path) -> epath.Path:
    text = os.fspath(path)
    return epath.Path(text if "://" in text else os.path.abspath(text))


def _digest(path: epath.Path, limit: int | None = None) -> tuple[int, str]:
    """(size, CRC32) of a file; with `limit`, reads no more than that many bytes."""
    crc, size = 0, 0
    with path.open("rb") as f:
        while chunk := f.read(_READ_CHUNK if limit is None else min(_READ_CHUNK, limit - size)):
            crc = zlib.crc32(chunk, crc)
            size += len(chunk)
    return size, f"{crc:08x}"


def _sealed_files(step_dir: epath.Path) -> list[str]:
    """Relative paths of the files the manifest covers (an explicit walk: epath has no rglob)."""
    found, pending = [], [step_dir]
    while pending:
        for path in pending.pop().iterdir():
            if path.is_dir():
                pending.append(path)
            elif path.name not in _UNSEALED_FILES:
                found.append(str(path.relative_to(step_dir)))
    return sorted(found)


def write_manifest(step_dir, step: int) -> None:
    """Records size and CRC32 of every file of a finished (not yet renamed) step directory."""
    step_dir = _as_path(step_dir)
    files = {}
    for name in _sealed_files(step_dir):
        size, crc = _digest(step_dir / name)
        files[name] = {"size": size, "crc32": crc}
    manifest = {"format": 1, "step": int(step), "files": files}
    (step_dir / MANIFEST_NAME).write_text(json.dumps(manifest, indent=1))


def checkpoint_problem(step_dir) -> str | None:
    """None if every file listed in the step's manifest is present with its size and CRC32."""
    step_dir = _as_path(step_dir)
    manifest_path = step_dir / MANIFEST_NAME
    if not manifest_path.exists():
        return f"no {MANIFEST_NAME} (the save never completed)"
    try:
        files = read_json_object(manifest_path, MANIFEST_NAME).get("files")
    except UserError as err:
        return f"{MANIFEST_NAME} is unreadable ({err})"
    if not isinstance(files, dict):
        return f"{MANIFEST_NAME} lists no files"
    for name, expected in files.items():
        problem = _manifest_entry_problem(step_dir, name, expected)
        if problem is not None:
            return problem
    return None


def _manifest_entry_problem(step_dir: epath.Path, name, expected) -> str | None:
    """A manifest from elsewhere may name files outside the step or a device that never ends."""
    parts = name.split("/") if isinstance(name, str) else []
    valid = (
        parts
        and not any(part in ("", ".", "..") for part in parts)
        and isinstance(expected, dict)
        and is_int(expected.get("size"))
        and expected["size"] >= 0
        and isinstance(expected.get("crc32"), str)
    )
    if not valid:
        return f"{MANIFEST_NAME} has a malformed entry {shown(name)}: {shown(expected)}"
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


# ---------------------------------------------------------------------------------------------
# Train-state checkpoints


class Checkpointer:
    """Saves and restores pretraining runs under WORKDIR/checkpoints; call every method on every
    process (saves and restores are collective)."""

    def __init__(self, workdir, every_steps: int, keep: int, config=None):
        self.directory = _as_path(workdir) / "checkpoints"
        self.every_steps = int(every_steps)
        self.config_json = json.loads(config.to_json()) if config is not None else {}
        self._sealing_step: int | None = None
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max(int(keep), 1),
            enable_async_checkpointing=True,
            cleanup_tmp_directories=True,  # leftovers of saves that were killed mid-write
            async_options=ocp.AsyncOptions(post_finalization_callback=self._seal),
            create=True,
        )
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=options,
            item_handlers={
                "state": ocp.StandardCheckpointHandler(),
                "data_iterator": ocp.JsonCheckpointHandler(),
                "loop": ocp.JsonCheckpointHandler(),
                "config": ocp.JsonCheckpointHandler(),
            },
        )

    def _seal(self) -> None:
        """Runs on the primary process after every process wrote its files, before the rename."""
        step = self._sealing_step
        tmp_dir = self.directory / f"{step}{_TMP_SUFFIX}"
        write_manifest(tmp_dir if tmp_dir.exists() else self.directory / str(step), step)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def should_save(self, step: int) -> bool:
        return self.every_steps > 0 and step % self.every_steps == 0

    def save(
        self, step: int, state, data_state=None, *, rng=None, pending_metrics=None, force=False
    ) -> bool:
        """Starts an asynchronous save of step; False if that step is already saved.

        data_state: this process's iterator state (JSON-able or bytes); all processes' states are
        gathered and saved together. rng: the run's base jax.random key. pending_metrics: the
        per-step metric dicts not yet logged, so a resumed run logs the same averages. `force`
        is accepted for call-site symmetry: an explicit call always saves.
        """
        del force
        self.manager.wait_until_finished()  # _seal must see the step it belongs to
        if step in self.manager.all_steps():
            return False
        data_states = _gather_from_processes(_encode_json(data_state))
        self._sealing_step = int(step)
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data_iterator=ocp.args.JsonSave(
                {"process_count": jax.process_count(), "states": data_states}
            ),
            loop=ocp.args.JsonSave(
                {"rng": _rng_to_json(rng), "pending_metrics": _metrics_to_json(pending_metrics)}
            ),
            config=ocp.args.JsonSave(self.config_json),
        )
        # force: Orbax's own policy would skip a step while a previous save is in flight.
        return self.manager.save(step, args=args, force=True)

    def restore(self, abstract_state, step: int | None = None) -> Restored | None:
        """The newest intact step (or `step`) restored into abstract_state, or None if none.

        abstract_state: a tree of jax.ShapeDtypeStruct carrying the new run's shardings, so a
        checkpoint saved on another mesh or device count is resharded on the way in.
        """
        steps = sorted(self.manager.all_steps(), reverse=True)
        if step is not None:
            if step not in steps:
                raise UserError(f"{self.directory}: no checkpoint at step {step}; have {steps}")
            steps = [step]
        for candidate in steps:
            problem = self._problem_agreed_by_all(candidate)
            if problem is not None and step is not None:
                raise UserError(f"checkpoint {self.directory / str(step)} is damaged: {problem}")
            if problem is not None:
                where = self._set_aside(candidate)
                _print_main(
                    f"checkpoint {self.directory / str(candidate)} not loaded: {problem}; "
                    f"{where}; falling back to an older checkpoint"
                )
                continue
            return self._restore_intact(candidate, abstract_state)
        if steps:
            _print_main(f"no intact checkpoint in {self.directory}; starting from step 0")
        return None

    def _restore_intact(self, step: int, abstract_state) -> Restored:
        saved = _saved_state_tree(self.directory / str(step))
        mismatch = describe_mismatch(_shapes_by_path(saved), _shapes_by_path(abstract_state))
        if mismatch:
            raise UserError(
                f"checkpoint {self.directory / str(step)} does not fit this run's model and "
                f"optimizer: {mismatch}. Resume with the config saved beside it "
                f"({self.directory / str(step) / 'config'}) or use a new workdir"
            )
        restored = self.manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state),
                data_iterator=ocp.args.JsonRestore(),
                loop=ocp.args.JsonRestore(),
            ),
        )
        loop = restored["loop"] or {}
        return Restored(
            step=step,
            state=restored["state"],
            data_state=_data_state_for_this_process(restored["data_iterator"]),
            rng=_rng_from_json(loop.get("rng")),
            pending_metrics=_metrics_from_json(loop.get("pending_metrics")),
        )

    def _problem_agreed_by_all(self, step: int) -> str | None:
        """Process 0 checks the files; every process gets the same verdict."""
        problem = checkpoint_problem(self.directory / str(step)) if _is_main() else None
        if jax.process_count() == 1:
            return problem
        from jax.experimental import multihost_utils

        intact = multihost_utils.broadcast_one_to_all(np.asarray(problem is None, np.int32))
        if bool(intact):
            return None
        return problem or "process 0 found it damaged"

    def _set_aside(self, step: int) -> str:
        """Moves a damaged step aside (kept for inspection) so the run can save that step anew."""
        source = self.directory / str(step)
        target = self.directory.parent / "damaged_checkpoints" / str(step)
        suffix = 1
        while target.exists():
            target = target.parent / f"{step}.{suffix}"
            suffix += 1
        result = f"moved to {target}"
        if _is_main():
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                source.rename(target)
            except OSError as err:
                result = f"left in place ({err})"
        _barrier("bert_jax_checkpoint_set_aside")
        self.manager.reload()
        return result

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def _is_main() -> bool:
    return jax.process_index() == 0


def _print_main(message: str) -> None:
    if _is_main():
        print(message, flush=True)


def _barrier(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def _encode_json(value) -> Any:
    """Iterator states may be bytes; JSON carries them as base64."""
    if isinstance(value, bytes):
        return {"base64": base64.b64encode(value).decode("ascii")}
    return value


def _decode_json(value) -> Any:
    if isinstance(value, dict) and set(value) == {"base64"}:
        return base64.b64decode(value["base64"])
    return value


def _gather_from_processes(value) -> list:
    """Every process's JSON-able value, in process order (a collective when multi-process)."""
    if jax.process_count() == 1:
        return [value]
    from jax.experimental import multihost_utils

    encoded = np.frombuffer(json.dumps(value).encode("utf-8"), np.uint8)
    lengths = multihost_utils.process_allgather(np.asarray(len(encoded), np.int32))
    padded = np.zeros(int(np.max(lengths)), np.uint8)
    padded[: len(encoded)] = encoded
    gathered = multihost_utils.process_allgather(padded)
    return [
        json.loads(bytes(row[: int(n)]).decode("utf-8"))
        for row, n in zip(gathered, lengths, strict=True)
    ]


def _data_state_for_this_process(saved) -> Any:
    """This process's saved iterator state; None (a fresh stream) if the process count changed."""
    if not isinstance(saved, dict) or "states" not in saved:  # a bare state
        return _decode_json(saved)
    states = saved["states"] or []
    if len(states) == jax.process_count():
        return _decode_json(states[jax.process_index()])
    # Each process reads its own share of the documents, so positions in N shares do not map
    # onto M shares.
    _print_main(
        f"data iterator: the checkpoint was written by {len(states)} processes, this run has "
        f"{jax.process_count()}; the data stream starts afresh (model and optimizer restored)"
    )
    return None


def _metrics_to_json(pending) -> list | None:
    """Device scalars -> [{name: [dtype, value]}]; the dtype keeps float32 sums bit-exact."""
    if not pending:
        return None
    fetched = jax.device_get(pending)
    return [
        {k: [np.asarray(v).dtype.name, np.asarray(v).item()] for k, v in m.items()} for m in fetched
    ]


def _metrics_from_json(saved) -> list[dict] | None:
    if not saved:
        return None
    return [{k: np.asarray(v, dtype=dtype) for k, (dtype, v) in m.items()} for m in saved]


def _rng_to_json(rng) -> dict | None:
    if rng is None:
        return None
    if jax.dtypes.issubdtype(rng.dtype, jax.dtypes.prng_key):
        impl = str(jax.random.key_impl(rng))
        data = jax.random.key_data(rng)
    else:  # a raw uint32 key
        impl, data = None, rng
    return {"impl": impl, "key_data": np.asarray(jax.device_get(data)).tolist()}


def _rng_from_json(saved) -> jax.Array | None:
    if not saved:
        return None
    data = np.asarray(saved["key_data"], np.uint32)
    if saved.get("impl") is None:
        return jnp.asarray(data)
    return jax.random.wrap_key_data(data, impl=saved["impl"])


# ---------------------------------------------------------------------------------------------
# Parameter trees for continued pretraining and fine-tuning


def _key_name(key) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def _leaves_by_path(tree) -> dict[str, Any]:
    """'a/b/c' -> leaf (an array, ShapeDtypeStruct or Orbax metadata)."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {"/".join(_key_name(k) for k in path): leaf for path, leaf in leaves}


def _shapes_by_path(tree) -> dict[str, tuple[int, ...]]:
    """'a/b/c' -> shape for every array-like leaf (arrays, ShapeDtypeStructs, Orbax metadata)."""
    return {path: tuple(getattr(leaf, "shape", ())) for path, leaf in _leaves_by_path(tree).items()}


def describe_mismatch(saved: dict[str, tuple], wanted: dict[str, tuple]) -> str:
    """'' when both path->shape maps agree; else the missing, unexpected and reshaped paths."""

    def listed(paths):
        shown = ", ".join(paths[:_MAX_LISTED_PATHS])
        more = len(paths) - _MAX_LISTED_PATHS
        return shown + (f", and {more} more" if more > 0 else "")

    missing = sorted(set(wanted) - set(saved))
    unexpected = sorted(set(saved) - set(wanted))
    reshaped = sorted(
        f"{p} {saved[p]} vs {wanted[p]}" for p in set(saved) & set(wanted) if saved[p] != wanted[p]
    )
    parts = []
    if missing:
        parts.append(f"missing {len(missing)} parameter(s): {listed(missing)}")
    if unexpected:
        parts.append(f"unexpected {len(unexpected)} parameter(s): {listed(unexpected)}")
    if reshaped:
        parts.append(f"{len(reshaped)} with other shapes (saved vs model): {listed(reshaped)}")
    return "; ".join(parts)


def _saved_state_tree(step_dir: epath.Path):
    """The saved train state's tree of Orbax array metadata (shapes, dtypes), reading no arrays."""
    metadata = ocp.PyTreeCheckpointHandler().metadata(step_dir / "state")
    return metadata.tree if hasattr(metadata, "tree") else metadata


def _select(tree, subtree: tuple[str, ...], source) -> Any:
    for name in subtree:
        if not isinstance(tree, dict) or name not in tree:
            have = sorted(tree) if isinstance(tree, dict) else type(tree).__name__
            raise UserError(
                f"{source}: the saved parameters have no '{name}' subtree (have {have})"
            )
        tree = tree[name]
    return tree


def _nest(subtree: tuple[str, ...], tree) -> dict:
    for name in reversed(subtree):
        tree = {name: tree}
    return tree


def _plain(tree):
    from flax.core import unfreeze

    return unfreeze(tree) if hasattr(tree, "unfreeze") else tree


def _is_step_name(name: str) -> bool:
    return name.isascii() and name.isdigit()


def _newest_intact_step_dir(checkpoints_dir: epath.Path) -> epath.Path:
    steps = sorted(
        (int(p.name) for p in checkpoints_dir.iterdir() if _is_step_name(p.name) and p.is_dir()),
        reverse=True,
    )
    for step in steps:
        problem = checkpoint_problem(checkpoints_dir / str(step))
        if problem is None:
            return checkpoints_dir / str(step)
        _print_main(
            f"checkpoint {checkpoints_dir / str(step)} not loaded: {problem}; trying an older one"
        )
    raise UserError(f"{checkpoints_dir}: no intact checkpoint (steps found: {steps or 'none'})")


def resolve_checkpoint_dir(path) -> epath.Path | None:
    """A bert_jax workdir, checkpoints dir or step dir -> an intact step dir; None for others."""
    path = _as_path(path)
    if (path / "state").is_dir():
        problem = checkpoint_problem(path)
        if problem is not None:
            raise UserError(f"checkpoint {path} cannot be used: {problem}; pick another step")
        return path
    if (path / "checkpoints").is_dir():
        return _newest_intact_step_dir(path / "checkpoints")
    if any(_is_step_name(p.name) and (p / "state").is_dir() for p in path.iterdir()):
        return _newest_intact_step_dir(path)
    return None


def load_params_for_init(path, abstract_params, subtree: tuple[str, ...] = ()) -> Any:
    """Parameters (no optimizer state) from a checkpoint, placed like abstract_params.

    path: a bert_jax workdir, its checkpoints/ dir or one step dir (the newest intact step is
    used), or a Hugging Face BERT directory (config.json + model.safetensors or
    pytorch_model.bin). subtree: the part of the saved parameters to load, e.g. ('bert',) for
    the encoder of a BertForPreTraining checkpoint. abstract_params: jax.ShapeDtypeStructs (with
    .sharding; None means the first local device) for that part, given either as the part
    itself or nested under `subtree` ({'bert': ...}); the result has the same form. Raises
    UserError listing missing and unexpected parameter paths when the structures differ.
    """
    source = _as_path(path)
    if not source.exists():
        raise UserError(f"init_checkpoint {source} not found")
    if not source.is_dir():
        raise UserError(f"init_checkpoint {source} is a file; pass the directory holding it")
    subtree = tuple(subtree)
    abstract_params = _with_default_sharding(_plain(abstract_params))
    nested = bool(subtree) and _has_path(abstract_params, subtree)
    wanted = _select(abstract_params, subtree, "abstract_params") if nested else abstract_params
    step_dir = resolve_checkpoint_dir(source)
    if step_dir is not None:
        loaded = _load_orbax_params(step_dir, wanted, subtree)
    elif (source / "config.json").exists():
        loaded = _load_hf_params(source, wanted, subtree)
    else:
        raise UserError(
            f"init_checkpoint {source} is neither a bert_jax workdir or checkpoint nor a Hugging "
            "Face BERT directory (config.json + model.safetensors or pytorch_model.bin)"
        )
    return _nest(subtree, loaded) if nested else loaded


def _has_path(tree, keys: tuple[str, ...]) -> bool:
    for key in keys:
        if not isinstance(tree, dict) or key not in tree:
            return False
        tree = tree[key]
    return True


def _with_default_sharding(abstract_params):
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])

    def fill(leaf):
        if getattr(leaf, "sharding", None) is not None:
            return leaf
        return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=device)

    return jax.tree.map(fill, abstract_params)


def _check_fits(source, saved_tree, abstract_params) -> None:
    mismatch = describe_mismatch(_shapes_by_path(saved_tree), _shapes_by_path(abstract_params))
    if mismatch:
        raise UserError(f"init_checkpoint {source} does not fit the model: {mismatch}")


def _check_dtypes(source, saved_tree, abstract_params) -> None:
    """Saved parameters must be floating point; another float precision is cast, and said so."""
    saved = _leaves_by_path(saved_tree)
    cast = []
    for path, want in _leaves_by_path(abstract_params).items():
        try:
            dtype = np.dtype(saved[path].dtype)
        except (AttributeError, TypeError):
            dtype = None
        if dtype is None or not jnp.issubdtype(dtype, jnp.floating):
            stored = "an unknown type" if dtype is None else dtype
            raise UserError(
                f"init_checkpoint {source}: parameter {path} is stored as {stored}, not as "
                "floating point"
            )
        if dtype != want.dtype:
            cast.append(f"{path} ({dtype} -> {np.dtype(want.dtype)})")
    if cast:
        _print_main(f"init_checkpoint: {len(cast)} parameter(s) cast, e.g. {cast[0]}")


def _refuse_links(step_dir: epath.Path) -> None:
    """Array data read through a link could come from any file the user can read (a private key
    copied into the weights); bert_jax never writes links, so a step holding one is refused."""
    if "://" in str(step_dir):
        return
    for root, dirs, files in os.walk(step_dir):
        for name in dirs + files:
            if os.path.islink(os.path.join(root, name)):
                raise UserError(
                    f"checkpoint {step_dir} holds a symbolic link ({os.path.join(root, name)}); "
                    "copy the checkpoint without links to use it"
                )


def _load_orbax_params(step_dir: epath.Path, abstract_params, subtree: tuple[str, ...]):
    _refuse_links(step_dir)
    try:
        saved = _saved_state_tree(step_dir)
        if not isinstance(saved, dict) or "params" not in saved:
            raise UserError(f"checkpoint {step_dir} holds no 'params' tree")
        selected = _select(saved["params"], subtree, step_dir)
        _check_fits(step_dir, selected, abstract_params)
        _check_dtypes(step_dir, selected, abstract_params)
    except UserError:
        raise
    except Exception as err:  # Orbax's metadata readers raise many types on damaged files
        raise UserError(
            f"checkpoint {step_dir}: unreadable metadata ({type(err).__name__}: {shown(str(err))})"
        ) from err
    target = {"params": _nest(subtree, abstract_params)}
    try:
        restored = ocp.PyTreeCheckpointer().restore(
            step_dir / "state",
            args=ocp.args.PyTreeRestore(
                item=target,
                restore_args=ocp.checkpoint_utils.construct_restore_args(target),
                partial_restore=True,  # the optimizer state is never read
            ),
        )
    except Exception as err:  # TensorStore reports damaged array data as ValueError and others
        raise UserError(
            f"checkpoint {step_dir}: cannot restore the parameters ({type(err).__name__}: "
            f"{shown(str(err))})"
        ) from err
    _print_main(f"init_checkpoint: parameters from {step_dir}")
    loaded = _select(restored["params"], subtree, step_dir)
    _check_fits(step_dir, loaded, abstract_params)
    return loaded


def _load_hf_params(directory: epath.Path, abstract_params, subtree: tuple[str, ...]):
    from bert_jax.convert.hf import load_hf_checkpoint

    _, params = load_hf_checkpoint(directory)
    selected = _select(params, subtree, directory)
    _check_fits(directory, selected, abstract_params)

    def place(abstract, value):
        value = np.asarray(value, dtype=abstract.dtype)
        return jax.make_array_from_callback(abstract.shape, abstract.sharding, lambda i: value[i])

    _print_main(f"init_checkpoint: parameters from Hugging Face directory {directory}")
    return jax.tree.map(place, abstract_params, selected)
