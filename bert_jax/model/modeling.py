"""BERT in Flax Linen: config, encoder, pretraining heads and task heads.

Shapes use B = batch, T = sequence length, H = hidden_size, N = attention heads, D = H // N,
F = intermediate_size, V = vocab_size, V' = padded_vocab_size, P = max_predictions_per_seq,
S = sequences per packed row.

Packed rows (several sequences per row, Krell et al. 2021) pass segment_ids [B, T] (0 = padding,
1..S = sequence), optionally position_ids [B, T] and, for per-sequence pooled outputs,
cls_positions [B, S]: see BertModel. Without them a row is one sequence, as in the original.

The model speaks logical axis names only (see `bert_jax.training.sharding` for the mesh mapping):
parameters use `vocab, embed, heads, mlp, embed_out, length, type_vocab, classes`; activations use
`act_batch, act_length, act_embed, act_heads, act_mlp`.

The vocabulary is padded to V' (a multiple of VOCAB_PAD_MULTIPLE = 128) inside the model, so that
`mesh.tensor` 2, 4, 8... divide it (30,522 = 2 x 3 x 5,087 does not divide by 4). The padded rows
of the word embeddings and MLM bias start at zero and the padded logits are masked to the float32
minimum, so they never win, carry no probability and get no gradient: loss, accuracy and every
update equal those of the unpadded model. Exports trim them, imports add them (convert/).

Mixed precision (dtype=bfloat16; parameters and optimizer state stay float32), decided per op
as cuDNN's fused attention and jax.nn.dot_product_attention do for QK^T, and NVIDIA's AMP for
softmax and loss:
- matmuls take bfloat16 operands; the attention logits QK^T and the 30k-way MLM decoder
  accumulate *and return* float32 (preferred_element_type), so neither the softmax over keys nor
  the vocabulary softmax / loss ever sees logits rounded to bfloat16 (8 bits of mantissa: a
  logit of 20 would move by up to 0.06); softmax, LayerNorm statistics and the loss run in
  float32. Their backward products round the float32 cotangent to bfloat16 operands
  (`mixed_precision_dot`), as cuDNN and jax.nn.dot_product_attention do, keeping bf16 speed.
- attention probabilities are cast back to bfloat16 for the product with V (as the fused
  kernels and jax.nn.dot_product_attention do).
- dropout scales by 1 / keep in float32 before rounding (a bfloat16 scale would be 1.109375
  for 1.1111, shrinking each dropped-out activation by 0.16% on average).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from bert_jax.untrusted import (
    CONFIG_REAL_RANGES,
    CONFIG_SIZE_BOUNDS,
    MAX_PARAMETERS,
    is_int,
    is_real,
    read_json_object,
    shown,
)
from bert_jax.errors import UserError
from bert_jax.model.crf import TagTransitions

Array = jax.Array

# Released sizes of google-research/bert (the 24 smaller models and BERT-Base/Large).
PRESETS: dict[str, dict[str, int]] = {
    "tiny": dict(num_hidden_layers=2, hidden_size=128, num_attention_heads=2),
    "mini": dict(num_hidden_layers=4, hidden_size=256, num_attention_heads=4),
    "small": dict(num_hidden_layers=4, hidden_size=512, num_attention_heads=8),
    "medium": dict(num_hidden_layers=8, hidden_size=512, num_attention_heads=8),
    "base": dict(num_hidden_layers=12, hidden_size=768, num_attention_heads=12),
    "large": dict(num_hidden_layers=24, hidden_size=1024, num_attention_heads=16),
}

ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    # Names as Hugging Face's. "gelu" is the exact erf form (PyTorch's and Hugging Face's "gelu",
    # NVIDIA BERT's). google-research/bert's modeling.py computes its "gelu" with the tanh
    # approximation, which is "gelu_new" here: convert/tf1.py maps a bert_config.json "gelu" to
    # "gelu_new" and writes "gelu_new" (and its aliases below) back as "gelu".
    # XLA's erf is a short polynomial, about twice as fast as the erfc that
    # jax.nn.gelu(approximate=False) uses, forward+backward.
    "gelu": lambda x: 0.5 * x * (1.0 + jax.lax.erf(x * (2.0**-0.5))),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_fast": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
    "tanh": jnp.tanh,
}

VOCAB_PAD_MULTIPLE = 128  # the embedding table's rows are padded to a multiple of this

REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


@dataclasses.dataclass(frozen=True)
class BertConfig:
    """Architecture; field names follow bert_config.json / Hugging Face config.json."""

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    dtype: str = "float32"  # compute dtype (e.g. bfloat16); parameters stay param_dtype
    param_dtype: str = "float32"
    pre_layer_norm: bool = False  # the original BERT is post-LN
    remat_policy: str = "none"  # one of REMAT_POLICIES
    attention_implementation: str | None = None  # None (XLA picks), "xla" or "cudnn"

    def __post_init__(self):
        problems = []
        for name, bound in CONFIG_SIZE_BOUNDS.items():
            value = getattr(self, name)
            if not is_int(value) or value <= 0:
                problems.append(f"{name} must be a positive integer, got {shown(value)}")
            elif value > bound:
                problems.append(f"{name} {value} is more than {bound}")
        if not problems and self.hidden_size % self.num_attention_heads:
            problems.append(
                f"hidden_size {self.hidden_size} is not divisible by num_attention_heads "
                f"{self.num_attention_heads}"
            )
        if not problems and self.num_parameters() > MAX_PARAMETERS:
            problems.append(
                f"{self.num_parameters()} parameters are more than {MAX_PARAMETERS}; "
                "check vocab_size, hidden_size, intermediate_size and num_hidden_layers"
            )
        if not isinstance(self.hidden_act, str) or self.hidden_act not in ACTIVATIONS:
            problems.append(
                f"hidden_act {shown(self.hidden_act)} is not one of {sorted(ACTIVATIONS)}"
            )
        for name, (low, high, high_included) in CONFIG_REAL_RANGES.items():
            value = getattr(self, name)
            inside = (
                is_real(value)
                and low <= value
                and (value <= high if high_included else value < high)
            )
            if not inside:
                interval = f"[{low:g}, {high:g}{']' if high_included else ')'}"
                problems.append(f"{name} must be in {interval}, got {shown(value)}")
        if not is_real(self.layer_norm_eps) or not 0 < self.layer_norm_eps <= 1:
            problems.append(f"layer_norm_eps must be in (0, 1], got {shown(self.layer_norm_eps)}")
        for name in ("dtype", "param_dtype"):
            try:
                jnp.dtype(getattr(self, name))
            except (TypeError, ValueError):
                problems.append(f"{name} {shown(getattr(self, name))} is not a dtype name")
        if not isinstance(self.pre_layer_norm, bool):
            problems.append(
                f"pre_layer_norm must be true or false, got {shown(self.pre_layer_norm)}"
            )
        if not isinstance(self.remat_policy, str) or self.remat_policy not in REMAT_POLICIES:
            problems.append(
                f"remat_policy {shown(self.remat_policy)} is not one of {list(REMAT_POLICIES)}"
            )
        if not isinstance(self.attention_implementation, str | None):
            problems.append(
                "attention_implementation must be a name or None, got "
                f"{shown(self.attention_implementation)}"
            )
        if problems:
            raise UserError("invalid BertConfig: " + "; ".join(problems))

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def padded_vocab_size(self) -> int:
        """V': rows of the word-embedding table and MLM bias as stored (see the module doc)."""
        return -(-self.vocab_size // VOCAB_PAD_MULTIPLE) * VOCAB_PAD_MULTIPLE

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> BertConfig:
        """A released size by name (tiny, mini, small, medium, base, large), with overrides."""
        if name not in PRESETS:
            raise UserError(f"unknown BERT preset {name!r}; choose one of {list(PRESETS)}")
        fields = dict(PRESETS[name])
        fields["intermediate_size"] = 4 * fields["hidden_size"]
        fields.update(overrides)
        return cls(**fields)

    @classmethod
    def from_dict(cls, values: dict[str, Any], source=None) -> BertConfig:
        """Builds from a bert_config.json / config.json dict; unknown keys are ignored.

        Every field is checked for its type and range (`bert_jax.untrusted` holds the
        bounds), so
        a config read from a downloaded file cannot size an absurd model. `source`, the file the
        dict was read from, is named in the error.
        """
        if not isinstance(values, Mapping):
            raise UserError(
                f"{source or 'BertConfig'}: expected an object of config fields, found "
                f"{type(values).__name__}"
            )
        known = {f.name for f in dataclasses.fields(cls)}
        try:
            return cls(**{k: v for k, v in values.items() if k in known})
        except UserError as err:
            if source is None:
                raise
            raise UserError(f"{source}: {err}") from err

    @classmethod
    def from_json_file(cls, path) -> BertConfig:
        return cls.from_dict(read_json_object(path, "a BERT config"), source=path)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> BertConfig:
        return dataclasses.replace(self, **changes)

    def num_parameters(self, include_heads: bool = True) -> int:
        """Analytic parameter count (BertModel, plus MLM/NSP heads when include_heads).

        Counts the vocab_size rows the model has; the arrays hold padded_vocab_size rows (the
        zero padding adds (V' - V) * H, and V' - V with the MLM head)."""
        h, f, v = self.hidden_size, self.intermediate_size, self.vocab_size
        embeddings = (v + self.max_position_embeddings + self.type_vocab_size) * h + 2 * h
        layer = 4 * (h * h + h) + 2 * h * f + f + h + 4 * h
        pooler = h * h + h
        total = embeddings + self.num_hidden_layers * layer + pooler
        if include_heads:
            total += h * h + h + 2 * h + v + 2 * h + 2
        return total


def _kernel_init(config: BertConfig, axes: tuple[str | None, ...]):
    init = nn.initializers.truncated_normal(config.initializer_range)
    return nn.with_logical_partitioning(init, axes)


def _zero_padded_rows(init, rows: int):
    """An initializer that draws `rows` rows with `init` and zero-fills the rest of the table."""

    def padded(key, shape, dtype=jnp.float32):
        real = init(key, (rows, *shape[1:]), dtype)
        return jnp.pad(real, ((0, shape[0] - rows), *[(0, 0)] * (len(shape) - 1)))

    return padded


def pad_vocab_rows(config: BertConfig, value):
    """[vocab_size, ...] -> [padded_vocab_size, ...] with zero rows (numpy or jax arrays)."""
    extra = config.padded_vocab_size - value.shape[0]
    return value if extra <= 0 else np.pad(value, ((0, extra), *[(0, 0)] * (value.ndim - 1)))


def trim_vocab_rows(config: BertConfig, value):
    """[padded_vocab_size, ...] -> [vocab_size, ...]: the model's own rows."""
    return value[: config.vocab_size]


def is_vocab_param(path: tuple[str, ...]) -> bool:
    """The parameters whose leading axis is the (padded) vocabulary."""
    return tuple(path[-2:]) == ("word_embeddings", "embedding") or path[-1] == "mlm_output_bias"


def _zeros(axes: tuple[str | None, ...]):
    return nn.with_logical_partitioning(nn.initializers.zeros_init(), axes)


def _ones(axes: tuple[str | None, ...]):
    return nn.with_logical_partitioning(nn.initializers.ones_init(), axes)


class Dense(nn.Module):
    """A dense layer with a 2-D kernel carrying logical axis names."""

    features: int
    config: BertConfig
    axes: tuple[str | None, str | None]

    @nn.compact
    def __call__(self, x: Array) -> Array:
        cfg = self.config
        y = nn.Dense(
            self.features,
            dtype=jnp.dtype(cfg.dtype),
            param_dtype=jnp.dtype(cfg.param_dtype),
            kernel_init=_kernel_init(cfg, self.axes),
            bias_init=_zeros((self.axes[1],)),
            name="dense",
        )(x.reshape(-1, x.shape[-1]))
        return y.reshape(*x.shape[:-1], self.features)


def mixed_precision_dot(dtype) -> jax.lax.DotAlgorithmPreset | None:
    """The dot algorithm for float32-output products of `dtype` operands: BF16_BF16_F32 under
    bfloat16, so that the backward pass's products (which take the float32 cotangent) also run
    on bfloat16 operands at bfloat16 speed, as jax.nn.dot_product_attention, cuDNN and TPUs do
    (jax issue 24047); None, the default, otherwise."""
    return jax.lax.DotAlgorithmPreset.BF16_BF16_F32 if jnp.dtype(dtype) == jnp.bfloat16 else None


def _mix32(x: Array) -> Array:
    """MurmurHash3's 32-bit finaliser: a bijection on uint32 with full avalanche."""
    x = x ^ (x >> 16)
    x = x * jnp.uint32(0x85EBCA6B)
    x = x ^ (x >> 13)
    x = x * jnp.uint32(0xC2B2AE35)
    return x ^ (x >> 16)


def dropout_keep_mask(
    rng: Array, rate: float, shape: tuple[int, ...], rows: Sequence[int] | None = None
) -> tuple[Array, float]:
    """A Bernoulli(1 - rate) keep mask of `shape` and its exact scale, 1 / P(keep).

    Dropout draws more random numbers than anything else in training (B*N*T*T per layer for the
    attention probabilities), and jax.random's threefry spends 20 rounds on each 32-bit word,
    which on CPU costs several times the matmuls it masks. Here one threefry call makes a 64-bit
    key, then each element takes 16 bits of a keyed counter hash (two keyed MurmurHash3
    finalisers): P(drop) = round(rate * 2**16) / 2**16.

    The leading (batch) index keys the hash and the counter runs within a row, so it stays a
    bijection of the word index for rows of up to 2**32 words (N*T*T/2 = 2M for BERT-Large at
    512) and no two rows share a mask however large the batch; a counter over the whole array
    would wrap at 2**32 words, e.g. after 2,048 rows of BERT-Large attention at 512.
    rows: compute only these leading indices of the mask of `shape` (inspection and tests).
    """
    k1, k2 = jax.random.bits(rng, (2,), jnp.uint32)
    last = shape[-1] if shape else 1
    words_shape = (*shape[:-1], (last + 1) // 2)
    out_shape = shape
    if rows is not None:
        if len(shape) < 2:
            raise ValueError(f"rows needs a mask of rank >= 2, not shape {shape}")
        words_shape = (len(rows), *words_shape[1:])
        out_shape = (len(rows), *shape[1:])
    # Row-major index of each word within its row, from per-axis iotas so that it shards like x.
    first = 1 if len(words_shape) > 1 else len(words_shape)
    counter = jnp.zeros(words_shape, jnp.uint32)
    for axis in range(first, len(words_shape)):
        stride = math.prod(words_shape[axis + 1 :])
        counter += jax.lax.broadcasted_iota(jnp.uint32, words_shape, axis) * jnp.uint32(stride)
    row_shape = (words_shape[0], *[1] * (len(words_shape) - 1)) if first == 1 else ()
    if rows is not None:
        row = jnp.asarray(rows, jnp.uint32).reshape(row_shape)
    elif first == 1:
        row = jax.lax.broadcasted_iota(jnp.uint32, row_shape, 0)
    else:
        row = jnp.uint32(0)
    row_key = _mix32((row * jnp.uint32(0x27D4EB2F)) ^ k1)  # distinct for every row < 2**32
    bits = _mix32(_mix32((counter * jnp.uint32(0x9E3779B9)) ^ row_key) + k2)
    halves = jax.lax.bitcast_convert_type(bits, jnp.uint16)  # [..., words, 2]
    halves = halves.reshape(*words_shape[:-1], 2 * words_shape[-1])[..., :last]
    threshold = min(round(rate * 65536), 65535)
    return halves.reshape(out_shape) >= jnp.uint16(threshold), 65536 / (65536 - threshold)


class Dropout(nn.Module):
    """Inverted dropout with `dropout_keep_mask`; draws from the "dropout" RNG stream."""

    rate: float

    @nn.compact
    def __call__(self, x: Array, deterministic: bool) -> Array:
        if deterministic or self.rate == 0.0:
            return x
        keep, scale = dropout_keep_mask(self.make_rng("dropout"), self.rate, x.shape)
        scaled = (x.astype(jnp.float32) * scale).astype(x.dtype)  # the scale not rounded to x's
        return jnp.where(keep, scaled, jnp.zeros((), x.dtype))


class LayerNorm(nn.Module):
    config: BertConfig

    @nn.compact
    def __call__(self, x: Array) -> Array:
        cfg = self.config
        return nn.LayerNorm(
            epsilon=cfg.layer_norm_eps,
            dtype=jnp.dtype(cfg.dtype),
            param_dtype=jnp.dtype(cfg.param_dtype),
            scale_init=_ones(("embed",)),
            bias_init=_zeros(("embed",)),
            name="norm",
        )(x)


class BertEmbeddings(nn.Module):
    """Word + learned position + token type embeddings, LayerNorm, dropout."""

    config: BertConfig

    def setup(self):
        cfg = self.config
        embed = lambda n, init, name: nn.Embed(  # noqa: E731
            n,
            cfg.hidden_size,
            dtype=jnp.dtype(cfg.dtype),
            param_dtype=jnp.dtype(cfg.param_dtype),
            embedding_init=init,
            name=name,
        )
        # V' rows: the vocabulary's drawn as usual, the padding zero (and kept zero).
        normal = nn.initializers.truncated_normal(cfg.initializer_range)
        word_init = _zero_padded_rows(normal, cfg.vocab_size)
        self.word_embeddings = embed(
            cfg.padded_vocab_size,
            nn.with_logical_partitioning(word_init, ("vocab", "embed")),
            "word_embeddings",
        )
        self.position_embeddings = embed(
            cfg.max_position_embeddings,
            _kernel_init(cfg, ("length", "embed")),
            "position_embeddings",
        )
        self.token_type_embeddings = embed(
            cfg.type_vocab_size, _kernel_init(cfg, ("type_vocab", "embed")), "token_type_embeddings"
        )
        self.layer_norm = LayerNorm(cfg, name="LayerNorm")
        self.dropout = Dropout(cfg.hidden_dropout_prob)

    def __call__(self, input_ids, token_type_ids, position_ids, deterministic: bool) -> Array:
        x = (
            self.word_embeddings(input_ids)  # [B, T, H]
            + self.position_embeddings(position_ids)
            + self.token_type_embeddings(token_type_ids)
        )
        if not self.config.pre_layer_norm:
            x = self.layer_norm(x)
        x = self.dropout(x, deterministic=deterministic)
        return nn.with_logical_constraint(x, ("act_batch", "act_length", "act_embed"))

    def attend(self, x: Array) -> Array:
        """The tied MLM decoder: [..., H] -> [..., V'] float32 logits against the padded table.

        Operands in the compute dtype, products accumulated and returned in float32 (nn.Embed's
        attend would promote both to the compute dtype and round the logits to it)."""
        dtype = jnp.dtype(self.config.dtype)
        table = self.word_embeddings.embedding  # [V', H]
        return jnp.einsum(
            "...h,vh->...v",
            x.astype(dtype),
            table.astype(dtype),
            precision=mixed_precision_dot(dtype),
            preferred_element_type=jnp.float32,
        )


class BertSelfAttention(nn.Module):
    """Multi-head self-attention: fused `jax.nn.dot_product_attention` unless dropout is active."""

    config: BertConfig

    @nn.compact
    def __call__(
        self, x: Array, mask: Array, deterministic: bool, query_positions: Array | None = None
    ) -> Array:
        """x: [B, T, H]; mask: bool, True where a query may attend a key: [B, T] (per key) or
        broadcastable to [B, 1, Tq, T]; query_positions: [B, S] to attend from only those
        positions (Tq = S), else every position (Tq = T). Returns [B, Tq, H]."""
        cfg = self.config
        n, d = cfg.num_attention_heads, cfg.head_dim

        def project(name: str, y: Array) -> Array:
            b, t, _ = y.shape
            y = Dense(cfg.hidden_size, cfg, ("embed", "heads"), name=name)(y)
            y = y.reshape(b, t, n, d)  # [B, T, N, D]
            return nn.with_logical_constraint(y, ("act_batch", "act_length", "act_heads", None))

        xq = x if query_positions is None else gather_positions(x, query_positions)  # [B, Tq, H]
        query, key, value = project("query", xq), project("key", x), project("value", x)
        if mask.ndim == 2:
            mask = mask[:, None, None, :]  # [B, 1, 1, T]
        b, tq = xq.shape[:2]
        dropout_active = not deterministic and cfg.attention_probs_dropout_prob > 0.0
        if dropout_active:
            # The fused kernels have no dropout on the probabilities; BERT's recipe has 0.1.
            # float32 products, as jax.nn.dot_product_attention: never rounded to bfloat16.
            logits = jnp.einsum(
                "bqnd,bknd->bnqk",
                query,
                key,
                precision=mixed_precision_dot(query.dtype),
                preferred_element_type=jnp.float32,
            )  # [B, N, Tq, T]
            logits = logits * jnp.float32(1.0 / math.sqrt(d))
            logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
            probs = jax.nn.softmax(logits, axis=-1)  # [B, N, Tq, T]
            probs = Dropout(cfg.attention_probs_dropout_prob)(probs, deterministic=False)
            context = jnp.einsum("bnqk,bknd->bqnd", probs.astype(value.dtype), value)
        else:
            context = jax.nn.dot_product_attention(
                query, key, value, mask=mask, implementation=cfg.attention_implementation
            )  # [B, Tq, N, D]
        context = context.reshape(b, tq, cfg.hidden_size)
        context = nn.with_logical_constraint(context, ("act_batch", "act_length", "act_heads"))
        return Dense(cfg.hidden_size, cfg, ("heads", "embed"), name="output")(context)


class BertLayer(nn.Module):
    """One encoder block: attention then feed-forward, post-LN (original) or pre-LN."""

    config: BertConfig

    @nn.compact
    def __call__(
        self, x: Array, mask: Array, deterministic: bool, query_positions: Array | None = None
    ) -> Array:
        """x: [B, T, H] -> [B, T, H], or [B, S, H] at query_positions [B, S] only."""
        cfg = self.config
        dropout = Dropout(cfg.hidden_dropout_prob)
        attention_norm = LayerNorm(cfg, name="attention_layer_norm")
        output_norm = LayerNorm(cfg, name="output_layer_norm")

        h = attention_norm(x) if cfg.pre_layer_norm else x
        h = BertSelfAttention(cfg, name="attention")(h, mask, deterministic, query_positions)
        if query_positions is not None:
            x = gather_positions(x, query_positions)  # [B, S, H]
        x = x + dropout(h, deterministic=deterministic)
        if not cfg.pre_layer_norm:
            x = attention_norm(x)

        h = output_norm(x) if cfg.pre_layer_norm else x
        h = Dense(cfg.intermediate_size, cfg, ("embed", "mlp"), name="intermediate")(h)  # [B, T, F]
        h = nn.with_logical_constraint(h, ("act_batch", "act_length", "act_mlp"))
        h = ACTIVATIONS[cfg.hidden_act](h)
        h = Dense(cfg.hidden_size, cfg, ("mlp", "embed"), name="output")(h)  # [B, T, H]
        x = x + dropout(h, deterministic=deterministic)
        if not cfg.pre_layer_norm:
            x = output_norm(x)
        return nn.with_logical_constraint(x, ("act_batch", "act_length", "act_embed"))


class BertEncoder(nn.Module):
    config: BertConfig

    @nn.compact
    def __call__(
        self, x: Array, mask: Array, deterministic: bool, last_positions: Array | None = None
    ) -> Array:
        """x: [B, T, H] -> [B, T, H]; with last_positions [B, S] the last layer computes only
        those positions (its keys and values still cover every token) -> [B, S, H]."""
        cfg = self.config
        layer_cls = BertLayer
        if cfg.remat_policy != "none":
            layer_cls = nn.remat(
                BertLayer, policy=REMAT_POLICIES[cfg.remat_policy], static_argnums=(3,)
            )
        for i in range(cfg.num_hidden_layers):
            last = i == cfg.num_hidden_layers - 1
            if last and last_positions is not None:
                if mask.shape[2] > 1:  # per-query masks: the rows of the kept queries
                    mask = jnp.take_along_axis(mask, last_positions[:, None, :, None], axis=2)
                x = layer_cls(cfg, name=f"layer_{i}")(x, mask, deterministic, last_positions)
            else:
                x = layer_cls(cfg, name=f"layer_{i}")(x, mask, deterministic)
        if cfg.pre_layer_norm:
            x = LayerNorm(cfg, name="final_layer_norm")(x)
        return x


def segment_attention_mask(segment_ids: Array) -> Array:
    """Block-diagonal attention of packed rows: segment_ids [B, T] -> bool [B, 1, T, T], True where
    query and key belong to the same sequence (padding, segment 0, sees only padding)."""
    return segment_ids[:, None, :, None] == segment_ids[:, None, None, :]


def segment_positions(segment_ids: Array) -> Array:
    """Positions that restart at every sequence of a packed row: [B, T] -> [B, T] int32."""
    t = segment_ids.shape[1]
    index = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), segment_ids.shape)
    changes = jnp.concatenate(
        [jnp.ones_like(segment_ids[:, :1], bool), segment_ids[:, 1:] != segment_ids[:, :-1]], 1
    )
    starts = jax.lax.cummax(jnp.where(changes, index, 0), axis=1)
    return index - starts


