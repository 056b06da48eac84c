"""Attention from segment ids, without a [B, 1, T, T] mask: `attend` picks the kernel.

Short sequences take jax.nn.dot_product_attention (cuDNN or XLA); long ones and sliding windows a
blockwise online-softmax kernel in plain JAX whose forward+backward memory grows linearly with T
(global: query x key blocks, recomputed in a custom backward; local: each query block and its
two neighbouring key blocks); active attention dropout the materialised softmax, as BERT always
had. On TPUs a Pallas flash kernel with the dropout inside (tpu_attention.py) takes global
attention. Rules, kernels and measurements: docs/design/attention.md.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

from bert_jax.errors import UserError
from bert_jax.model.ops import compiles_for_tpu, dropout_keep_mask, mixed_precision_dot
from bert_jax.model.tpu_attention import sharded_flash_attention
from bert_jax.untrusted import is_int

Array = jax.Array

BLOCKWISE_FROM_LENGTH = 1024  # "auto": keys longer than this take the blockwise kernel
QUERY_BLOCK = 512
KEY_BLOCK = 512
MIN_LOCAL_BLOCK = 32  # local attention's query block: max(window // 2, this)
DENSE = ("xla", "cudnn")  # jax.nn.dot_product_attention's implementations
IMPLEMENTATIONS = (None, "auto", *DENSE, "blockwise")

# Accelerator kernels registered at run time (e.g. TPU Pallas splash attention) under a name;
# "auto" takes KERNELS[jax.default_backend()] when there is one. Same signature as `attend`
# minus the dropout and implementation arguments.
KERNELS: dict[str, Callable[..., Array]] = {}


def attend(
    query: Array,
    key: Array,
    value: Array,
    *,
    segment_ids: Array,
    window: int = 0,
    dropout_rate: float = 0.0,
    dropout_rng: Array | None = None,
    deterministic: bool = True,
    implementation: str | None = None,
    query_positions: Array | None = None,
) -> Array:
    """query [B, Tq, N, D], key and value [B, T, N, D] -> context [B, Tq, N, D].

    segment_ids [B, T] ints: a query attends the keys of its own segment; keys of segment 0
    (padding) are never attended and a padding query attends every non-padding key (BERT's
    per-key mask). window > 0: only keys with |query - key| <= window // 2. query_positions
    [B, Tq]: the positions of the queries (default 0..T-1, Tq = T). A query with no key to
    attend gets zeros from the blockwise kernels (the mean of the values from the dense ones).
    implementation: None or "auto", "xla", "cudnn" (dense) or "blockwise"; or a KERNELS name.
    None/"auto" compiling for TPUs (ops.compiles_for_tpu), no window or query_positions: the
    Pallas flash kernel of tpu_attention.py, attention dropout included.
    """
    b, t = segment_ids.shape
    if implementation not in IMPLEMENTATIONS and implementation not in KERNELS:
        raise UserError(
            f"attention implementation {implementation!r} is not one of "
            f"{[*IMPLEMENTATIONS[1:], *KERNELS]} (or None)"
        )
    if not is_int(window) or window < 0:
        raise UserError(f"attention window must be a non-negative integer, got {window!r}")
    if query_positions is None:
        q_positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
    else:
        q_positions = query_positions.astype(jnp.int32)
    q_segments = jnp.take_along_axis(segment_ids, q_positions, axis=1)
    window = int(window)
    if window and window // 2 >= t - 1:
        window = 0  # every key is within the window
    dropout_active = not deterministic and dropout_rate > 0.0
    if implementation in (None, "auto") and not window and query_positions is None:
        if compiles_for_tpu():  # the Pallas kernel, dropout in it: tpu_attention.py
            return sharded_flash_attention(
                query, key, value, segment_ids,
                dropout_rate=dropout_rate if dropout_active else 0.0,
                dropout_rng=dropout_rng if dropout_active else None,
            )  # fmt: skip
    if dropout_active:
        mask = attention_mask(q_segments, segment_ids, q_positions, window)
        return materialized_attention(query, key, value, mask, dropout_rate, dropout_rng)
    if implementation in KERNELS:
        return KERNELS[implementation](
            query, key, value, segment_ids=segment_ids, window=window,
            query_positions=query_positions,
        )  # fmt: skip
    if implementation in (None, "auto"):
        tpu_kernel = KERNELS.get(jax.default_backend())
        if tpu_kernel is not None:
            return tpu_kernel(
                query, key, value, segment_ids=segment_ids, window=window,
                query_positions=query_positions,
            )  # fmt: skip
        implementation = "blockwise" if window or t > BLOCKWISE_FROM_LENGTH else None
    if implementation == "blockwise":
        if window and query_positions is None:
            return local_attention(query, key, value, segment_ids, window)
        return blockwise_attention(query, key, value, q_segments, segment_ids, q_positions, window)
    mask = attention_mask(q_segments, segment_ids, q_positions, window)
    if implementation is None and _cudnn_applies(query):
        try:  # its checks (cuDNN version, head dim, layout) run here, at trace time
            return jax.nn.dot_product_attention(
                query, key, value, mask=mask, implementation="cudnn"
            )
        except (NotImplementedError, RuntimeError, ValueError):
            pass  # XLA's, below
    return jax.nn.dot_product_attention(query, key, value, mask=mask, implementation=implementation)


def _cudnn_applies(query: Array) -> bool:
    """cuDNN's fused attention: NVIDIA GPUs, 16-bit operands, head dims up to 128 in 8s."""
    d = query.shape[-1]
    half = query.dtype in (jnp.bfloat16, jnp.float16)
    return jax.default_backend() == "gpu" and half and d <= 128 and d % 8 == 0


