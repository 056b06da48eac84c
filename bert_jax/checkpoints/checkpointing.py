"""Orbax checkpoints: the train state, every process's data-iterator state, the rng and the config.

`Checkpointer` saves and restores runs in WORKDIR/checkpoints/<step>/ (pretraining, or
fine-tuning with its best/), asynchronously and sealed (`sealing.SealedManager`, re-exported
here): a damaged step is marked and skipped for the next older one. `load_params_for_init` reads
only the parameter tree, from a bert_jax checkpoint or a Hugging Face BERT directory. Nothing
here unpickles. See docs/design/checkpoints_and_sealing.md.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from bert_jax.checkpoints.sealing import (  # noqa: F401 (re-exported: the checkpoint API)
    DAMAGED_NAME,
    MANIFEST_NAME,
    DamagedCheckpoint,
    SealedManager,
    agreed_problem,
    checkpoint_problem,
    error_line,
    key_name,
    verify_arrays,
    write_manifest,
)
from bert_jax.convert import hub
from bert_jax.errors import UserError
from bert_jax.paths import as_path
from bert_jax.untrusted import shown

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
# Train-state checkpoints


class Checkpointer:
    """Saves and restores a run's train state under WORKDIR/checkpoints; call every method on every
    process (saves and restores are collective).

    layout: "pretraining" (the items listed above) or "finetuning" (state/ and pending_metrics/:
    JSON {"steps": [...]}; the data order and dropout key follow from the config). best_metric:
    also keep WORKDIR/`best_dir`, the whole model of the evaluation scoring highest in it.
    kept_step: also save that step (whatever every_steps says) to WORKDIR/`kept_dir`/STEP, a
    checkpoints directory of its own that keep never prunes (a schedule's decay start, to
    branch other decays from).
    """

    def __init__(
        self,
        workdir,
        every_steps: int,
        keep: int,
        config=None,
        data_share=None,
        *,
        layout: str = "pretraining",
        best_metric: str | None = None,
        best_dir: str = "best",
        kept_step: int | None = None,
        kept_dir: str = "decay_start",
    ):
        if layout not in _LAYOUTS:
            raise ValueError(f"layout {layout!r} is not one of {sorted(_LAYOUTS)}")
        self.workdir = as_path(workdir)
        self.directory = self.workdir / "checkpoints"
        self.layout = layout
        # (index, count): the share of each batch this process feeds (`sharding.batch_share`),
        # which its data-iterator state belongs to; None: its process index and count.
        self.data_share = data_share
        self.every_steps = int(every_steps)
        self.config_json = json.loads(config.to_json()) if config is not None else {}
        self.sealed = SealedManager(
            self.directory,
            {name: handler() for name, handler in _LAYOUTS[layout]},
            max_to_keep=max(int(keep), 1),
        )
        self.kept_step = kept_step
        self.kept: SealedManager | None = None
        if kept_step is not None:
            self.kept = SealedManager(
                self.workdir / kept_dir, {name: h() for name, h in _LAYOUTS[layout]}, max_to_keep=1
            )
        self.best_metric = best_metric
        self.best: SealedManager | None = None
        self._best_score: float | None = None  # the kept step's, once read
        if best_metric is not None:
            self.best = SealedManager(
                self.workdir / best_dir,
                {"params": ocp.StandardCheckpointHandler()},
                max_to_keep=1,
                best_fn=lambda metrics: metrics[best_metric],
                best_mode="max",
                keep_checkpoints_without_metrics=False,
            )

    @property
    def manager(self) -> ocp.CheckpointManager:
        return self.sealed.manager  # renewed after a failed save

    def latest_step(self) -> int | None:
        return self.sealed.latest_step()

    def all_steps(self) -> list[int]:
        return self.sealed.all_steps()

    def should_save(self, step: int) -> bool:
        return (self.every_steps > 0 and step % self.every_steps == 0) or step == self.kept_step

    def save(
        self, step: int, state, data_state=None, *, rng=None, pending_metrics=None, force=False
    ) -> bool:
        """Starts an asynchronous save of step; False if that step is already saved intact.

        data_state: this process's iterator state (JSON-able or bytes); all processes' states are
        gathered and saved together. rng: the run's base jax.random key. pending_metrics: the
        per-step metric dicts not yet logged, so a resumed run logs the same averages. `force`
        is accepted for call-site symmetry: an explicit call always saves. The "finetuning"
        layout keeps neither data_state nor rng.
        """
        del force
        if self.layout == "finetuning":
            fetched = jax.device_get(list(pending_metrics or []))
            steps = [{k: float(v) for k, v in m.items()} for m in fetched]
            items = {
                "state": ocp.args.StandardSave(state),
                "pending_metrics": ocp.args.JsonSave({"steps": steps}),
            }
            return self.sealed.save(step, items)
        shares, data_states = zip(
            *_gather_from_processes([self._data_share(), _encode_json(data_state)]), strict=True
        )
        items = {
            "state": ocp.args.StandardSave(state),
            "data_iterator": ocp.args.JsonSave(
                {
                    "process_count": jax.process_count(),
                    "states": list(data_states),
                    "shares": list(shares),
                }
            ),
            "loop": ocp.args.JsonSave(
                {"rng": _rng_to_json(rng), "pending_metrics": _metrics_to_json(pending_metrics)}
            ),
            "config": ocp.args.JsonSave(self.config_json),
        }
        if step == self.kept_step:
            self.kept.save(step, items)
        return self.sealed.save(step, items)

    def restore(self, abstract_state, step: int | None = None) -> Restored | None:
        """The newest intact step (or `step`) restored into abstract_state, or None if none.

        abstract_state: a tree of jax.ShapeDtypeStruct carrying the new run's shardings, so a
        checkpoint saved on another mesh or device count is resharded on the way in.
        """

        def items(candidate: int) -> dict:
            self._check_fits(candidate, abstract_state)
            others = [name for name, _ in _LAYOUTS[self.layout] if name not in ("state", "config")]
            restore = {name: ocp.args.JsonRestore() for name in others}
            return {"state": ocp.args.StandardRestore(abstract_state), **restore}

        found = self.sealed.restore_newest(items, step)
        if found is None:
            if self.all_steps():
                _print_main(f"no intact checkpoint in {self.directory}; starting from step 0")
            return None
        step, restored = found
        if self.layout == "finetuning":
            pending = (restored["pending_metrics"] or {}).get("steps") or []
            return Restored(step, restored["state"], None, None, pending)
        loop = restored["loop"] or {}
        return Restored(
            step=step,
            state=restored["state"],
            data_state=_data_state_for_this_process(restored["data_iterator"], self._data_share()),
            rng=_rng_from_json(loop.get("rng")),
            pending_metrics=_metrics_from_json(loop.get("pending_metrics")),
        )

    def best_step(self) -> tuple[int | None, dict | None]:
        """(step, its evaluation metrics) of the model best/ keeps; (None, None) if none."""
        step = self.best.manager.best_step() if self.best is not None else None
        if step is None:
            return None, None
        metrics = self.best.manager.metrics(step)
        return step, dict(metrics) if metrics else None

    def save_best(self, step: int, params, metrics: dict) -> bool:
        """Saves params to best/ when metrics[best_metric] is not below the kept step's score
        (best/ keeps one, the newer of equal scores: a lower one would only be deleted); True
        when it saves."""
        if self._best_score is None:
            kept = self.best_step()[1]
            self._best_score = None if kept is None else float(kept[self.best_metric])
        score = float(metrics[self.best_metric])
        if self._best_score is not None and score < self._best_score:
            return False
        values = {k: float(v) for k, v in metrics.items()}
        self.best.save(step, {"params": ocp.args.StandardSave(params)}, metrics=values)
        self._best_score = score
        return True

    def restore_best(self, abstract_params) -> tuple[int, Any]:
        """(step, whole-model parameters) of the best step, placed like abstract_params."""
        step = self.best.manager.best_step()
        _, restored = self.best.restore_newest(
            {"params": ocp.args.StandardRestore(abstract_params)}, step=step
        )
        return step, restored["params"]

    def _data_share(self) -> list[int]:
        share = self.data_share or (jax.process_index(), jax.process_count())
        return [int(n) for n in share]

    def _check_fits(self, step: int, abstract_state) -> None:
        step_dir = self.directory / str(step)
        if self.layout == "finetuning":
            what = "this fine-tuning config"
            advice = f"Use a new workdir, or the settings in {self.workdir / 'config.json'}"
        else:
            what = "this run's model and optimizer"
            advice = (
                f"Resume with the config saved beside it ({step_dir / 'config'}) or use a new "
                "workdir"
            )
        check_fits(step_dir, "state", abstract_state, what, advice)

    def wait(self) -> None:
        self.sealed.wait()
        for extra in (self.best, self.kept):
            if extra is not None:
                extra.wait()

    def close(self) -> None:
        self.sealed.close()
        for extra in (self.best, self.kept):
            if extra is not None:
                extra.close()


# The items of a step directory by layout: (name, Orbax handler).
_LAYOUTS = {
    "pretraining": (
        ("state", ocp.StandardCheckpointHandler),
        ("data_iterator", ocp.JsonCheckpointHandler),
        ("loop", ocp.JsonCheckpointHandler),
        ("config", ocp.JsonCheckpointHandler),
    ),
    "finetuning": (
        ("state", ocp.StandardCheckpointHandler),
        ("pending_metrics", ocp.JsonCheckpointHandler),
    ),
}


def _is_main() -> bool:
    return jax.process_index() == 0


def _print_main(message: str) -> None:
    if _is_main():
        print(message, flush=True)


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


def _data_state_for_this_process(saved, share: list[int]) -> Any:
    """The saved iterator state of the batch share (index, count) this process feeds, whichever
    process fed it; None (a fresh stream) if the batch was cut into another number of shares."""
    if not isinstance(saved, dict) or "states" not in saved:  # a bare state
        return _decode_json(saved)
    states = saved["states"] or []
    # Checkpoints that name no shares were written when process i fed share i of the count.
    shares = saved.get("shares") or [[i, len(states)] for i in range(len(states))]
    by_share = {tuple(s): state for s, state in zip(shares, states, strict=True)}
    counts = {count for _, count in by_share}
    if counts == {share[1]} and tuple(share) in by_share:
        return _decode_json(by_share[tuple(share)])
    # Each share reads its own part of the documents, so positions in N shares do not map onto
    # M shares.
    _print_main(
        f"data iterator: the checkpoint's batches were fed in {max(counts, default=0)} shares, "
        f"this run in {share[1]}; the data stream starts afresh (model and optimizer restored)"
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


def _leaves_by_path(tree) -> dict[str, Any]:
    """'a/b/c' -> leaf (an array, ShapeDtypeStruct or Orbax metadata)."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {"/".join(key_name(k) for k in path): leaf for path, leaf in leaves}


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