class BertModel(nn.Module):
    """The encoder: returns (sequence_output [B, T, H], pooled_output [B, H]).

    Packed rows (several sequences per row, as in Krell et al. 2021) pass segment_ids; each
    sequence then attends only to itself, its positions restart (unless position_ids are given)
    and, with cls_positions, it gets its own pooled output from its own [CLS].
    """

    config: BertConfig

    def setup(self):
        self.embeddings = BertEmbeddings(self.config)
        self.encoder = BertEncoder(self.config)
        self.pooler = Dense(self.config.hidden_size, self.config, ("embed", "embed_out"))

    def __call__(
        self,
        input_ids: Array,
        token_type_ids: Array | None = None,
        attention_mask: Array | None = None,
        deterministic: bool = True,
        *,
        segment_ids: Array | None = None,
        position_ids: Array | None = None,
        cls_positions: Array | None = None,
        pooled_only: bool = False,
    ) -> tuple[Array | None, Array]:
        """input_ids, token_type_ids, attention_mask: [B, T] ints (mask 1 = real token).

        segment_ids: [B, T] ints, 0 = padding, 1..S = the sequence of a packed row a token
            belongs to; attention is block-diagonal (attention_mask is then optional).
        position_ids: [B, T]; default 0..T-1, or restarting per sequence with segment_ids.
        cls_positions: [B, S] where each sequence's [CLS] sits; pooled_output is then
            [B, S, H] (one per sequence) instead of [B, H] (position 0).
        pooled_only: the last layer computes only the pooled positions (what sequence
            classification reads; same values, fewer FLOPs) and sequence_output is None.
        """
        b, t = input_ids.shape
        if t > self.config.max_position_embeddings:
            raise UserError(
                f"sequence length {t} exceeds max_position_embeddings "
                f"{self.config.max_position_embeddings}"
            )
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        if segment_ids is None:
            if attention_mask is None:
                attention_mask = jnp.ones_like(input_ids)
            mask = (attention_mask > 0)[:, None, None, :]  # [B, 1, 1, T], per key
            if position_ids is None:
                position_ids = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
        else:
            mask = segment_attention_mask(segment_ids)  # [B, 1, T, T]
            if attention_mask is not None:
                mask = mask & (attention_mask > 0)[:, None, None, :]
            if position_ids is None:
                position_ids = segment_positions(segment_ids)
        x = self.embeddings(input_ids, token_type_ids, position_ids, deterministic)
        pooled_at = cls_positions if cls_positions is not None else jnp.zeros((b, 1), jnp.int32)
        if pooled_only:
            sequence_output = None
            first = self.encoder(x, mask, deterministic, pooled_at)  # [B, S, H]
        else:
            sequence_output = self.encoder(x, mask, deterministic)  # [B, T, H]
            first = gather_positions(sequence_output, pooled_at)  # [B, S, H]
        pooled_output = jnp.tanh(self.pooler(first))  # [B, S, H]
        if cls_positions is None:
            pooled_output = pooled_output[:, 0]  # [B, H]
        return sequence_output, pooled_output

    def attend(self, x: Array) -> Array:
        return self.embeddings.attend(x)


