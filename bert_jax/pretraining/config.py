"""The pretraining config: every key with its default (one line each), presets, and validation
before compiling. The optimizer, mesh and rerun keys are shared with fine-tuning
(training/config_parts.py). Config files under configs/ call `pretraining_config()` and
override what they change; the tests use the same function with a tiny model.
"""

from __future__ import annotations

import ml_collections
from etils import epath

from bert_jax.data.bundled import BUNDLED_CORPUS, BUNDLED_VOCAB
from bert_jax.data.masking import span_weights
from bert_jax.data.packed_examples import sequences_per_row
from bert_jax.errors import UserError
from bert_jax.model.config import PRESETS, BertConfig
from bert_jax.training import sharding
from bert_jax.training.config_parts import (  # noqa: F401 (check_mode: for configs/*.py)
    add_mesh_keys,
    add_optimizer_defaults,
    add_rerun_keys,
    check_known_keys,
    check_mode,
    check_ranges,
    validate_optimizer_and_batch,
)


def model_config_dict(preset: str = "base", **overrides) -> ml_collections.ConfigDict:
    """The BertConfig fields, by their bert_config.json names: `preset`'s sizes, `overrides`."""
    b = BertConfig.preset(preset, **overrides)  # checked: a bad preset or value fails here
    m = ml_collections.ConfigDict()
    m.vocab_size = b.vocab_size  # V: rows of the word embeddings; must cover the vocab file
    m.hidden_size = b.hidden_size  # H: width of every token vector
    m.num_hidden_layers = b.num_hidden_layers  # L: transformer layers
    m.num_attention_heads = b.num_attention_heads  # A: must divide H
    m.intermediate_size = b.intermediate_size  # feed-forward width (4 H in the presets)
    m.hidden_act = b.hidden_act  # one of model/config.py ACTIVATIONS; "gelu" is the erf form
    m.hidden_dropout_prob = b.hidden_dropout_prob  # dropout on embeddings and layer outputs
    m.attention_probs_dropout_prob = b.attention_probs_dropout_prob  # on attention weights
    m.max_position_embeddings = b.max_position_embeddings  # longest sequence the model takes
    m.type_vocab_size = b.type_vocab_size  # segment ids
    m.initializer_range = b.initializer_range  # truncated-normal init scale
    m.layer_norm_eps = b.layer_norm_eps  # LayerNorm epsilon
    m.dtype = b.dtype  # compute dtype (bfloat16 on TPU/GPU); parameters stay param_dtype
    m.param_dtype = b.param_dtype  # parameters and optimizer state
    m.pre_layer_norm = b.pre_layer_norm  # pre-LN layers; the original BERT is post-LN
    m.remat_policy = b.remat_policy  # recompute activations in backward: model REMAT_POLICIES
    m.attention_implementation = b.attention_implementation  # None (auto), xla, cudnn, blockwise
    # Modern-encoder options (ModernBERT; docs/configs.md): defaults are the original BERT.
    m.position_embedding_type = b.position_embedding_type  # "absolute" or "rope"
    m.rope_theta = b.rope_theta  # rotary base, global layers
    m.local_rope_theta = b.local_rope_theta  # rotary base, local-window layers
    m.ffn_type = b.ffn_type  # "mlp", "geglu", "swiglu"
    m.norm_type = b.norm_type  # "layernorm", "rmsnorm"
    m.use_bias = b.use_bias  # Dense and LayerNorm biases
    m.embedding_norm = b.embedding_norm  # normalise the embeddings
    m.local_attention_window = b.local_attention_window  # 0: every layer global
    m.global_attn_every_n_layers = b.global_attn_every_n_layers  # layer i global if i % n == 0
    m.pooler = b.pooler  # "cls_tanh", "cls_head", "mean_head"
    return m


