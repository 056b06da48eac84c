"""The model's numerical ops: mixed-precision dots, a fast counter-hash dropout, and the MLM
vocabulary bias with a matrix-vector gradient. Why each is as it is: docs/design/model.md.

Under bfloat16, matmuls take bfloat16 operands while QK^T and the MLM decoder accumulate and
return float32 (`mixed_precision_dot` keeps their backward products on bfloat16 operands too);
dropout scales by 1 / keep in float32 before rounding.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array


def mixed_precision_dot(dtype) -> jax.lax.DotAlgorithmPreset | None:
    """The dot algorithm for float32-output products of `dtype` operands: BF16_BF16_F32 under
    bfloat16, so that the backward pass's products (which take the float32 cotangent) also run
    on bfloat16 operands at bfloat16 speed, as jax.nn.dot_product_attention, cuDNN and TPUs do
    (jax-ml/jax#24047); None, the default, otherwise."""
    return jax.lax.DotAlgorithmPreset.BF16_BF16_F32 if jnp.dtype(dtype) == jnp.bfloat16 else None


def compiles_for_tpu() -> bool:
    """Whether the computation being traced targets TPUs: the platform of the mesh set with
    jax.set_mesh (the planner's compile-only TPU devices included), else the default backend."""
    device = getattr(jax.sharding.get_abstract_mesh(), "abstract_device", None)
    if device is not None:
        return device.platform == "tpu"
    return jax.default_backend() == "tpu"


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
    threshold, scale = dropout_threshold(rate)
    return halves.reshape(out_shape) >= jnp.uint16(threshold), scale


def dropout_threshold(rate: float) -> tuple[int, float]:
    """(t, 1 / P(keep)): `dropout_keep_mask` keeps an element whose 16 bits are >= t."""
    threshold = min(round(rate * 65536), 65535)
    return threshold, 65536 / (65536 - threshold)


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

    def key(self) -> Array:
        """The key `__call__` would draw, for a kernel that drops out by itself."""
        return self.make_rng("dropout")


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