@flax.struct.dataclass
class BertPreTrainingOutput:
    mlm_logits: Array  # [B, P, V] with masked_lm_positions, else [B, T, V]; float32
    padded_mlm_logits: Array  # [B, P, V'] the same, plus V' - V columns at the float32 minimum
    nsp_logits: Array  # [B, 2], or [B, S, 2] per packed sequence (cls_positions); float32
    sequence_output: Array  # [B, T, H]
    pooled_output: Array  # [B, H], or [B, S, H]


def gather_positions(sequence: Array, positions: Array) -> Array:
    """sequence [B, T, H], positions [B, P] -> [B, P, H]."""
    return jnp.take_along_axis(sequence, positions[:, :, None].astype(jnp.int32), axis=1)


@jax.custom_vjp
def add_vocab_bias(logits: Array, bias: Array) -> Array:
    """logits [..., V] + bias [V]. The bias gradient, a column sum over every predicted position,
    is taken as a matrix-vector product: XLA's CPU reduction over leading axes is several times
    slower, and at [B * P, V] it costs as much as the decoder matmul."""
    return logits + bias


def _add_vocab_bias_fwd(logits, bias):
    return logits + bias, None


def _add_vocab_bias_bwd(_, grad):
    rows = grad.reshape(-1, grad.shape[-1])  # [B * P, V]
    return grad, jnp.ones((rows.shape[0],), rows.dtype) @ rows