def _allowed(q_segments, k_segments, q_positions, k_positions, window: int) -> Array:
    """[..., Tq] and [..., Tk] -> bool [..., Tq, Tk]: the rule of `attend`."""
    qs, ks = q_segments[..., :, None], k_segments[..., None, :]
    allowed = (ks != 0) & ((qs == ks) | (qs == 0))
    if window:
        distance = jnp.abs(q_positions[..., :, None] - k_positions[..., None, :])
        allowed &= distance <= window // 2
    return allowed


def attention_mask(q_segments, k_segments, q_positions, window: int) -> Array:
    """bool [B, 1, Tq, T]: True where a query may attend a key."""
    k_positions = jnp.arange(k_segments.shape[1], dtype=jnp.int32)
    return _allowed(q_segments, k_segments, q_positions, k_positions, window)[:, None]


def materialized_attention(query, key, value, mask, dropout_rate=0.0, dropout_rng=None) -> Array:
    """The softmax over the full [B, N, Tq, T] logits, with dropout on the probabilities (the
    fused kernels have none); float32 logits, as jax.nn.dot_product_attention's."""
    logits = jnp.einsum(
        "bqnd,bknd->bnqk",
        query,
        key,
        precision=mixed_precision_dot(query.dtype),
        preferred_element_type=jnp.float32,
    )  # [B, N, Tq, T]
    logits = logits * jnp.float32(1.0 / math.sqrt(query.shape[-1]))
    logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(logits, axis=-1)  # [B, N, Tq, T]
    if dropout_rate > 0.0:
        keep, scale = dropout_keep_mask(dropout_rng, dropout_rate, probs.shape)
        scaled = (probs.astype(jnp.float32) * scale).astype(probs.dtype)
        probs = jnp.where(keep, scaled, jnp.zeros((), probs.dtype))
    return jnp.einsum("bnqk,bknd->bqnd", probs.astype(value.dtype), value)


def _qk(q, k):
    """[B, q, N, D] x [B, k, N, D] -> float32 scaled logits [B, N, q, k]."""
    s = jnp.einsum(
        "bqnd,bknd->bnqk",
        q,
        k,
        precision=mixed_precision_dot(q.dtype),
        preferred_element_type=jnp.float32,
    )
    return s * jnp.float32(1.0 / math.sqrt(q.shape[-1]))


def _pad_to(x: Array, length: int, axis: int = 1) -> Array:
    pad = [(0, 0)] * x.ndim
    pad[axis] = (0, length - x.shape[axis])
    return jnp.pad(x, pad)


