"""The Pallas TPU flash-attention kernel (model/tpu_attention.py) in Pallas interpret mode on CPU:
its output and gradients against materialized_attention with the same segments and the same
dropout mask (measured max errors, float32: outputs 5.4e-7, gradients 1.2e-6; TOL 1e-5)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bert_jax.model import attention, ops, tpu_attention

TOL = 1e-5


def _segments(b: int, t: int) -> jax.Array:
    """Row 0: two packed segments then padding; row 1: one segment then padding; the rest full."""
    seg = np.ones((b, t), np.int32)
    seg[0, : t // 3], seg[0, t // 3 : t - t // 5], seg[0, t - t // 5 :] = 1, 2, 0
    seg[1, t - 7 :] = 0
    return jnp.asarray(seg)


def _inputs(b, t, n, d, seed=0):
    keys = jax.random.split(jax.random.key(seed), 4)
    q, k, v, w = (jax.random.normal(key, (b, t, n, d), jnp.float32) for key in keys)
    return q, k, v, w


def _reference(q, k, v, seg, rate, rng):
    b, t = seg.shape
    positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
    mask = attention.attention_mask(seg, seg, positions, 0)
    return attention.materialized_attention(q, k, v, mask, rate, rng)


def _output_and_grads(fn, q, k, v, w):
    def run(q, k, v, w):
        out, vjp = jax.vjp(fn, q, k, v)
        return out, vjp(w)

    return jax.jit(run)(q, k, v, w)


@pytest.mark.parametrize(
    "t, block, rate, n, d",
    [
        (128, 128, 0.1, 2, 32),
        (256, 128, 0.1, 2, 32),
        (200, 128, 0.1, 2, 32),
        (200, 128, 0.0, 2, 32),
        (40, 512, 0.3, 2, 32),
        (128, 128, 0.1, 4, 64),  # two blocks of two 64-wide heads (BERT's head dim)
    ],
)
def test_matches_materialized_attention(t, block, rate, n, d):
    b = 2
    q, k, v, w = _inputs(b, t, n, d)
    seg = _segments(b, t)
    rng = jax.random.key(7)
    want, want_grads = _output_and_grads(
        lambda q, k, v: _reference(q, k, v, seg, rate, rng), q, k, v, w
    )
    got, got_grads = _output_and_grads(
        lambda q, k, v: tpu_attention.flash_attention(
            q, k, v, seg, dropout_rate=rate, dropout_rng=rng, block=block, interpret=True
        ),
        q, k, v, w,
    )  # fmt: skip
    real = np.asarray(seg != 0)  # padding queries: outputs unused, but they match too
    assert real.sum() < seg.size
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=TOL, rtol=0)
    for name, g, h in zip("qkv", got_grads, want_grads, strict=True):
        np.testing.assert_allclose(np.asarray(g), np.asarray(h), atol=TOL, rtol=0, err_msg=name)
    if rate:  # the dropout is applied: without it the output is far off
        undropped = _reference(q, k, v, seg, 0.0, None)
        assert float(jnp.abs(got - undropped).max()) > 0.1


@pytest.mark.parametrize("length", [7, 8])
def test_keep_bits_are_dropout_keep_mask(length):
    """Every element's keep bit, from its indices alone, odd key lengths (each query row padded
    to whole 32-bit words) included."""
    b, n, rate = 3, 2, 0.25
    rng = jax.random.key(3)
    keep, _ = ops.dropout_keep_mask(rng, rate, (b, n, length, length))
    k1, k2 = (int(x) for x in tpu_attention._dropout_keys(rng))
    idx = jnp.meshgrid(*(jnp.arange(s, dtype=jnp.int32) for s in keep.shape), indexing="ij")
    threshold = round(rate * 65536)
    got = tpu_attention.keep_bits(*idx, k1, k2, length, threshold)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(keep))
    assert 0.6 < float(keep.mean()) < 0.9


def test_a_shard_drops_as_the_whole_batch_does():
    """Rows 2.. and heads 1.. with their offsets: the same as those rows and heads of the call
    over the whole batch (how a shard_map'ed call keeps the global mask)."""
    b, t, n, d = 3, 128, 2, 32
    q, k, v, _ = _inputs(b, t, n, d, seed=1)
    seg = _segments(b, t)
    rng = jax.random.key(5)
    whole = tpu_attention.flash_attention(
        q, k, v, seg, dropout_rate=0.1, dropout_rng=rng, interpret=True
    )
    part = tpu_attention.flash_attention(
        q[2:, :, 1:], k[2:, :, 1:], v[2:, :, 1:], seg[2:], dropout_rate=0.1, dropout_rng=rng,
        row_offset=2, head_offset=1, interpret=True,
    )  # fmt: skip
    np.testing.assert_allclose(np.asarray(part), np.asarray(whole[2:, :, 1:]), atol=1e-6, rtol=0)
    shifted = tpu_attention.flash_attention(
        q[2:, :, 1:], k[2:, :, 1:], v[2:, :, 1:], seg[2:], dropout_rate=0.1, dropout_rng=rng,
        interpret=True,
    )  # fmt: skip
    assert float(jnp.abs(shifted - part).max()) > 0.1  # the offsets are used


def test_bfloat16_is_as_close_as_the_materialised_path():
    """bfloat16 operands (the TPU model's): the kernel's distance to the float32 reference is
    within twice the materialised bfloat16 path's (measured: output 0.009 against 0.007, each
    gradient at most the materialised one's, on values up to 1.8)."""
    b, t, n, d = 2, 128, 2, 32
    q, k, v, w = _inputs(b, t, n, d)
    seg, rng = _segments(b, t), jax.random.key(7)
    exact = _output_and_grads(lambda q, k, v: _reference(q, k, v, seg, 0.1, rng), q, k, v, w)
    half = [x.astype(jnp.bfloat16) for x in (q, k, v, w)]
    materialised = _output_and_grads(lambda q, k, v: _reference(q, k, v, seg, 0.1, rng), *half)
    kernel = _output_and_grads(
        lambda q, k, v: tpu_attention.flash_attention(
            q, k, v, seg, dropout_rate=0.1, dropout_rng=rng, interpret=True
        ),
        *half,
    )
    assert kernel[0].dtype == jnp.bfloat16

    def error(x, y):
        return float(jnp.abs(x.astype(jnp.float32) - y).max())

    for got, base, want in zip(
        [kernel[0], *kernel[1]],
        [materialised[0], *materialised[1]],
        [exact[0], *exact[1]],
        strict=True,
    ):
        assert error(got, want) <= 2 * error(base, want)
