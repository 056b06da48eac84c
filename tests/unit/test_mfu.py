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


def _compilers_forward_flops(config, seq_len: int) -> float:
    """XLA's FLOPs of one example's forward with 20 masked-LM predictions, from the lowered
    (unoptimised) program: XLA:CPU's compiled count misses its custom fusions."""
    model = BertForPreTraining(config)
    ids = jnp.zeros((1, seq_len), jnp.int32)
    positions = jnp.zeros((1, 20), jnp.int32)
    params = jax.eval_shape(lambda: model.init(jax.random.key(0), ids, ids, ids, positions))

    def forward(params):
        return model.apply(params, ids, ids, ids, positions).mlm_logits

    return jax.jit(forward).lower(params).cost_analysis()["flops"]


@pytest.mark.parametrize("preset, seq_len", [("mini", 128), ("small", 64)])
def test_model_flops_match_the_compilers_count_of_the_forward(preset, seq_len):
    config = BertConfig.preset(preset, vocab_size=4096, max_position_embeddings=512)
    xla_flops = _compilers_forward_flops(config, seq_len)
    ours = pretraining_flops_per_example(config, seq_len, 20) / 3  # forward only
    # XLA also counts softmax, layer norm and GELU arithmetic: a little above the matmuls.
    assert ours <= xla_flops <= 1.05 * ours, (ours, xla_flops)


def test_model_flops_of_the_modern_encoder_count_its_gate_and_windows():
    """GeGLU's third matrix counts, and a sliding-window layer's attention counts the window's
    keys, not all T: at or below the compiler's count of the local kernel (which computes a band
    of three key blocks per query block), above it by no more than that band's extra keys."""
    t, window, block = 256, 32, 32  # local_attention's block: max(window // 2, MIN_LOCAL_BLOCK)
    config = BertConfig.preset(
        "mini", vocab_size=4096, max_position_embeddings=512, ffn_type="geglu",
        local_attention_window=window, global_attn_every_n_layers=2, num_hidden_layers=4,
    )  # fmt: skip
    xla_flops = _compilers_forward_flops(config, t)
    ours = pretraining_flops_per_example(config, t, 20) / 3
    local_layers = sum(config.layer_window(i) > 0 for i in range(config.num_hidden_layers))
    assert local_layers == 2
    band_extra = local_layers * 2 * 2 * t * (3 * block - (window + 1)) * config.hidden_size
    assert ours <= xla_flops <= 1.05 * (ours + band_extra), (ours, xla_flops, band_extra)


def test_cpu_peak_is_the_configured_figure_or_the_measured_matmul_rate():
    devices = jax.local_device_count()  # 8 fake CPU devices share the host's cores
    assert peak_flops_per_device(cpu_peak_flops=8e11) == pytest.approx(8e11 / devices)
    measured = measured_cpu_matmul_flops(size=512, repeats=3)
    # Any machine this runs on does between 1 GFLOP/s and 100 TFLOP/s of fp32 matmul.
    assert 1e9 < measured < 1e14
    assert peak_flops_per_device() == pytest.approx(measured_cpu_matmul_flops() / devices)