def _blocks(x: Array, size: int) -> Array:
    """[B, n * size, ...] -> [n, B, size, ...]."""
    b, t = x.shape[:2]
    return jnp.moveaxis(x.reshape(b, t // size, size, *x.shape[2:]), 1, 0)


def _unblocks(x: Array) -> Array:
    """[n, B, size, ...] -> [B, n * size, ...]."""
    x = jnp.moveaxis(x, 0, 1)
    return x.reshape(x.shape[0], -1, *x.shape[3:])


def blockwise_attention(
    query, key, value, q_segments, k_segments, q_positions, window: int = 0
) -> Array:
    """Flash-style attention: query blocks x key blocks with an online softmax and float32
    accumulators; the backward recomputes each block, so memory is O(T * block), not O(T^2)."""
    tq, t = query.shape[1], key.shape[1]
    bq, bk = min(QUERY_BLOCK, _round_up(tq, 8)), min(KEY_BLOCK, _round_up(t, 8))
    tq_pad, t_pad = _round_up(tq, bq), _round_up(t, bk)
    out = _flash(
        _pad_to(query, tq_pad),
        _pad_to(key, t_pad),
        _pad_to(value, t_pad),
        _pad_to(q_segments.astype(jnp.int32), tq_pad),
        _pad_to(k_segments.astype(jnp.int32), t_pad),  # padded keys: segment 0, never attended
        _pad_to(q_positions, tq_pad),
        window,
        bq,
        bk,
    )
    return out[:, :tq]


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


@functools.partial(jax.custom_vjp, nondiff_argnums=(6, 7, 8))
def _flash(q, k, v, q_seg, k_seg, q_pos, window, bq, bk):
    return _flash_forward(q, k, v, q_seg, k_seg, q_pos, window, bq, bk)[0]


def _key_blocks(k, v, k_seg, bk):
    k_pos = jnp.arange(k.shape[1], dtype=jnp.int32)
    return _blocks(k, bk), _blocks(v, bk), _blocks(k_seg, bk), k_pos.reshape(-1, bk)


def _flash_forward(q, k, v, q_seg, k_seg, q_pos, window, bq, bk):
    b, _, n, d = q.shape
    keys = _key_blocks(k, v, k_seg, bk)

    def query_block(args):
        qb, qs, qp = args  # [B, bq, N, D], [B, bq], [B, bq]

        def key_block(carry, kargs):
            m, total, acc = carry  # [B, N, bq], [B, N, bq], [B, bq, N, D]
            kb, vb, ks, kp = kargs
            allowed = _allowed(qs, ks, qp, kp[None], window)[:, None]  # [B, 1, bq, bk]
            s = jnp.where(allowed, _qk(qb, kb), -jnp.inf)
            m_new = jnp.maximum(m, s.max(-1))
            m_safe = jnp.where(jnp.isfinite(m_new), m_new, 0.0)
            p = jnp.exp(s - m_safe[..., None])  # masked: exp(-inf) = 0
            correction = jnp.exp(m - m_safe)
            total = total * correction + p.sum(-1)
            pv = jnp.einsum(
                "bnqk,bknd->bqnd", p.astype(vb.dtype), vb, preferred_element_type=jnp.float32
            )
            acc = acc * jnp.moveaxis(correction, 1, 2)[..., None] + pv
            return (m_new, total, acc), None

        init = (
            jnp.full((b, n, qb.shape[1]), -jnp.inf, jnp.float32),
            jnp.zeros((b, n, qb.shape[1]), jnp.float32),
            jnp.zeros((b, qb.shape[1], n, d), jnp.float32),
        )
        (m, total, acc), _ = jax.lax.scan(key_block, init, keys)
        total = jnp.where(total > 0, total, 1.0)  # a query with no key: zeros
        out = acc / jnp.moveaxis(total, 1, 2)[..., None]
        lse = jnp.where(jnp.isfinite(m), m, 0.0) + jnp.log(total)  # [B, N, bq]
        return out.astype(q.dtype), lse

    out, lse = jax.lax.map(query_block, (_blocks(q, bq), _blocks(q_seg, bq), _blocks(q_pos, bq)))
    return _unblocks(out), (q, k, v, q_seg, k_seg, q_pos, _unblocks(out), lse)


def _flash_fwd(q, k, v, q_seg, k_seg, q_pos, window, bq, bk):
    return _flash_forward(q, k, v, q_seg, k_seg, q_pos, window, bq, bk)


def _flash_bwd(window, bq, bk, residuals, g):
    q, k, v, q_seg, k_seg, q_pos, out, lse = residuals  # lse [nq, B, N, bq]
    delta = jnp.einsum("bqnd,bqnd->bnq", g.astype(jnp.float32), out.astype(jnp.float32))
    keys = _key_blocks(k, v, k_seg, bk)
    scale = jnp.float32(1.0 / math.sqrt(q.shape[-1]))

    def query_block(dkv, args):
        qb, qs, qp, gb, lb, db = args

        def key_block(dq, kargs):
            kb, vb, ks, kp = kargs
            allowed = _allowed(qs, ks, qp, kp[None], window)[:, None]
            p = jnp.exp(jnp.where(allowed, _qk(qb, kb) - lb[..., None], -jnp.inf))
            dv = jnp.einsum(
                "bnqk,bqnd->bknd", p.astype(gb.dtype), gb, preferred_element_type=jnp.float32
            )
            dp = jnp.einsum("bqnd,bknd->bnqk", gb, vb, preferred_element_type=jnp.float32)
            ds = p * (dp - db[..., None]) * scale
            dq = dq + jnp.einsum(
                "bnqk,bknd->bqnd", ds.astype(kb.dtype), kb, preferred_element_type=jnp.float32
            )
            dk = jnp.einsum(
                "bnqk,bqnd->bknd", ds.astype(qb.dtype), qb, preferred_element_type=jnp.float32
            )
            return dq, (dk, dv)

        dq, (dk, dv) = jax.lax.scan(key_block, jnp.zeros(qb.shape, jnp.float32), keys)
        return (dkv[0] + dk, dkv[1] + dv), dq

    blocks = (_blocks(q, bq), _blocks(q_seg, bq), _blocks(q_pos, bq), _blocks(g, bq), lse)
    blocks += (jnp.moveaxis(_blocks(jnp.moveaxis(delta, 1, 2), bq), 2, 3),)  # [nq, B, N, bq]
    zeros = jnp.zeros(_blocks(k, bk).shape, jnp.float32)
    (dk, dv), dq = jax.lax.scan(query_block, (zeros, zeros), blocks)
    return (
        _unblocks(dq).astype(q.dtype),
        _unblocks(dk).astype(k.dtype),
        _unblocks(dv).astype(v.dtype),
        None,
        None,
        None,
    )


_flash.defvjp(_flash_fwd, _flash_bwd)


def local_attention(query, key, value, segment_ids, window: int) -> Array:
    """Sliding-window attention in O(T * window): query block i (of c >= window // 2 positions)
    attends key blocks i - 1, i and i + 1 only; each block's softmax is recomputed backward."""
    b, t, n, d = query.shape
    c = _round_up(max(window // 2, MIN_LOCAL_BLOCK), 8)
    t_pad = _round_up(t, c)
    nq = t_pad // c

    def slabs(x):  # [B, T, ...] -> [nq, B, 3c, ...]: blocks i - 1, i, i + 1 of x
        x = jnp.pad(x, [(0, 0), (c, t_pad - t + c)] + [(0, 0)] * (x.ndim - 2))
        x = _blocks(x, c)  # [nq + 2, B, c, ...]
        return jnp.concatenate([x[:-2], x[1:-1], x[2:]], axis=2)

    segments = segment_ids.astype(jnp.int32)
    k_pos = jnp.arange(-c, t_pad + c, dtype=jnp.int32).reshape(nq + 2, c)
    k_pos = jnp.concatenate([k_pos[:-2], k_pos[1:-1], k_pos[2:]], axis=1)  # [nq, 3c]
    q_pos = jnp.arange(t_pad, dtype=jnp.int32).reshape(nq, c)

    @jax.checkpoint
    def block(args):
        qb, kb, vb, qs, ks, qp, kp = args
        allowed = _allowed(qs, ks, qp[None], kp[None], window)[:, None]  # [B, 1, c, 3c]
        s = _qk(qb, kb)
        m = jnp.where(allowed, s, -jnp.inf).max(-1, keepdims=True)
        m = jax.lax.stop_gradient(jnp.where(jnp.isfinite(m), m, 0.0))
        p = jnp.exp(jnp.where(allowed, s - m, -jnp.inf))  # bounded: no inf * 0 backward
        total = p.sum(-1)
        p = p / jnp.where(total > 0, total, 1.0)[..., None]  # a query with no key: zeros
        return jnp.einsum("bnqk,bknd->bqnd", p.astype(vb.dtype), vb)

    args = (
        _blocks(_pad_to(query, t_pad), c),
        slabs(key),
        slabs(value),
        _blocks(_pad_to(segments, t_pad), c),
        slabs(segments),
        q_pos,
        k_pos,
    )
    return _unblocks(jax.lax.map(block, args))[:, :t]