def data_config_dict() -> ml_collections.ConfigDict:
    """The data keys; defaults: the bundled KJV corpus and its 8192-token vocab."""
    d = ml_collections.ConfigDict()
    d.input_files = BUNDLED_CORPUS  # Comma-separated paths or globs (gs:// too); *.gz: gzip.
    d.vocab_file = BUNDLED_VOCAB  # WordPiece vocabulary, one token per line
    d.lowercase = True  # Lower-case and strip accents (uncased BERT).
    d.data_dir = "~/.cache/bert_jax/datasets"  # Where prepared datasets live (gs:// too).
    d.dataset_dir = ""  # One prepared dataset (prepare prints it); then input_files is unused.
    d.validation_fraction = 0.05  # Share of documents held out (by a hash of each document).
    d.max_line_chars = 20_000  # Longer lines are split at a space (and counted).
    d.word_segmenter = "none"  # Whole-word boundaries: none, jieba or module:callable.
    d.num_workers = 0  # Processes preparing the corpus on first use (0: one per core).
    d.allow_dirty_corpus = False  # Prepare even a corpus that looks binary or mis-vocabbed.
    d.max_seq_length = 128  # Tokens per example, [CLS] and [SEP] included.
    d.max_predictions_per_seq = 20  # Masked positions per example, at most.
    d.masked_lm_prob = 0.15  # Share of tokens masked (80% [MASK], 10% random, 10% kept).
    d.short_seq_prob = 0.1  # Share of examples with a shorter random target length.
    d.dupe_factor = 5  # Distinct passes cycled through with static masking.
    d.dynamic_masking = True  # Fresh pairs and masks every epoch; False: static, as BERT.
    d.whole_word_masking = False  # Mask all pieces of a word together.
    # Masking variants (docs/chinese.md); these defaults leave BERT's masking unchanged.
    d.span_length_weights = ""  # N-gram spans: "0.4,0.3,0.2,0.1" weighs lengths 1..4 ("": 1).
    d.word_char_mask_prob = 0.0  # Per masked word: probability to mask one character only.
    d.max_masked_word_length = 0  # Longer words are masked in part (this many tokens); 0: off.
    d.masked_lm_prob_start = 0.0  # Rate at the start, linear to masked_lm_prob; 0: constant.
    d.masked_lm_prob_schedule_epochs = 0.0  # Epochs the rate takes from start to masked_lm_prob.
    d.eval_masked_lm_prob = 0.0  # Masking rate of the held-out split; 0: masked_lm_prob.
    d.similar_token_prob = 0.0  # Share of [MASK] replacements that become a similar token.
    d.balanced_nsp = True  # 50/50 labels also for single-sentence chunks (False: reference).
    d.next_sentence_prediction = True  # False: MLM only, [CLS] A [SEP] rows of whole sentences.
    d.documents_per_window = 1024  # Random-next pool and shuffle window, in documents.
    d.packing = False  # Several examples per row (worth it at 512 or on short documents).
    d.max_sequences_per_row = 16  # At most this many examples in a packed row.
    d.documents_per_chunk = 64  # Examples are built and delivered in chunks of a window.
    d.worker_count = 0  # Grain worker processes; 0 builds examples in a background thread.
    d.prefetch_chunks = 2  # Chunks built ahead.
    d.cache_max_tokens = 20_000_000  # Smaller corpora are read once and kept in memory.
    d.show_progress = True  # Progress bar while tokenizing.
    return d


