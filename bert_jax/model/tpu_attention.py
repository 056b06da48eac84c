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


def _keep(st: _Static, seeds_ref, b, n, q_idx, k_idx) -> Array:
    row, head = seeds_ref[2] + b, seeds_ref[3] + n
    return keep_bits(row, head, q_idx, k_idx, seeds_ref[0], seeds_ref[1], st.length, st.threshold)


def _forward_kernel(
    seeds_ref, q_ref, k_ref, v_ref, qs_ref, ks_ref, o_ref, lse_ref, m_ref, l_ref, acc_ref, *, st
):
    b, n, i, j = (pl.program_id(a) for a in range(4))
    bq, bk = st.bq, st.bk

    @pl.when(j == 0)
    def _init():
        m_ref[...] = jnp.full_like(m_ref, MASK_VALUE)
        l_ref[...] = jnp.zeros_like(l_ref)
        acc_ref[...] = jnp.zeros_like(acc_ref)

    q = q_ref[...]
    s = lax.dot_general(q, k_ref[...], NT, preferred_element_type=jnp.float32)
    s = s * jnp.float32(1.0 / math.sqrt(q.shape[-1]))  # [bq, bk]
    allowed = _allowed(_column(qs_ref[...], bq), ks_ref[...])
    s = jnp.where(allowed, s, MASK_VALUE)
    m_prev = m_ref[...]  # [bq, LANES], every lane the same
    m_next = jnp.maximum(m_prev, s.max(axis=-1, keepdims=True))
    p = jnp.where(allowed, jnp.exp(s - m_next[:, :1]), 0.0)
    alpha = jnp.exp(m_prev - m_next)
    l_ref[...] = alpha * l_ref[...] + p.sum(axis=-1, keepdims=True)
    m_ref[...] = m_next
    if st.rate > 0.0:
        q_idx = i * bq + lax.broadcasted_iota(jnp.int32, (bq, bk), 0)
        k_idx = j * bk + lax.broadcasted_iota(jnp.int32, (bq, bk), 1)
        keep = _keep(st, seeds_ref, b, n, q_idx, k_idx)
        p = jnp.where(keep, p * jnp.float32(st.scale), 0.0)
    v = v_ref[...]
    pv = lax.dot_general(p.astype(v.dtype), v, NN, preferred_element_type=jnp.float32)
    acc_ref[...] = acc_ref[...] * alpha[:, :1] + pv

    @pl.when(j == pl.num_programs(3) - 1)
    def _end():
        total = l_ref[...]
        total = jnp.where(total > 0.0, total, 1.0)  # a query with no key: zeros
        o_ref[...] = (acc_ref[...] / total[:, :1]).astype(o_ref.dtype)
        lse = m_ref[...] + jnp.log(total)  # [bq, LANES]
        lse_ref[...] = lse.T[:1, :]  # [1, bq]


def _dkv_kernel(
    seeds_ref, q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, qs_ref, ks_ref,
    dk_ref, dv_ref, dk_acc, dv_acc, *, st,
):  # fmt: skip
    """Grid (b, n, key block j, query block i): the transposed [bk, bq] probabilities."""
    b, n, j, i = (pl.program_id(a) for a in range(4))
    bq, bk = st.bq, st.bk

    @pl.when(i == 0)
    def _init():
        dk_acc[...] = jnp.zeros_like(dk_acc)
        dv_acc[...] = jnp.zeros_like(dv_acc)

    q, k, v, do = q_ref[...], k_ref[...], v_ref[...], do_ref[...]
    scale = jnp.float32(1.0 / math.sqrt(q.shape[-1]))
    s = lax.dot_general(k, q, NT, preferred_element_type=jnp.float32) * scale  # [bk, bq]
    allowed = _allowed(qs_ref[...], _column(ks_ref[...], bk))
    p = jnp.where(allowed, jnp.exp(s - lse_ref[...]), 0.0)
    dp = lax.dot_general(v, do, NT, preferred_element_type=jnp.float32)  # dO V^T, transposed
    if st.rate > 0.0:
        k_idx = j * bk + lax.broadcasted_iota(jnp.int32, (bk, bq), 0)
        q_idx = i * bq + lax.broadcasted_iota(jnp.int32, (bk, bq), 1)
        keep = _keep(st, seeds_ref, b, n, q_idx, k_idx)
        dropped = jnp.where(keep, p * jnp.float32(st.scale), 0.0)
        dp = jnp.where(keep, dp * jnp.float32(st.scale), 0.0)
    else:
        dropped = p
    dv_acc[...] += lax.dot_general(
        dropped.astype(do.dtype), do, NN, preferred_element_type=jnp.float32
    )
    ds = p * (dp - delta_ref[...])
    dk_acc[...] += lax.dot_general(ds.astype(q.dtype), q, NN, preferred_element_type=jnp.float32)

    @pl.when(i == pl.num_programs(3) - 1)
    def _end():
        dk_ref[...] = (dk_acc[...] * scale).astype(dk_ref.dtype)
        dv_ref[...] = dv_acc[...].astype(dv_ref.dtype)


