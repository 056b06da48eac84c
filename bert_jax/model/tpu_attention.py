"""Flash attention for TPUs (Pallas) with BERT's attention dropout inside the kernel.

Online softmax over key blocks (float32 logits and statistics, input-dtype matmul operands); the
backward recomputes the probabilities from the saved per-row logsumexp. Dropout keeps exactly the
elements `ops.dropout_keep_mask(rng, rate, (B, N, T, T))` keeps: the hash of each element's
global (row, head, query, key) indices, computed in the kernel. Segment ids follow `attend`.
Design and measurements: docs/design/attention.md.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu
from jax.sharding import PartitionSpec

from bert_jax.model.ops import dropout_threshold

Array = jax.Array

BLOCK = 512  # query and key block (padded sequence lengths are multiples of it, or of 128)
LANES = 128
MASK_VALUE = -0.7 * float(np.finfo(np.float32).max)  # finite: no inf - inf in the statistics
NT = (((1,), (1,)), ((), ()))  # a @ b.T
NN = (((1,), (0,)), ((), ()))  # a @ b


def _i32(x: int) -> int:
    """A uint32 constant as the int32 of the same bits (int32 arithmetic wraps like uint32)."""
    return int(np.array(x, np.uint32).view(np.int32))


def _mix32(x: Array) -> Array:
    """ops._mix32 on int32 bits: MurmurHash3's finaliser with logical shifts."""
    x = x ^ lax.shift_right_logical(x, 16)
    x = x * _i32(0x85EBCA6B)
    x = x ^ lax.shift_right_logical(x, 13)
    x = x * _i32(0xC2B2AE35)
    return x ^ lax.shift_right_logical(x, 16)


def keep_bits(row, head, q_idx, k_idx, k1, k2, length: int, threshold: int) -> Array:
    """int32 indices (broadcastable) -> bool: ops.dropout_keep_mask's keep bit of element
    (row, head, q_idx, k_idx) of a [B, N, length, length] mask with keys k1, k2 (int32 bits)."""
    words = (length + 1) // 2
    counter = (head * length + q_idx) * words + lax.shift_right_logical(k_idx, 1)
    row_key = _mix32((row * _i32(0x27D4EB2F)) ^ k1)
    bits = _mix32(_mix32((counter * _i32(0x9E3779B9)) ^ row_key) + k2)
    half = lax.shift_right_logical(bits, (k_idx & 1) * 16) & 0xFFFF
    return half >= threshold


def _dropout_keys(rng: Array) -> Array:
    """(k1, k2) as ops.dropout_keep_mask draws them, as int32 bits."""
    return lax.bitcast_convert_type(jax.random.bits(rng, (2,), jnp.uint32), jnp.int32)


@dataclasses.dataclass(frozen=True)
class _Static:
    """The kernels' static parameters (hashable: custom_vjp's nondiff argument)."""

    length: int  # T of the dropout mask [B, N, T, T]
    rate: float
    bq: int
    bk: int
    d: int  # head dim
    heads: int  # heads per block: 128 lanes' worth (or all of them)
    interpret: bool

    @property
    def threshold(self) -> int:
        return dropout_threshold(self.rate)[0]

    @property
    def scale(self) -> float:
        return dropout_threshold(self.rate)[1]


def _allowed(q_seg, k_seg) -> Array:
    """attend's rule: keys of segment 0 never; a query its own segment, a padding query all."""
    return (k_seg != 0) & ((q_seg == k_seg) | (q_seg == 0))


def _keep(st: _Static, seeds_ref, b, head, q_idx, k_idx) -> Array:
    row, head = seeds_ref[2] + b, seeds_ref[3] + head
    return keep_bits(row, head, q_idx, k_idx, seeds_ref[0], seeds_ref[1], st.length, st.threshold)


def _lanes(st: _Static, h: int) -> slice:
    """Head h's columns of a [rows, heads x D] block."""
    return slice(h * st.d, (h + 1) * st.d)


