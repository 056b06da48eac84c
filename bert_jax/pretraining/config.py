"""The pretraining config: every key with its default, presets, and validation before compiling.

Config files under configs/ call `pretraining_config()` and override what they change; the
tests use the same function with a tiny model.
"""

from __future__ import annotations

import ml_collections
from etils import epath

from bert_jax.data.packed_examples import sequences_per_row
from bert_jax.errors import UserError
from bert_jax.model.modeling import PRESETS, BertConfig
from bert_jax.training import sharding
from bert_jax.training.optim import OPTIMIZERS, SCHEDULES


def model_config_dict(preset: str = "base", **overrides) -> ml_collections.ConfigDict:
    """The BertConfig fields, by their bert_config.json names."""
    return ml_collections.ConfigDict(BertConfig.preset(preset, **overrides).to_dict())


def data_config_dict() -> ml_collections.ConfigDict:
    from bert_jax.data.pipeline import default_data_config

    return default_data_config()


def pretraining_config(preset: str = "base", **model_overrides) -> ml_collections.ConfigDict:
    if preset not in PRESETS:
        raise UserError(f"unknown preset {preset!r}; choose one of {list(PRESETS)}")
    c = ml_collections.ConfigDict()
    c.num_train_steps = 1_000_000
    c.batch_size = 256  # global, across all processes
    c.seed = 0
    c.learning_rate = 1e-4
    c.schedule = "bert"  # google-research/bert: warmup, then decay over all num_train_steps
    c.warmup_steps = 10_000
    c.decay_power = 1.0  # 1 = linear decay to end_learning_rate_factor * learning_rate
    c.end_learning_rate_factor = 0.0
    add_optimizer_defaults(c)
    c.log_every_steps = 100
    c.eval_every_steps = 10_000
    c.eval_steps = 50  # eval batches per evaluation (the held-out split may be larger)
    c.eval_batch_size = 0  # global rows per eval step; 0: batch_size // grad_accum_steps
    c.checkpoint_every_steps = 10_000
    c.keep_checkpoints = 3
    c.init_checkpoint = ""
    c.peak_flops_per_device = 0.0  # 0: look the device up (CPU: cpu_peak_flops)
    c.cpu_peak_flops = 0.0  # CPU MFU: the host's fp32 peak; 0 measures its matmul rate
    c.model = model_config_dict(preset, **model_overrides)
    c.data = data_config_dict()
    c.mesh = sharding.default_mesh_config()
    c.logical_axis_rules = [list(r) for r in sharding.DEFAULT_RULES]
    c.progress_bar = True
    add_rerun_keys(c)
    return c


def add_rerun_keys(c: ml_collections.ConfigDict) -> None:
    """Rerunning a workdir whose run had other settings (training.rerun): one of them set."""
    c.overwrite = False  # start over: delete the earlier run's checkpoints and logs
    c.resume_with_changes = False  # continue its checkpoint with these settings (recorded)


# Keys a rerun of a pretraining workdir may change without resume_with_changes: how the run is
# laid out, logged and saved, not what it computes. The data paths too: the dataset the workdir
# recorded (dataset.json) is compared with the one they name when the data is located.
PRETRAINING_RERUN_FREE = frozenset({
    "log_every_steps", "eval_every_steps", "checkpoint_every_steps", "keep_checkpoints",
    "progress_bar", "peak_flops_per_device", "cpu_peak_flops", "mesh", "logical_axis_rules",
    "model.remat_policy", "model.attention_implementation", "data.input_files", "data.vocab_file",
    "data.data_dir", "data.dataset_dir", "data.num_workers", "data.allow_dirty_corpus",
    "data.prefetch_chunks", "data.cache_max_tokens", "data.show_progress", "overwrite",
    "resume_with_changes",
})  # fmt: skip


def use_test_mode(c: ml_collections.ConfigDict) -> None:
    """Shrinks a pretraining config to the seconds-long setup the test suite runs (an L1 / H32
    model, sequence 64, batch 8, 6 steps with an evaluation and a checkpoint every 3)."""
    c.model.num_hidden_layers = 1
    c.model.hidden_size = 32
    c.model.num_attention_heads = 2
    c.model.intermediate_size = 64
    c.model.max_position_embeddings = 64
    c.data.max_seq_length = 64
    c.data.max_predictions_per_seq = 10
    c.batch_size = 8
    c.num_train_steps = 6
    c.warmup_steps = 2
    c.log_every_steps = 2
    c.eval_every_steps = 3
    c.eval_steps = 2
    c.checkpoint_every_steps = 3
    c.progress_bar = False


def add_optimizer_defaults(c: ml_collections.ConfigDict) -> None:
    """The optimizer keys pretraining and fine-tuning share (see bert_jax.training.optim)."""
    c.optimizer = "adamw"  # bias-corrected (PyTorch/HF); "adamw_bert" is google's, or "lamb"
    c.weight_decay = 0.01
    c.adam_b1 = 0.9
    c.adam_b2 = 0.999
    c.adam_eps = 1e-6
    c.nvlamb = False  # lamb: the trust ratio on every parameter (apex's use_nvlamb)
    c.max_grad_norm = 1.0
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