def _saved_tree(step_dir: epath.Path, item: str = "state"):
    """A saved item's tree of Orbax array metadata (shapes, dtypes), reading no arrays."""
    metadata = ocp.PyTreeCheckpointHandler().metadata(step_dir / item)
    return metadata.tree if hasattr(metadata, "tree") else metadata


def check_fits(step_dir: epath.Path, item: str, abstract, what: str, advice: str) -> None:
    """A UserError when the arrays saved as `item` at step_dir lack abstract's paths and shapes:
    the reader's model differs from the writer's. Raised before Orbax reads anything, so the
    sealed manager reports it instead of marking an intact checkpoint damaged."""
    saved = _saved_tree(step_dir, item)
    mismatch = describe_mismatch(_shapes_by_path(saved), _shapes_by_path(abstract))
    if mismatch:
        raise UserError(f"checkpoint {step_dir} does not fit {what}: {mismatch}. {advice}")


def fitting_items(step_dir_of, item: str, abstract, what: str, advice: str, **others):
    """SealedManager.restore_newest's `items` for a step: `item` restored into `abstract` once
    check_fits passed for step_dir_of(step), beside the restore args in `others`."""

    def items(step: int) -> dict:
        check_fits(step_dir_of(step), item, abstract, what, advice)
        return {item: ocp.args.StandardRestore(abstract), **others}

    return items


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