def _forward_kernel(
    seeds_ref, q_ref, k_ref, v_ref, qs_ref, ks_ref, o_ref, lse_ref, m_ref, l_ref, acc_ref, *, st
):
    """Grid (b, head group g, query block i, key block j); each step the group's st.heads heads."""
    b, g, i, j = (pl.program_id(a) for a in range(4))
    bq, bk = st.bq, st.bk

    @pl.when(j == 0)
    def _init():
        m_ref[...] = jnp.full_like(m_ref, MASK_VALUE)
        l_ref[...] = jnp.zeros_like(l_ref)
        acc_ref[...] = jnp.zeros_like(acc_ref)

    allowed = _allowed(_column(qs_ref[...], bq), ks_ref[...])
    if st.rate > 0.0:
        q_idx = i * bq + lax.broadcasted_iota(jnp.int32, (bq, bk), 0)
        k_idx = j * bk + lax.broadcasted_iota(jnp.int32, (bq, bk), 1)
    for h in range(st.heads):
        cols = _lanes(st, h)
        q, k, v = q_ref[:, cols], k_ref[:, cols], v_ref[:, cols]
        s = lax.dot_general(q, k, NT, preferred_element_type=jnp.float32)
        s = jnp.where(allowed, s * jnp.float32(1.0 / math.sqrt(st.d)), MASK_VALUE)  # [bq, bk]
        m_prev = m_ref[h]  # [bq, LANES], every lane the same
        m_next = jnp.maximum(m_prev, s.max(axis=-1, keepdims=True))
        p = jnp.where(allowed, jnp.exp(s - m_next[:, :1]), 0.0)
        alpha = jnp.exp(m_prev - m_next)
        l_ref[h] = alpha * l_ref[h] + p.sum(axis=-1, keepdims=True)
        m_ref[h] = m_next
        if st.rate > 0.0:
            keep = _keep(st, seeds_ref, b, g * st.heads + h, q_idx, k_idx)
            p = jnp.where(keep, p * jnp.float32(st.scale), 0.0)
        pv = lax.dot_general(p.astype(v.dtype), v, NN, preferred_element_type=jnp.float32)
        acc_ref[h] = acc_ref[h] * alpha[:, :1] + pv

    @pl.when(j == pl.num_programs(3) - 1)
    def _end():
        for h in range(st.heads):
            total = l_ref[h]
            total = jnp.where(total > 0.0, total, 1.0)  # a query with no key: zeros
            o_ref[:, _lanes(st, h)] = (acc_ref[h] / total[:, :1]).astype(o_ref.dtype)
            lse = m_ref[h] + jnp.log(total)  # [bq, LANES]
            lse_ref[h] = lse.T[:1, :]  # [1, bq]


def _dkv_kernel(
    seeds_ref, q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, qs_ref, ks_ref,
    dk_ref, dv_ref, dk_acc, dv_acc, *, st,
):  # fmt: skip
    """Grid (b, head group g, key block j, query block i): the transposed [bk, bq] probabilities."""
    b, g, j, i = (pl.program_id(a) for a in range(4))
    bq, bk = st.bq, st.bk

    @pl.when(i == 0)
    def _init():
        dk_acc[...] = jnp.zeros_like(dk_acc)
        dv_acc[...] = jnp.zeros_like(dv_acc)

    scale = jnp.float32(1.0 / math.sqrt(st.d))
    allowed = _allowed(qs_ref[...], _column(ks_ref[...], bk))
    if st.rate > 0.0:
        k_idx = j * bk + lax.broadcasted_iota(jnp.int32, (bk, bq), 0)
        q_idx = i * bq + lax.broadcasted_iota(jnp.int32, (bk, bq), 1)
    for h in range(st.heads):
        cols = _lanes(st, h)
        q, k, v, do = q_ref[:, cols], k_ref[:, cols], v_ref[:, cols], do_ref[:, cols]
        s = lax.dot_general(k, q, NT, preferred_element_type=jnp.float32) * scale  # [bk, bq]
        p = jnp.where(allowed, jnp.exp(s - lse_ref[h]), 0.0)
        dp = lax.dot_general(v, do, NT, preferred_element_type=jnp.float32)  # (dO V^T)^T
        if st.rate > 0.0:
            keep = _keep(st, seeds_ref, b, g * st.heads + h, q_idx, k_idx)
            dropped = jnp.where(keep, p * jnp.float32(st.scale), 0.0)
            dp = jnp.where(keep, dp * jnp.float32(st.scale), 0.0)
        else:
            dropped = p
        dv_acc[h] += lax.dot_general(
            dropped.astype(do.dtype), do, NN, preferred_element_type=jnp.float32
        )
        ds = p * (dp - delta_ref[h])
        dk_acc[h] += lax.dot_general(ds.astype(q.dtype), q, NN, preferred_element_type=jnp.float32)

    @pl.when(i == pl.num_programs(3) - 1)
    def _end():
        for h in range(st.heads):
            dk_ref[:, _lanes(st, h)] = (dk_acc[h] * scale).astype(dk_ref.dtype)
            dv_ref[:, _lanes(st, h)] = dv_acc[h].astype(dv_ref.dtype)