def eval_batch_size(config) -> int:
    """Global rows per pretraining eval step: eval_batch_size, or the training microbatch."""
    return int(config.get("eval_batch_size", 0)) or config.batch_size // int(
        config.get("grad_accum_steps", 1)
    )


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


PRETRAINING_RANGES = {
    "num_train_steps": "at_least_one",  # before warmup_steps, which is compared with it
    "batch_size": "at_least_one",
    "learning_rate": "positive",
    "warmup_steps": "non_negative",
    "end_learning_rate_factor": "non_negative",
    "decay_power": "positive",
    "weight_decay": "non_negative",
    "max_grad_norm": "non_negative",
    "log_every_steps": "at_least_one",
    "eval_every_steps": "at_least_one",
    "eval_steps": "at_least_one",
    "checkpoint_every_steps": "at_least_one",
    "keep_checkpoints": "at_least_one",
    "data.max_seq_length": "at_least_one",
    "data.max_predictions_per_seq": "at_least_one",
    "data.masked_lm_prob": "open_fraction",
    "data.short_seq_prob": "probability",
    "data.validation_fraction": "fraction",
    "data.dupe_factor": "at_least_one",
    "data.documents_per_chunk": "at_least_one",
    "data.worker_count": "non_negative",
    "data.max_line_chars": "at_least_one",
}


def vocab_size(vocab_file) -> int:
    """Entries of a WordPiece vocab file (one token per line)."""
    with epath.Path(vocab_file).open(encoding="utf-8") as f:  # gs:// too
        return sum(1 for line in f if line.rstrip("\n"))


def validate_pretraining_config(config, num_devices: int, check_files: bool = True) -> None:
    """Checks everything that can be checked before anything compiles; raises UserError."""
    check_ranges(config, PRETRAINING_RANGES)
    model = BertConfig.from_dict(dict(config.model))
    shape = sharding.mesh_shape(config.mesh, num_devices)
    data_parallel = shape["data"] * shape["fsdp"]
    validate_optimizer_and_batch(config, data_parallel)
    eval_rows = eval_batch_size(config)
    if eval_rows < 1 or eval_rows % data_parallel:
        raise UserError(
            f"eval_batch_size {eval_rows} must be a positive multiple of the data-parallel size "
            f"{data_parallel} (mesh data*fsdp); 0 uses batch_size // grad_accum_steps"
        )
    data = config.data
    if data.max_seq_length > model.max_position_embeddings:
        raise UserError(
            f"data.max_seq_length {data.max_seq_length} exceeds model.max_position_embeddings "
            f"{model.max_position_embeddings}"
        )
    # Masks of a full row (`pretraining.mask_tokens`, as google's create_pretraining_data.py,
    # counting [CLS] and both [SEP]): round(L * p), at least 1, at most its L - 3 other tokens.
    length = data.max_seq_length
    needed = min(max(1, int(round(length * data.masked_lm_prob))), length - 3)
    if data.max_predictions_per_seq < needed:
        raise UserError(
            f"data.max_predictions_per_seq {data.max_predictions_per_seq} is below what "
            f"masked_lm_prob {data.masked_lm_prob} needs at max_seq_length "
            f"{data.max_seq_length} ({needed}); raise it to at least {needed}"
        )
    sequences_per_row(data)  # raises on a packed row of no sequences
    if config.warmup_steps > config.num_train_steps:
        # Named, not scaled: a silently shortened warmup would change the run's schedule.
        raise UserError(
            f"warmup_steps {config.warmup_steps} exceeds num_train_steps {config.num_train_steps}: "
            f"pass --config.warmup_steps=N with N <= {config.num_train_steps} (e.g. "
            f"{config.num_train_steps // 10}, a tenth of the run)"
        )
    sizes = {
        "heads": model.num_attention_heads,
        "mlp": model.intermediate_size,
        "padded vocabulary": model.padded_vocab_size,  # vocab_size rounded up to 128
    }
    for axis, size in sizes.items():
        if size % shape["tensor"]:
            raise UserError(f"mesh.tensor {shape['tensor']} does not divide model {axis} {size}")
    if model.hidden_size % shape["fsdp"]:
        raise UserError(
            f"mesh.fsdp {shape['fsdp']} does not divide model hidden_size {model.hidden_size} "
            "(FSDP splits the parameters along it)"
        )
    # data.input_files / dataset_dir are found (or reported missing) where the data is located,
    # pipeline.prepare_data: they may be on gs://, or gone once prepared.
    if check_files:
        if data.vocab_file:
            if not epath.Path(data.vocab_file).exists():
                raise UserError(f"data.vocab_file {data.vocab_file} not found")
            entries = vocab_size(data.vocab_file)
            if entries > model.vocab_size:
                raise UserError(
                    f"data.vocab_file {data.vocab_file} has {entries} tokens but "
                    f"model.vocab_size is {model.vocab_size}; "
                    f"set --config.model.vocab_size={entries}"
                )