def step_dirs(checkpoints_dir: epath.Path) -> list[epath.Path]:
    """The step directories under checkpoints_dir, newest first."""
    steps = sorted(
        (int(p.name) for p in checkpoints_dir.iterdir() if _is_step_name(p.name) and p.is_dir()),
        reverse=True,
    )
    return [checkpoints_dir / str(step) for step in steps]


def candidate_step_dirs(path) -> tuple[list[epath.Path], bool] | None:
    """A bert_jax workdir, checkpoints dir or step dir -> (its step dirs to try, newest first;
    whether older ones may stand in for a damaged one: not for a step named explicitly); None
    for other directories."""
    path = as_path(path)
    if (path / "state").is_dir():
        return [path], False
    if (path / "checkpoints").is_dir():
        return step_dirs(path / "checkpoints"), True
    if any(_is_step_name(p.name) and (p / "state").is_dir() for p in path.iterdir()):
        return step_dirs(path), True
    return None


def load_params_for_init(
    path, abstract_params, subtree: tuple[str, ...] = (), *, announce: bool = True
) -> Any:
    """Parameters (no optimizer state) from a checkpoint, placed like abstract_params.

    path: a bert_jax workdir, its checkpoints/ dir or one step dir (the newest intact step is
    used), or a Hugging Face BERT directory (config.json + model.safetensors or
    pytorch_model.bin). subtree: the part of the saved parameters to load, e.g. ('bert',) for
    the encoder of a BertForPreTraining checkpoint. abstract_params: jax.ShapeDtypeStructs (with
    .sharding; None means the first local device) for that part, given either as the part
    itself or nested under `subtree` ({'bert': ...}); the result has the same form. Raises
    UserError listing missing and unexpected parameter paths when the structures differ.
    announce: print which step or directory the parameters came from (training runs do; the
    pipelines load quietly).
    """
    source = as_path(hub.resolve(path))  # a Hugging Face hub name: its cached snapshot
    if not source.exists():
        raise UserError(f"init_checkpoint {source} not found")
    if not source.is_dir():
        raise UserError(f"init_checkpoint {source} is a file; pass the directory holding it")
    subtree = tuple(subtree)
    abstract_params = _with_default_sharding(_plain(abstract_params))
    nested = bool(subtree) and _has_path(abstract_params, subtree)
    wanted = _select(abstract_params, subtree, "abstract_params") if nested else abstract_params
    candidates = candidate_step_dirs(source)
    if candidates is not None:
        loaded = _load_newest_intact(source, *candidates, wanted, subtree, announce)
    elif (source / "config.json").exists():
        loaded = _load_hf_params(source, wanted, subtree, announce)
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