def pretraining_config(preset: str = "base", **model_overrides) -> ml_collections.ConfigDict:
    """Every pretraining key with its default; `preset` and `model_overrides` size the model."""
    if preset not in PRESETS:
        raise UserError(f"unknown preset {preset!r}; choose one of {list(PRESETS)}")
    c = ml_collections.ConfigDict()
    c.num_train_steps = 1_000_000  # optimizer steps
    c.batch_size = 256  # global, across all processes
    c.seed = 0  # parameters, data order, masking and dropout
    c.learning_rate = 1e-4  # peak
    c.schedule = "bert"  # google-research/bert: warmup, then decay over all num_train_steps
    c.warmup_steps = 10_000  # linear warmup from 0
    c.decay_power = 1.0  # 1 = linear decay to end_learning_rate_factor * learning_rate
    c.end_learning_rate_factor = 0.0  # final learning rate as a fraction of the peak
    c.wsd_decay_fraction = 0.1  # schedule 'wsd': the last fraction of steps decays
    c.wsd_decay_shape = "linear"  # schedule 'wsd': "linear" or "1-sqrt" (ModernBERT)
    c.batch_warmup_start_size = 0  # > 0: the batch grows from this many rows to batch_size
    c.batch_warmup_steps = 0  # over these steps (in multiples of the start size)
    # optimizer, weight_decay, adam_b1, adam_b2, adam_eps, nvlamb, max_grad_norm, grad_accum_steps
    add_optimizer_defaults(c)
    c.log_every_steps = 100  # training metrics to metrics.jsonl and TensorBoard
    c.eval_every_steps = 10_000  # held-out masked-LM / NSP evaluation
    c.eval_steps = 50  # eval batches per evaluation (the held-out split may be larger)
    c.eval_batch_size = 0  # global rows per eval step; 0: batch_size // grad_accum_steps
    c.checkpoint_every_steps = 10_000  # asynchronous Orbax save
    c.keep_checkpoints = 3  # newest checkpoints kept
    c.init_checkpoint = ""  # start from these parameters (no optimizer state)
    c.peak_flops_per_device = 0.0  # 0: look the device up (CPU: cpu_peak_flops)
    c.cpu_peak_flops = 0.0  # CPU MFU: the host's fp32 peak; 0 measures its matmul rate
    c.model = model_config_dict(preset, **model_overrides)  # model.*: the architecture
    c.data = data_config_dict()  # data.*: corpus, vocabulary, examples, input pipeline
    add_mesh_keys(c)  # mesh.* (data, fsdp, tensor, dcn_data, dcn_fsdp, ...), logical_axis_rules
    c.progress_bar = True  # tqdm bar on process 0
    add_rerun_keys(c)  # overwrite, resume_with_changes
    return c


def bundled_demo_config() -> ml_collections.ConfigDict:
    """The demos' common setup (configs/demo.py, configs/modern_demo.py): the tiny model with a
    128-row position table on the corpus and vocabulary bundled in the package, no dropout (a
    tiny model on a small corpus for a few epochs underfits, it does not overfit), a wider
    initialisation for a model this narrow (0.06), 1,500 steps, and a laptop's cadence of logs,
    evaluations and checkpoints on one device."""
    c = pretraining_config("tiny", max_position_embeddings=128)
    c.data.input_files = str(BUNDLED_CORPUS)
    c.data.vocab_file = str(BUNDLED_VOCAB)
    c.model.vocab_size = vocab_size(BUNDLED_VOCAB)  # 8192, learned from the bundled corpus
    c.data.data_dir = "runs/data"
    c.model.hidden_dropout_prob = 0.0
    c.model.attention_probs_dropout_prob = 0.0
    c.model.initializer_range = 0.06
    c.num_train_steps = 1500
    c.warmup_steps = 50
    c.log_every_steps = 50
    c.eval_every_steps = 250
    c.eval_steps = 20
    c.checkpoint_every_steps = 500
    c.keep_checkpoints = 2
    c.mesh.data = 1  # one CPU device; -1 would use every device
    return c


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


def eval_batch_size(config) -> int:
    """Global rows per pretraining eval step: eval_batch_size, or the training microbatch."""
    return int(config.get("eval_batch_size", 0)) or config.batch_size // int(
        config.get("grad_accum_steps", 1)
    )