def _dq_kernel(
    seeds_ref, q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, qs_ref, ks_ref,
    dq_ref, dq_acc, *, st,
):  # fmt: skip
    """Grid (b, head group g, query block i, key block j)."""
    b, g, i, j = (pl.program_id(a) for a in range(4))
    bq, bk = st.bq, st.bk

    @pl.when(j == 0)
    def _init():
        dq_acc[...] = jnp.zeros_like(dq_acc)

    scale = jnp.float32(1.0 / math.sqrt(st.d))
    allowed = _allowed(_column(qs_ref[...], bq), ks_ref[...])
    if st.rate > 0.0:
        q_idx = i * bq + lax.broadcasted_iota(jnp.int32, (bq, bk), 0)
        k_idx = j * bk + lax.broadcasted_iota(jnp.int32, (bq, bk), 1)
    for h in range(st.heads):
        cols = _lanes(st, h)
        q, k, v, do = q_ref[:, cols], k_ref[:, cols], v_ref[:, cols], do_ref[:, cols]
        s = lax.dot_general(q, k, NT, preferred_element_type=jnp.float32) * scale  # [bq, bk]
        lse, delta = _column(lse_ref[h], bq), _column(delta_ref[h], bq)  # [bq, 1]
        p = jnp.where(allowed, jnp.exp(s - lse), 0.0)
        dp = lax.dot_general(do, v, NT, preferred_element_type=jnp.float32)  # [bq, bk]
        if st.rate > 0.0:
            keep = _keep(st, seeds_ref, b, g * st.heads + h, q_idx, k_idx)
            dp = jnp.where(keep, dp * jnp.float32(st.scale), 0.0)
        ds = p * (dp - delta)
        dq_acc[h] += lax.dot_general(ds.astype(k.dtype), k, NN, preferred_element_type=jnp.float32)

    @pl.when(j == pl.num_programs(3) - 1)
    def _end():
        for h in range(st.heads):
            dq_ref[:, _lanes(st, h)] = (dq_acc[h] * scale).astype(dq_ref.dtype)


def _column(row: Array, size: int) -> Array:
    """[1, size] -> [size, 1], through a [LANES, size] transpose (the layouts Mosaic has)."""
    return jnp.transpose(jnp.broadcast_to(row, (LANES, size)))[:, :1]


def _specs(st: _Static, key_major: bool):
    """BlockSpecs of q (or dO) and k (or v) [B, T, N x D] (a group of st.heads heads), of rows
    [B, N, 1, T] (lse, delta) and of the query and key blocks' segment ids [B, 1, T], for a grid
    (b, head group, outer, inner) whose outer index walks key blocks when key_major, else query
    blocks."""

    def q_block(x, y):
        return y if key_major else x

    def k_block(x, y):
        return x if key_major else y

    width = st.heads * st.d
    return (
        pl.BlockSpec((None, st.bq, width), lambda b, g, x, y, *_: (b, q_block(x, y), g)),
        pl.BlockSpec((None, st.bk, width), lambda b, g, x, y, *_: (b, k_block(x, y), g)),
        pl.BlockSpec((None, st.heads, 1, st.bq), lambda b, g, x, y, *_: (b, g, 0, q_block(x, y))),
        pl.BlockSpec((None, 1, st.bq), lambda b, g, x, y, *_: (b, 0, q_block(x, y))),
        pl.BlockSpec((None, 1, st.bk), lambda b, g, x, y, *_: (b, 0, k_block(x, y))),
    )


def cost(kind: str, b: int, n: int, t: int, d: int, itemsize: int, bq: int, bk: int) -> dict:
    """FLOPs, exponentials and HBM bytes of one pass ("forward", "dkv" or "dq") over q, k, v
    [b, n, t, d]: the operand a grid's inner loop walks is read once per outer block (Pallas
    fetches a block again only when its index changes), the rest once."""
    tensor, row, seg = b * n * t * d * itemsize, b * n * t * 4, b * t * 4
    nq, nk = t // bq, t // bk
    if kind == "forward":  # reads q once, k and v per query block; writes o, lse
        flops, moved = 4, tensor * (2 + 2 * nq) + row + seg * n * (1 + nq)
    elif kind == "dkv":  # reads k, v once, q, dO, lse, delta per key block; writes dk, dv
        flops, moved = 8, tensor * (4 + 2 * nk) + 2 * row * nk + seg * n * (1 + nk)
    else:  # dq: reads q, dO, lse, delta once, k, v per query block; writes dq
        flops, moved = 6, tensor * (3 + 2 * nq) + 2 * row + seg * n * (1 + nq)
    return {"flops": flops * b * n * t * t * d, "transcendentals": b * n * t * t, "bytes": moved}