def _dq_kernel(
    seeds_ref, q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, qs_ref, ks_ref,
    dq_ref, dq_acc, *, st,
):  # fmt: skip
    """Grid (b, n, query block i, key block j)."""
    b, n, i, j = (pl.program_id(a) for a in range(4))
    bq, bk = st.bq, st.bk

    @pl.when(j == 0)
    def _init():
        dq_acc[...] = jnp.zeros_like(dq_acc)

    q, k, v, do = q_ref[...], k_ref[...], v_ref[...], do_ref[...]
    scale = jnp.float32(1.0 / math.sqrt(q.shape[-1]))
    s = lax.dot_general(q, k, NT, preferred_element_type=jnp.float32) * scale  # [bq, bk]
    allowed = _allowed(_column(qs_ref[...], bq), ks_ref[...])
    lse, delta = (_column(ref[...], bq) for ref in (lse_ref, delta_ref))  # [bq, 1]
    p = jnp.where(allowed, jnp.exp(s - lse), 0.0)
    dp = lax.dot_general(do, v, NT, preferred_element_type=jnp.float32)  # [bq, bk]
    if st.rate > 0.0:
        q_idx = i * bq + lax.broadcasted_iota(jnp.int32, (bq, bk), 0)
        k_idx = j * bk + lax.broadcasted_iota(jnp.int32, (bq, bk), 1)
        keep = _keep(st, seeds_ref, b, n, q_idx, k_idx)
        dp = jnp.where(keep, dp * jnp.float32(st.scale), 0.0)
    ds = p * (dp - delta)
    dq_acc[...] += lax.dot_general(ds.astype(k.dtype), k, NN, preferred_element_type=jnp.float32)

    @pl.when(j == pl.num_programs(3) - 1)
    def _end():
        dq_ref[...] = (dq_acc[...] * scale).astype(dq_ref.dtype)


def _column(row: Array, size: int) -> Array:
    """[1, size] -> [size, 1], through a [LANES, size] transpose (the layouts Mosaic has)."""
    return jnp.transpose(jnp.broadcast_to(row, (LANES, size)))[:, :1]