add_vocab_bias.defvjp(_add_vocab_bias_fwd, _add_vocab_bias_bwd)


class BertForPreTraining(nn.Module):
    """BertModel + masked-LM head (decoder tied to the word embeddings) + next-sentence head."""

    config: BertConfig

    @nn.compact
    def __call__(
        self,
        input_ids: Array,
        token_type_ids: Array | None = None,
        attention_mask: Array | None = None,
        masked_lm_positions: Array | None = None,
        deterministic: bool = True,
        **packed: Array,
    ) -> BertPreTrainingOutput:
        """packed: segment_ids, position_ids, cls_positions of packed rows (see BertModel); the
        masked_lm_positions then index into the row and nsp_logits are per sequence."""
        cfg = self.config
        bert = BertModel(cfg, name="bert")
        sequence_output, pooled_output = bert(
            input_ids, token_type_ids, attention_mask, deterministic, **packed
        )
        # The sparse head: vocabulary logits only where tokens were masked (as the reference).
        h = sequence_output
        if masked_lm_positions is not None:
            h = gather_positions(sequence_output, masked_lm_positions)  # [B, P, H]
        h = Dense(cfg.hidden_size, cfg, ("embed", "embed_out"), name="mlm_transform")(h)
        h = ACTIVATIONS[cfg.hidden_act](h)
        h = LayerNorm(cfg, name="mlm_layer_norm")(h)
        logits = bert.attend(h)  # [B, P, V'] float32
        bias = self.param(
            "mlm_output_bias",
            _zeros(("vocab",)),
            (cfg.padded_vocab_size,),
            jnp.dtype(cfg.param_dtype),
        )
        padded = add_vocab_bias(logits, bias.astype(jnp.float32))
        if cfg.padded_vocab_size != cfg.vocab_size:
            column = jax.lax.broadcasted_iota(jnp.int32, padded.shape, padded.ndim - 1)
            padded = jnp.where(column < cfg.vocab_size, padded, jnp.finfo(jnp.float32).min)
        nsp_logits = Dense(2, cfg, ("embed", "classes"), name="nsp")(pooled_output)
        return BertPreTrainingOutput(
            # Unused under jit (the loss reads padded_mlm_logits), the slice costs nothing there.
            mlm_logits=padded[..., : cfg.vocab_size],
            padded_mlm_logits=padded,
            nsp_logits=nsp_logits.astype(jnp.float32),
            sequence_output=sequence_output,
            pooled_output=pooled_output,
        )