def _estimate(kind: str, q: Array, st: _Static) -> pl.CostEstimate:
    b, t, width = q.shape
    n = width // st.d
    c = cost(kind, b, n, t, st.d, jnp.dtype(q.dtype).itemsize, st.bq, st.bk)
    return pl.CostEstimate(
        flops=c["flops"], transcendentals=c["transcendentals"], bytes_accessed=c["bytes"]
    )


def _call(st: _Static, kernel, kind: str, key_major: bool, inputs, out_shape, scratch):
    """One of the three kernels over q, k, v, ... [B, T, N x D] with the scalars first."""
    b, t, width = inputs[1].shape
    q_spec, k_spec, row_spec, qs_spec, ks_spec = _specs(st, key_major)
    outer, inner = (t // st.bk, t // st.bq) if key_major else (t // st.bq, t // st.bk)
    specs = {"forward": ([q_spec, k_spec, k_spec], [q_spec, row_spec])}
    backward_in = [q_spec, k_spec, k_spec, q_spec, row_spec, row_spec]
    specs["dkv"] = (backward_in, [k_spec, k_spec])
    specs["dq"] = (backward_in, q_spec)
    in_specs, out_specs = specs[kind]
    return pl.pallas_call(
        functools.partial(kernel, st=st),
        grid_spec=pltpu.PrefetchScalarGridSpec(
            num_scalar_prefetch=1,
            grid=(b, width // (st.heads * st.d), outer, inner),
            in_specs=[*in_specs, qs_spec, ks_spec],
            out_specs=out_specs,
            scratch_shapes=scratch,
        ),
        out_shape=out_shape,
        compiler_params=pltpu.CompilerParams(
            dimension_semantics=("parallel", "parallel", "parallel", "arbitrary")
        ),
        interpret=st.interpret,
        name=f"bert_flash_{kind}",
        cost_estimate=_estimate(kind, inputs[1], st),
    )(*inputs)


def _forward(st: _Static, seeds, q, k, v, seg):
    """q, k, v [B, T, N x D] (T a multiple of the blocks), seg [B, 1, T] -> o, lse [B, N, 1, T]."""
    b, t, width = q.shape
    h = st.heads
    return _call(
        st, _forward_kernel, "forward", False, (seeds, q, k, v, seg, seg),
        [jax.ShapeDtypeStruct(q.shape, q.dtype),
         jax.ShapeDtypeStruct((b, width // st.d, 1, t), jnp.float32)],
        [pltpu.VMEM((h, st.bq, LANES), jnp.float32), pltpu.VMEM((h, st.bq, LANES), jnp.float32),
         pltpu.VMEM((h, st.bq, st.d), jnp.float32)],
    )  # fmt: skip


def _backward(st: _Static, seeds, q, k, v, seg, o, lse, do):
    b, t, width = q.shape
    per_head = (b, t, width // st.d, st.d)
    delta = jnp.einsum(
        "btnd,btnd->bnt",
        do.astype(jnp.float32).reshape(per_head),
        o.astype(jnp.float32).reshape(per_head),
    )[:, :, None, :]  # [B, N, 1, T]
    inputs = (seeds, q, k, v, do, lse, delta, seg, seg)
    h = st.heads
    dk, dv = _call(
        st, _dkv_kernel, "dkv", True, inputs,
        [jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)],
        [pltpu.VMEM((h, st.bk, st.d), jnp.float32)] * 2,
    )  # fmt: skip
    dq = _call(
        st, _dq_kernel, "dq", False, inputs, jax.ShapeDtypeStruct(q.shape, q.dtype),
        [pltpu.VMEM((h, st.bq, st.d), jnp.float32)],
    )  # fmt: skip
    return dq, dk, dv


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _flash(st, seeds, q, k, v, seg):
    return _forward(st, seeds, q, k, v, seg)[0]


def _flash_fwd(st, seeds, q, k, v, seg):
    o, lse = _forward(st, seeds, q, k, v, seg)
    return o, (seeds, q, k, v, seg, o, lse)


def _flash_bwd(st, residuals, do):
    seeds, q, k, v, seg, o, lse = residuals
    dq, dk, dv = _backward(st, seeds, q, k, v, seg, o, lse, do)
    return None, dq, dk, dv, None


_flash.defvjp(_flash_fwd, _flash_bwd)


def flash_attention(
    query: Array,
    key: Array,
    value: Array,
    segment_ids: Array,
    *,
    dropout_rate: float = 0.0,
    dropout_rng: Array | None = None,
    row_offset: Array | int = 0,
    head_offset: Array | int = 0,
    block: int = BLOCK,
    interpret: bool = False,
) -> Array:
    """query, key, value [B, T, N, D], segment_ids [B, T] -> context [B, T, N, D], as `attend`
    computes it (self-attention, no window). With dropout_rate > 0 the probabilities are dropped
    as `dropout_keep_mask(dropout_rng, rate, (B', N', T, T))` drops them, where this call holds
    rows row_offset.. and heads head_offset.. of that mask (a shard of the batch and heads).
    A query with no key to attend (a row of padding only) gets zeros."""
    b, t, n, d = query.shape
    blk = min(block, -(-t // LANES) * LANES)
    t_pad = -(-t // blk) * blk
    rate = float(dropout_rate)
    if rate > 0.0:
        keys = _dropout_keys(dropout_rng)
    else:
        keys = jnp.zeros((2,), jnp.int32)
    seeds = jnp.concatenate(
        [keys, jnp.asarray([row_offset, head_offset], jnp.int32).reshape(2)]
    )  # [k1, k2, row offset, head offset]

    def padded(x):  # [B, T, N, D] -> [B, T_pad, N x D], no transpose
        return jnp.pad(x.reshape(b, t, n * d), [(0, 0), (0, t_pad - t), (0, 0)])

    seg = jnp.pad(segment_ids.astype(jnp.int32), [(0, 0), (0, t_pad - t)])[:, None]  # [B, 1, T]
    group = LANES // d if d < LANES and LANES % d == 0 and n % (LANES // d) == 0 else 1
    if (group * d) % LANES:
        group = n  # blocks as wide as all heads: the lane rule holds for a full dimension
    st = _Static(t, rate, blk, blk, d, group, interpret)
    out = _flash(st, seeds, padded(query), padded(key), padded(value), seg)
    return out[:, :t].reshape(b, t, n, d)


def sharded_flash_attention(
    query: Array,
    key: Array,
    value: Array,
    segment_ids: Array,
    *,
    dropout_rate: float = 0.0,
    dropout_rng: Array | None = None,
) -> Array:
    """flash_attention per shard of the current mesh (jax.set_mesh): the batch split over the
    mesh axes the logical axis rules give "act_batch", the heads over those of "act_heads"; each
    shard drops its own rows and heads of the global mask. No mesh: one call."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return flash_attention(
            query, key, value, segment_ids, dropout_rate=dropout_rate, dropout_rng=dropout_rng
        )
    spec = nn.logical_to_mesh_axes(("act_batch", "act_length", "act_heads", None))
    batch_axes, head_axes = (_present(spec[i], mesh.axis_names) for i in (0, 2))
    qkv = PartitionSpec(batch_axes, None, head_axes, None)
    rate = float(dropout_rate) if dropout_rng is not None else 0.0
    rng = dropout_rng if rate > 0.0 else jax.random.key(0)

    def shard(q, k, v, seg, rng):
        return flash_attention(
            q, k, v, seg, dropout_rate=rate, dropout_rng=rng,
            row_offset=_shard_index(batch_axes) * q.shape[0],
            head_offset=_shard_index(head_axes) * q.shape[2],
        )  # fmt: skip

    return jax.shard_map(
        shard,
        mesh=mesh,
        in_specs=(qkv, qkv, qkv, PartitionSpec(batch_axes, None), PartitionSpec()),
        out_specs=qkv,
        check_vma=False,  # pallas_call outputs carry no varying-axes type
    )(query, key, value, segment_ids, rng)


def _present(axes, names) -> tuple[str, ...] | None:
    """A PartitionSpec entry without the mesh axes the mesh lacks (None when none is left)."""
    axes = (axes,) if isinstance(axes, str) else tuple(axes or ())
    kept = tuple(a for a in axes if a in names)
    return kept or None


def _shard_index(axes) -> Array | int:
    return 0 if axes is None else lax.axis_index(axes)