def _specs(st: _Static, d: int, key_major: bool):
    """BlockSpecs of q (or dO) and k (or v) [B, N, T, D], of rows [B, N, 1, T] (lse, delta) and
    of the query and key blocks' segment ids [B, 1, T], for a grid (b, n, outer, inner) whose
    outer index walks key blocks when key_major, else query blocks."""

    def q_block(x, y):
        return y if key_major else x

    def k_block(x, y):
        return x if key_major else y

    return (
        pl.BlockSpec((None, None, st.bq, d), lambda b, n, x, y, *_: (b, n, q_block(x, y), 0)),
        pl.BlockSpec((None, None, st.bk, d), lambda b, n, x, y, *_: (b, n, k_block(x, y), 0)),
        pl.BlockSpec((None, None, 1, st.bq), lambda b, n, x, y, *_: (b, n, 0, q_block(x, y))),
        pl.BlockSpec((None, 1, st.bq), lambda b, n, x, y, *_: (b, 0, q_block(x, y))),
        pl.BlockSpec((None, 1, st.bk), lambda b, n, x, y, *_: (b, 0, k_block(x, y))),
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
    c = cost(kind, *q.shape, jnp.dtype(q.dtype).itemsize, st.bq, st.bk)
    return pl.CostEstimate(
        flops=c["flops"], transcendentals=c["transcendentals"], bytes_accessed=c["bytes"]
    )


def _compiler_params():
    return pltpu.CompilerParams(
        dimension_semantics=("parallel", "parallel", "parallel", "arbitrary")
    )


def _forward(st: _Static, seeds, q, k, v, seg):
    """q, k, v [B, N, T, D] (T a multiple of the blocks), seg [B, 1, T] -> o, lse [B, N, 1, T]."""
    b, n, t, d = q.shape
    q_spec, k_spec, row_spec, qs_spec, ks_spec = _specs(st, d, key_major=False)
    grid = pltpu.PrefetchScalarGridSpec(
        num_scalar_prefetch=1,
        grid=(b, n, t // st.bq, t // st.bk),
        in_specs=[q_spec, k_spec, k_spec, qs_spec, ks_spec],
        out_specs=[q_spec, row_spec],
        scratch_shapes=[
            pltpu.VMEM((st.bq, LANES), jnp.float32),
            pltpu.VMEM((st.bq, LANES), jnp.float32),
            pltpu.VMEM((st.bq, d), jnp.float32),
        ],
    )
    return pl.pallas_call(
        functools.partial(_forward_kernel, st=st),
        grid_spec=grid,
        out_shape=[
            jax.ShapeDtypeStruct(q.shape, q.dtype),
            jax.ShapeDtypeStruct((b, n, 1, t), jnp.float32),
        ],
        compiler_params=_compiler_params(),
        interpret=st.interpret,
        name="bert_flash_forward",
        cost_estimate=_estimate("forward", q, st),
    )(seeds, q, k, v, seg, seg)


def _backward(st: _Static, seeds, q, k, v, seg, o, lse, do):
    b, n, t, d = q.shape
    delta = jnp.einsum("bntd,bntd->bnt", do.astype(jnp.float32), o.astype(jnp.float32))
    delta = delta[:, :, None, :]  # [B, N, 1, T]
    inputs = (seeds, q, k, v, do, lse, delta)

    q_spec, k_spec, row_spec, qs_spec, ks_spec = _specs(st, d, key_major=True)
    dkv = pl.pallas_call(
        functools.partial(_dkv_kernel, st=st),
        grid_spec=pltpu.PrefetchScalarGridSpec(
            num_scalar_prefetch=1,
            grid=(b, n, t // st.bk, t // st.bq),
            in_specs=[
                q_spec,
                k_spec,
                k_spec,
                q_spec,
                row_spec,
                row_spec,
                qs_spec,
                ks_spec,
            ],  # fmt: skip
            out_specs=[k_spec, k_spec],
            scratch_shapes=[pltpu.VMEM((st.bk, d), jnp.float32)] * 2,
        ),
        out_shape=[jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)],
        compiler_params=_compiler_params(),
        interpret=st.interpret,
        name="bert_flash_dkv",
        cost_estimate=_estimate("dkv", q, st),
    )
    dk, dv = dkv(*inputs, seg, seg)

    q_spec, k_spec, row_spec, qs_spec, ks_spec = _specs(st, d, key_major=False)
    dq = pl.pallas_call(
        functools.partial(_dq_kernel, st=st),
        grid_spec=pltpu.PrefetchScalarGridSpec(
            num_scalar_prefetch=1,
            grid=(b, n, t // st.bq, t // st.bk),
            in_specs=[
                q_spec,
                k_spec,
                k_spec,
                q_spec,
                row_spec,
                row_spec,
                qs_spec,
                ks_spec,
            ],  # fmt: skip
            out_specs=q_spec,
            scratch_shapes=[pltpu.VMEM((st.bq, d), jnp.float32)],
        ),
        out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype),
        compiler_params=_compiler_params(),
        interpret=st.interpret,
        name="bert_flash_dq",
        cost_estimate=_estimate("dq", q, st),
    )(*inputs, seg, seg)
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

    def heads_major(x):  # [B, T, N, D] -> [B, N, T_pad, D]
        return jnp.pad(jnp.swapaxes(x, 1, 2), [(0, 0), (0, 0), (0, t_pad - t), (0, 0)])

    seg = jnp.pad(segment_ids.astype(jnp.int32), [(0, 0), (0, t_pad - t)])[:, None]  # [B, 1, T]
    st = _Static(t, rate, blk, blk, interpret)
    out = _flash(st, seeds, heads_major(query), heads_major(key), heads_major(value), seg)
    return jnp.swapaxes(out[:, :, :t], 1, 2)


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