class BertForSequenceClassification(nn.Module):
    """Pooled [CLS] -> dropout -> dense; num_labels 1 means regression. Returns [B, num_labels],
    or [B, S, num_labels] for packed rows (one per sequence, see BertModel's cls_positions)."""

    config: BertConfig
    num_labels: int

    @nn.compact
    def __call__(
        self, input_ids, token_type_ids=None, attention_mask=None, deterministic=True, **packed
    ):
        """packed: segment_ids, position_ids, cls_positions (see BertModel)."""
        cfg = self.config
        _, pooled = BertModel(cfg, name="bert")(
            input_ids, token_type_ids, attention_mask, deterministic, pooled_only=True, **packed
        )
        pooled = Dropout(cfg.hidden_dropout_prob)(pooled, deterministic=deterministic)
        logits = Dense(self.num_labels, cfg, ("embed", "classes"), name="classifier")(pooled)
        return logits.astype(jnp.float32)


class BertForTokenClassification(nn.Module):
    """Every position -> dropout -> dense. Returns [B, T, num_labels] (packed rows too); with
    crf, (those scores, the CRF's transition scores {'transitions', 'start', 'end'}: crf.py).
    window w > 0: the dense layer reads each position's vector beside those of the w positions
    on either side within its sequence (zeros beyond it: padding, another packed sequence), a
    convolution of width 2w + 1 over the last layer after its dropout (one mask per position,
    which every window holding that position sees)."""

    config: BertConfig
    num_labels: int
    crf: bool = False
    window: int = 0

    @nn.compact
    def __call__(
        self, input_ids, token_type_ids=None, attention_mask=None, deterministic=True, **packed
    ):
        """packed: segment_ids, position_ids (see BertModel)."""
        cfg = self.config
        sequence, _ = BertModel(cfg, name="bert")(
            input_ids, token_type_ids, attention_mask, deterministic, **packed
        )
        sequence = Dropout(cfg.hidden_dropout_prob)(sequence, deterministic=deterministic)
        if self.window:
            segments = packed.get("segment_ids", attention_mask)  # [B, T], 0 = padding
            if segments is None:
                segments = jnp.ones_like(input_ids)
            sequence = neighbourhood(sequence, segments, self.window)  # [B, T, (2w + 1) H]
        logits = Dense(self.num_labels, cfg, ("embed", "classes"), name="classifier")(sequence)
        if self.crf:
            return logits.astype(jnp.float32), TagTransitions(self.num_labels, name="crf")()
        return logits.astype(jnp.float32)