PRETRAINING_RANGES = {
    "num_train_steps": "at_least_one",  # before warmup_steps, which is compared with it
    "batch_size": "at_least_one",
    "learning_rate": "positive",
    "warmup_steps": "non_negative",
    "end_learning_rate_factor": "non_negative",
    "decay_power": "positive",
    "wsd_decay_fraction": "probability",
    "batch_warmup_start_size": "non_negative",
    "batch_warmup_steps": "non_negative",
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
    "data.word_char_mask_prob": "probability",
    "data.max_masked_word_length": "non_negative",
    "data.masked_lm_prob_start": "fraction",
    "data.masked_lm_prob_schedule_epochs": "non_negative",
    "data.similar_token_prob": "probability",
    "data.eval_masked_lm_prob": "fraction",
    "data.validation_fraction": "fraction",
    "data.dupe_factor": "at_least_one",
    "data.documents_per_chunk": "at_least_one",
    "data.worker_count": "non_negative",
    "data.max_line_chars": "at_least_one",
}


def _check_batch_warmup(config) -> None:
    """batch_warmup_start_size / batch_warmup_steps: both 0, or a start size below batch_size
    with a positive number of steps; raises UserError."""
    start = int(config.get("batch_warmup_start_size", 0))
    steps = int(config.get("batch_warmup_steps", 0))
    if not start and not steps:
        return
    if not 0 < start < config.batch_size or steps < 1:
        raise UserError(
            f"batch_warmup_start_size {start} and batch_warmup_steps {steps}: the start size must "
            f"be in [1, batch_size {config.batch_size}) with batch_warmup_steps >= 1 "
            "(both 0: no batch-size warmup)"
        )


def vocab_size(vocab_file) -> int:
    """Entries of a WordPiece vocab file (one token per line)."""
    with epath.Path(vocab_file).open(encoding="utf-8") as f:  # gs:// too
        return sum(1 for line in f if line.rstrip("\n"))


def validate_pretraining_config(config, num_devices: int, check_files: bool = True) -> None:
    """Checks everything that can be checked before anything compiles; raises UserError."""
    check_known_keys(config, pretraining_config("tiny"), "pretraining")
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
    # Masks of a full row (`masking.mask_tokens`, as google's create_pretraining_data.py,
    # counting [CLS] and each [SEP]): round(L * p), at least 1, at most its L - 3 other tokens
    # (L - 2 without NSP: one [SEP]).
    length = data.max_seq_length
    text = length - (3 if data.get("next_sentence_prediction", True) else 2)
    rate = max(data.masked_lm_prob, data.get("masked_lm_prob_start", 0.0))  # the schedule's top
    key = "masked_lm_prob"
    if data.get("eval_masked_lm_prob", 0.0) > rate:  # the held-out split's rate
        rate, key = data.eval_masked_lm_prob, "eval_masked_lm_prob"
    needed = min(max(1, int(round(length * rate))), text)
    if data.max_predictions_per_seq < needed:
        raise UserError(
            f"data.max_predictions_per_seq {data.max_predictions_per_seq} is below what "
            f"{key} {rate} needs at max_seq_length "
            f"{data.max_seq_length} ({needed}); raise it to at least {needed}"
        )
    _check_masking_variants(data)
    sequences_per_row(data)  # raises on a packed row of no sequences
    _check_batch_warmup(config)
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


def _check_masking_variants(data) -> None:
    """The masking variants' keys (docs/chinese.md) as `ExampleOptions` accepts them."""
    weights = data.get("span_length_weights", "")
    if weights:
        try:
            span_weights(weights)
        except ValueError as e:
            raise UserError(f"data.{e}") from None
    partial = data.get("word_char_mask_prob", 0) or data.get("max_masked_word_length", 0)
    if partial and not data.whole_word_masking:
        raise UserError(
            "data.word_char_mask_prob and data.max_masked_word_length mask words in part: "
            "they need data.whole_word_masking=True"
        )
    start = data.get("masked_lm_prob_start", 0)
    if start and (start <= data.masked_lm_prob or not data.masked_lm_prob_schedule_epochs):
        raise UserError(
            f"data.masked_lm_prob_start {start} starts a schedule down to data.masked_lm_prob "
            f"{data.masked_lm_prob}: it must be higher, with data.masked_lm_prob_schedule_epochs "
            "> 0 (the epochs the rate takes to come down)"
        )
