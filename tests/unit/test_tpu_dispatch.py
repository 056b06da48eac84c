"""The encoder layer recomputes its feed-forward activation in the backward pass only when the
step compiles for TPUs (ops.compiles_for_tpu); on CPU the traced step is as before, and the
gradients are the same either way. The TPU bytes it saves: tests/integration/test_plan.py."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh

from bert_jax.model import modeling, ops


def _layer_grads(monkeypatch, on_tpu: bool):
    monkeypatch.setattr(modeling, "compiles_for_tpu", lambda: on_tpu)
    config = modeling.BertConfig(
        vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )  # fmt: skip
    layer = modeling.BertLayer(config)
    x = jax.random.normal(jax.random.key(0), (2, 8, 16))
    mask = jnp.ones((2, 8), bool)
    params = layer.init(jax.random.key(1), x, mask, True)

    def loss(params):
        return jnp.sum(layer.apply(params, x, mask, True) ** 2)

    jaxpr = jax.make_jaxpr(jax.grad(loss))(params)
    return jax.grad(loss)(params), str(jaxpr)


def test_activation_recomputed_only_for_tpu(monkeypatch):
    grads_cpu, jaxpr_cpu = _layer_grads(monkeypatch, on_tpu=False)
    grads_tpu, jaxpr_tpu = _layer_grads(monkeypatch, on_tpu=True)
    assert "checkpoint" not in jaxpr_cpu and "remat" not in jaxpr_cpu
    assert "checkpoint" in jaxpr_tpu or "remat" in jaxpr_tpu
    for a, b in zip(jax.tree.leaves(grads_cpu), jax.tree.leaves(grads_tpu), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-6)


def test_compiles_for_tpu_is_false_on_cpu():
    assert not ops.compiles_for_tpu()
    seen = []
    mesh = Mesh(np.array(jax.devices("cpu")[:1]), ("data",))
    with jax.set_mesh(mesh):
        jax.jit(lambda x: seen.append(ops.compiles_for_tpu()) or x).lower(1.0)
    assert seen == [False]


def _attend_sharded(monkeypatch, on_tpu: bool, dropout: bool):
    """attend under an 8-device (data 2, fsdp 2, tensor 2) mesh and the default rules, jitted:
    output, (dq, dk, dv) and the jaxpr."""
    import flax.linen as nn
    from jax.sharding import AxisType, NamedSharding, PartitionSpec

    from bert_jax.model import attention, tpu_attention
    from bert_jax.training.sharding import DEFAULT_RULES, MESH_AXES

    monkeypatch.setattr(attention, "compiles_for_tpu", lambda: on_tpu)
    interpreted = functools.partial(tpu_attention.flash_attention, interpret=True)
    monkeypatch.setattr(tpu_attention, "flash_attention", interpreted)  # Pallas on CPU
    b, t, n, d = 4, 128, 2, 32
    keys = jax.random.split(jax.random.key(0), 4)
    q, k, v, w = (jax.random.normal(x, (b, t, n, d)) for x in keys)
    seg = np.ones((b, t), np.int32)
    seg[0, 50:], seg[3, 90:] = 2, 0  # packed, padded
    mesh = Mesh(np.array(jax.devices("cpu")[:8]).reshape(2, 2, 2), MESH_AXES,
                axis_types=(AxisType.Auto,) * 3)  # fmt: skip
    heads = NamedSharding(mesh, PartitionSpec(("data", "fsdp"), None, "tensor", None))
    q, k, v, w = (jax.device_put(x, heads) for x in (q, k, v, w))

    def loss(q, k, v):
        with nn.logical_axis_rules(DEFAULT_RULES):
            out = attention.attend(
                q, k, v, segment_ids=jnp.asarray(seg), dropout_rate=0.1 if dropout else 0.0,
                dropout_rng=jax.random.key(3), deterministic=not dropout,
            )  # fmt: skip
        return jnp.sum(out * w), out

    step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))
    with jax.set_mesh(mesh):
        (_, out), grads = step(q, k, v)
        jaxpr = str(jax.make_jaxpr(step)(q, k, v))
    return out, grads, jaxpr


@pytest.mark.parametrize("dropout", [True, False])
def test_tpu_attention_kernel_per_shard(monkeypatch, dropout):
    """Compiling for TPUs, attend runs the Pallas kernel in a shard_map over the batch and head
    shards, each dropping its own rows and heads of the global mask: the same output and
    gradients as the materialised softmax the CPU traces, which has no Pallas call."""
    out_cpu, grads_cpu, jaxpr_cpu = _attend_sharded(monkeypatch, False, dropout)
    out_tpu, grads_tpu, jaxpr_tpu = _attend_sharded(monkeypatch, True, dropout)
    assert "pallas_call" not in jaxpr_cpu and "shard_map" not in jaxpr_cpu
    assert "pallas_call" in jaxpr_tpu and "shard_map" in jaxpr_tpu
    np.testing.assert_allclose(np.asarray(out_tpu), np.asarray(out_cpu), atol=1e-5, rtol=0)
    for a, b in zip(grads_tpu, grads_cpu, strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5, rtol=0)