def neighbourhood(x: Array, segments: Array, window: int) -> Array:
    """x [B, T, H], segments [B, T] -> [B, T, (2 * window + 1) * H]: at t, x[t - window] ..
    x[t + window] side by side, each zero where it lies outside the row or in another segment."""
    t = x.shape[1]
    parts = []
    for offset in range(-window, window + 1):
        source = jnp.arange(t) + offset  # [T]
        inside = (source >= 0) & (source < t)
        source = jnp.clip(source, 0, t - 1)
        same = (segments[:, source] == segments) & inside  # [B, T]
        parts.append(jnp.where(same[..., None], x[:, source], jnp.zeros((), x.dtype)))
    return jnp.concatenate(parts, axis=-1)


class BertForQuestionAnswering(nn.Module):
    """Span QA: returns (start_logits [B, T], end_logits [B, T]); one window per row."""

    config: BertConfig

    @nn.compact
    def __call__(self, input_ids, token_type_ids=None, attention_mask=None, deterministic=True):
        cfg = self.config
        sequence, _ = BertModel(cfg, name="bert")(
            input_ids, token_type_ids, attention_mask, deterministic
        )
        logits = Dense(2, cfg, ("embed", "classes"), name="qa_outputs")(sequence)
        logits = logits.astype(jnp.float32)
        return logits[..., 0], logits[..., 1]
