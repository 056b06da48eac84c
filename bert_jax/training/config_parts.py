"""Config keys and checks that pretraining and fine-tuning share, each defined once: the
optimizer keys, the mesh keys (defaults in training/sharding.py), the rerun keys, value ranges
and the modes of a config file. pretraining/config.py and finetuning/config.py compose them.
"""

from __future__ import annotations

import difflib

import ml_collections
from flax import traverse_util

from bert_jax.errors import UserError
from bert_jax.training import sharding
from bert_jax.training.optim import OPTIMIZERS, SCHEDULES


def add_optimizer_defaults(c: ml_collections.ConfigDict) -> None:
    """The optimizer keys pretraining and fine-tuning share (see bert_jax.training.optim)."""
    c.optimizer = "adamw"  # bias-corrected (PyTorch/HF); "adamw_bert" is google's, or "lamb"
    c.weight_decay = 0.01  # decoupled, off LayerNorm and biases
    c.adam_b1 = 0.9  # first-moment decay
    c.adam_b2 = 0.999  # second-moment decay
    c.adam_eps = 1e-6  # added to the second moment's square root (BERT's value)
    c.nvlamb = False  # lamb: the trust ratio on every parameter (apex's use_nvlamb)
    c.max_grad_norm = 1.0  # global-norm clipping; 0 turns it off
    c.grad_accum_steps = 1  # > 1: the batch runs as that many sequential microbatches (memory)


def validate_optimizer_and_batch(config, data_parallel: int) -> None:
    """The keys of add_optimizer_defaults against the global batch_size; raises UserError."""
    accum = int(config.grad_accum_steps)
    if accum < 1:
        raise UserError(f"grad_accum_steps must be >= 1, got {accum}")
    if config.batch_size % (data_parallel * accum):
        raise UserError(
            f"batch_size {config.batch_size} is not divisible by data-parallel size "
            f"{data_parallel} (mesh data*fsdp) x grad_accum_steps {accum}"
        )
    if config.optimizer not in OPTIMIZERS:
        raise UserError(f"optimizer {config.optimizer!r} is not one of {list(OPTIMIZERS)}")
    if config.schedule not in SCHEDULES:
        raise UserError(f"schedule {config.schedule!r} is not one of {list(SCHEDULES)}")


def add_mesh_keys(c: ml_collections.ConfigDict) -> None:
    """mesh.* (device mesh sizes) and logical_axis_rules (see bert_jax.training.sharding)."""
    c.mesh = sharding.default_mesh_config()
    c.logical_axis_rules = [list(r) for r in sharding.DEFAULT_RULES]


def add_rerun_keys(c: ml_collections.ConfigDict) -> None:
    """Rerunning a workdir whose run had other settings (training.rerun): one of them set."""
    c.overwrite = False  # start over: delete the earlier run's checkpoints and logs
    c.resume_with_changes = False  # continue its checkpoint with these settings (recorded)


def check_mode(mode: str, modes, config_file: str) -> None:
    """For config files with variants (`--config FILE:MODE`): an unknown mode is an error that
    lists the valid ones, never a silent fallback to the default."""
    if mode not in modes:
        raise UserError(
            f"{config_file} has no mode {mode!r}: use one of "
            + ", ".join(f"{config_file}:{m}" for m in modes)
        )


# Value ranges of config keys: (test, description); a key missing from a config is skipped.
_RANGES = {
    "positive": (lambda v: v > 0, "> 0"),
    "non_negative": (lambda v: v >= 0, ">= 0"),
    "at_least_one": (lambda v: v >= 1, ">= 1"),
    "fraction": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "probability": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "open_fraction": (lambda v: 0 < v < 1, "in (0, 1)"),
}


def check_known_keys(config, defaults, source: str) -> None:
    """Raises UserError for a key `defaults` lacks: a name mistyped in Python (a notebook's
    `config.data.whole_word_maskng = True`) would otherwise be ignored without a word. The
    command line's locked config refuses such overrides itself."""
    known, given = (
        set(traverse_util.flatten_dict(c.to_dict(), sep=".")) for c in (defaults, config)
    )
    unknown = sorted(given - known)
    if unknown:
        close = difflib.get_close_matches(unknown[0], known, n=1)
        hint = f"; did you mean {close[0]}?" if close else ""
        others = f" (and {len(unknown) - 1} more: {', '.join(unknown[1:])})" if unknown[1:] else ""
        raise UserError(
            f"config key {unknown[0]} is not a setting of {source}{hint}{others} "
            "(docs/configs.md lists them)"
        )


def check_ranges(config, rules: dict[str, str]) -> None:
    """Raises UserError for the first key (dotted, e.g. "data.masked_lm_prob") whose value is
    outside its range; `rules` maps keys to a name in _RANGES. NaN fails every range."""
    for key, rule in rules.items():
        node = config
        try:
            for part in key.split("."):
                node = node[part]
        except (KeyError, AttributeError):
            continue
        test, description = _RANGES[rule]
        if isinstance(node, bool) or not isinstance(node, int | float) or not test(node):
            raise UserError(f"{key} must be {description}, got {node!r}")
