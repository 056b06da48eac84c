"""A workdir run again: the same settings resume its run; other settings stop unless chosen.

Both loops call `check` before they write anything. When WORKDIR/checkpoints holds a run, what
that run recorded (config.json; for fine-tuning also the labels and data fingerprints in
task_info.json) is compared with what this run would record. Keys that change the result and
differ stop the run with one line, unless `overwrite` (delete the old run's outputs and start
over) or `resume_with_changes` (continue from its checkpoint under the new settings; `record`
appends them to config_history.jsonl). The keys free to differ are config_lib's and
finetune_config's RERUN_FREE sets; docs/faq.md says why.
"""

from __future__ import annotations

import json
from typing import Any

import jax
from etils import epath
from flax import traverse_util

from bert_jax.checkpoints.checkpointing import step_dirs
from bert_jax.errors import UserError
from bert_jax.paths import resolved
from bert_jax.training import distributed
from bert_jax.untrusted import read_json_object, shown

HISTORY = "config_history.jsonl"
PATH_KEYS = ("init_checkpoint", "vocab_file")  # compared as the paths they resolve to
_LISTED = 6


def _normalized(key: str, value):
    if key.rsplit(".", 1)[-1] in PATH_KEYS and isinstance(value, str) and value:
        return resolved(value)
    return value


def _is_free(key: str, free) -> bool:
    parts = key.split(".")
    return any(".".join(parts[:i]) in free for i in range(1, len(parts) + 1))


def differences(saved: dict, new: dict, free=frozenset()) -> dict[str, tuple[Any, Any]]:
    """Dotted key -> (saved, new) for the keys both records hold whose values differ, except
    those under a key in `free`. Keys only one side has (another bert_jax version) are skipped."""
    saved, new = (traverse_util.flatten_dict(t, sep=".") for t in (saved, new))
    return {
        key: (saved[key], new[key])
        for key in sorted(saved.keys() & new.keys())
        if not _is_free(key, free) and _normalized(key, saved[key]) != _normalized(key, new[key])
    }


def has_run(workdir) -> bool:
    """Whether WORKDIR/checkpoints holds a step (intact or not) of an earlier run."""
    checkpoints = epath.Path(workdir) / "checkpoints"
    return checkpoints.is_dir() and bool(step_dirs(checkpoints))


def check(workdir, config, records: dict[str, dict], free, outputs) -> dict[str, tuple]:
    """The changes a continued run must record (`resume_with_changes`), or {}.

    records: a file in workdir -> what this run would write there. With config.overwrite the
    earlier run's `outputs` (names in workdir) are deleted first. Raises UserError when the
    earlier run recorded other values of keys not in `free`. Call on every process.
    """
    workdir = epath.Path(workdir)
    overwrite = bool(config.get("overwrite", False))
    if overwrite and config.get("resume_with_changes", False):
        raise UserError("overwrite and resume_with_changes exclude each other: set one")
    if not has_run(workdir):
        return {}
    if overwrite:
        _start_over(workdir, outputs)
        return {}
    changes = {}
    for name, new in records.items():
        path = workdir / name
        if path.is_file():
            label = "" if name == "config.json" else f"{name}:"
            saved = read_json_object(path, f"the earlier run's {name}")
            for key, pair in differences(saved, new, free).items():
                changes[label + key] = pair
    if changes and not config.get("resume_with_changes", False):
        shown_changes = [f"{k} {shown(a)} -> {shown(b)}" for k, (a, b) in changes.items()]
        listed = ", ".join(shown_changes[:_LISTED])
        if len(changes) > _LISTED:
            listed += f", and {len(changes) - _LISTED} more"
        raise UserError(
            f"{workdir} holds a run with other settings ({listed}); rerunning would return that "
            "run. Use a new workdir, or --config.overwrite=True to start over (deletes its "
            "checkpoints and logs), or --config.resume_with_changes=True to continue from its "
            f"checkpoint under the new settings (recorded in {HISTORY})"
        )
    return changes


def _start_over(workdir: epath.Path, outputs) -> None:
    deleted = []
    if jax.process_index() == 0:
        for name in outputs:
            path = workdir / name
            if path.is_dir():
                path.rmtree()
            elif path.exists():
                path.unlink()
            else:
                continue
            deleted.append(name)
        print(f"overwrite=True: deleted the earlier run's {', '.join(deleted)} in {workdir}")
    distributed.barrier("bert_jax_rerun_start_over")


def record(workdir, changes: dict[str, tuple], step: int) -> None:
    """Appends {"step", "changes": {key: [before, after]}} to WORKDIR/config_history.jsonl (a
    whole rewrite: objects on gs:// cannot be appended to) and says so; main process only."""
    if jax.process_index() != 0 or not changes:
        return
    path = epath.Path(workdir) / HISTORY
    line = json.dumps({"step": int(step), "changes": {k: list(v) for k, v in changes.items()}})
    previous = path.read_text() if path.exists() else ""
    path.write_text(previous + line + "\n")
    print(
        f"resume_with_changes=True: continuing from step {step} with other "
        f"{', '.join(changes)}; recorded in {path}"
    )
