"""The encoder layer recomputes its feed-forward activation in the backward pass only when the
step compiles for TPUs (ops.compiles_for_tpu); on CPU the traced step is as before, and the
gradients are the same either way. The TPU bytes it saves: tests/integration/test_plan.py."""

import jax
import jax.numpy as jnp
import numpy as np
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
