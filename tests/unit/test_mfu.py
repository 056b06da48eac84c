"""Model FLOPs and the peak they are divided by, for the MFU the loop and benchmarks report."""

import jax
import jax.numpy as jnp
import pytest

from bert_jax.model.modeling import BertConfig, BertForPreTraining
from bert_jax.training.metrics import (
    measured_cpu_matmul_flops,
    peak_flops_per_device,
    pretraining_flops_per_example,
)


@pytest.mark.parametrize("preset, seq_len", [("mini", 128), ("small", 64)])
def test_model_flops_match_the_compilers_count_of_the_forward(preset, seq_len):
    config = BertConfig.preset(preset, vocab_size=4096, max_position_embeddings=512)
    model = BertForPreTraining(config)
    ids = jnp.zeros((1, seq_len), jnp.int32)
    positions = jnp.zeros((1, 20), jnp.int32)
    params = jax.eval_shape(lambda: model.init(jax.random.key(0), ids, ids, ids, positions))

    def forward(params):
        return model.apply(params, ids, ids, ids, positions).mlm_logits

    # The lowered (unoptimised) program: XLA:CPU's compiled count misses its custom fusions.
    xla_flops = jax.jit(forward).lower(params).cost_analysis()["flops"]
    ours = pretraining_flops_per_example(config, seq_len, 20) / 3  # forward only
    # XLA also counts softmax, layer norm and GELU arithmetic: a little above the matmuls.
    assert ours <= xla_flops <= 1.05 * ours, (ours, xla_flops)


def test_cpu_peak_is_the_configured_figure_or_the_measured_matmul_rate():
    devices = jax.local_device_count()  # 8 fake CPU devices share the host's cores
    assert peak_flops_per_device(cpu_peak_flops=8e11) == pytest.approx(8e11 / devices)
    measured = measured_cpu_matmul_flops(size=512, repeats=3)
    # Any machine this runs on does between 1 GFLOP/s and 100 TFLOP/s of fp32 matmul.
    assert 1e9 < measured < 1e14
    assert peak_flops_per_device() == pytest.approx(measured_cpu_matmul_flops() / devices)