def _load_newest_intact(
    source, step_dirs, fall_back: bool, abstract_params, subtree, announce: bool = True
):
    """The parameters of the newest step that passes its checks; a damaged step (truncated or
    corrupted files, an unfinished save) is skipped with one line when an older one may stand
    in. Nothing is written into the source (it may be another run's, or read-only)."""
    for step_dir in step_dirs:
        problem = checkpoint_problem(step_dir)
        if problem is None:
            try:
                return _load_orbax_params(step_dir, abstract_params, subtree, announce)
            except DamagedCheckpoint as damaged:
                problem = str(damaged)
        if not fall_back:
            raise UserError(f"checkpoint {step_dir} cannot be used: {problem}; pick another step")
        _print_main(f"checkpoint {step_dir} not loaded: {problem}; trying an older one")
    steps = [int(d.name) for d in step_dirs] or "none"
    raise UserError(f"{source}: no intact checkpoint (steps found: {steps})")


def _load_orbax_params(
    step_dir: epath.Path, abstract_params, subtree: tuple[str, ...], announce: bool = True
):
    """The step's parameters; raises DamagedCheckpoint when its files cannot be read or verified,
    UserError when they do not fit the model."""
    _refuse_links(step_dir)
    try:
        saved = _saved_tree(step_dir)
        if not isinstance(saved, dict) or "params" not in saved:
            raise UserError(f"checkpoint {step_dir} holds no 'params' tree")
        selected = _select(saved["params"], subtree, step_dir)
        _check_fits(step_dir, selected, abstract_params)
        _check_dtypes(step_dir, selected, abstract_params)
    except UserError:
        raise
    except Exception as err:  # Orbax's metadata readers raise many types on damaged files
        raise DamagedCheckpoint(
            f"unreadable metadata ({type(err).__name__}: {shown(str(err))})"
        ) from err
    # Read in the saved dtypes: the fingerprints are of the stored bits; cast afterwards.
    saved_dtypes = {p: leaf.dtype for p, leaf in _leaves_by_path(selected).items()}
    as_saved = jax.tree_util.tree_map_with_path(
        lambda path, a: jax.ShapeDtypeStruct(
            a.shape, saved_dtypes["/".join(key_name(k) for k in path)], sharding=a.sharding
        ),
        abstract_params,
    )
    target = {"params": _nest(subtree, as_saved)}
    restored, problem = None, None
    try:
        restored = ocp.PyTreeCheckpointer().restore(
            step_dir / "state",
            args=ocp.args.PyTreeRestore(
                item=target,
                restore_args=ocp.checkpoint_utils.construct_restore_args(target),
                partial_restore=True,  # the optimizer state is never read
            ),
        )
    except Exception as err:  # noqa: BLE001 (tensorstore/Orbax raise many kinds)
        problem = f"it could not be read ({error_line(err)})"
    problem = agreed_problem(problem)  # before fingerprinting, a collective
    if problem is None:  # only the arrays read are checked
        params = {"state": {"params": restored["params"]}}
        problem = agreed_problem(verify_arrays(step_dir, params))
    if problem is not None:
        raise DamagedCheckpoint(problem)
    if announce:
        _print_main(f"init_checkpoint: parameters from {step_dir}")
    loaded = jax.tree.map(
        lambda x, a: x.astype(a.dtype),
        _select(restored["params"], subtree, step_dir),
        abstract_params,
    )
    _check_fits(step_dir, loaded, abstract_params)
    return loaded


def _load_hf_params(
    directory: epath.Path, abstract_params, subtree: tuple[str, ...], announce: bool = True
):
    from bert_jax.convert.hf import load_hf_checkpoint

    _, params = load_hf_checkpoint(directory)
    selected = _select(params, subtree, directory)
    _check_fits(directory, selected, abstract_params)

    def place(abstract, value):
        value = np.asarray(value, dtype=abstract.dtype)
        return jax.make_array_from_callback(abstract.shape, abstract.sharding, lambda i: value[i])

    if announce:
        _print_main(f"init_checkpoint: parameters from Hugging Face directory {directory}")
    return jax.tree.map(place, abstract_params, selected)
