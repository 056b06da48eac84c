"""Numerics the reference recipes depend on at scale: dropout masks over large batches, bfloat16
precision (attention logits, the vocabulary decoder, the dropout scale, training against float32)
and the padded vocabulary (exactly the unpadded model's numbers; `mesh.tensor` 4 and 8 at 30522).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from test_modeling import SMALL  # the tests folder is on sys.path under pytest
from test_optim import load_config

from bert_jax.model.modeling import (
    BertConfig,
    BertEmbeddings,
    BertForPreTraining,
    BertSelfAttention,
)
from bert_jax.model.ops import Dropout, dropout_keep_mask
from bert_jax.pretraining.config import validate_pretraining_config
from bert_jax.pretraining.step import (
    build_pretrainer,
    metrics_from_sums,
    pretraining_forward,
    pretraining_sums,
)
from bert_jax.training import sharding
from bert_jax.training.optim import make_optimizer

CONFIGS = [
    ("bert_base", "phase1"),
    ("bert_base", "phase2"),
    ("bert_large", "phase1"),
    ("bert_large", "phase2"),
    ("bert_large_lamb", "phase1"),
    ("bert_large_lamb", "phase2"),
    ("demo", "demo"),
]


# -- dropout masks -----------------------------------------------------------------------------


@jax.jit
def _row_agreement(rng, shape_probe, rows):
    """Share of elements on which the 0.1-dropout masks of rows[0] and rows[1] agree."""
    keep, _ = dropout_keep_mask(rng, 0.1, shape_probe.shape, rows=rows)
    return jnp.mean(keep[0] == keep[1])


def test_dropout_masks_of_rows_0_and_2_to_the_k_differ_for_every_config():
    """The whole global batch in one pass (fewer accumulation steps on more devices), for the
    attention probabilities [B, N, T, T] and hidden states [B, T, H] of every config; only the
    two rows compared are computed. Independent masks agree on 0.9^2 + 0.1^2 = 82%."""
    rng = jax.random.key(0)
    checked = 0
    for name, arg in CONFIGS:
        config = load_config(name, arg)
        b, t = config.batch_size, config.data.max_seq_length
        heads, hidden = config.model.num_attention_heads, config.model.hidden_size
        for shape in ((b, heads, t, t), (b, t, hidden)):
            probe = jax.ShapeDtypeStruct(shape, jnp.float32)
            for k in range(1, b.bit_length()):
                if 2**k >= b:
                    break
                rows = jnp.array([0, 2**k], jnp.uint32)
                agreement = float(_row_agreement(rng, probe, rows))
                assert 0.80 < agreement < 0.84, (name, arg, shape, 2**k, agreement)
                checked += 1
    assert checked > 100


def test_dropout_rows_subset_equals_the_full_mask_and_keeps_the_rate():
    rng = jax.random.key(3)
    shape = (6, 3, 5, 7)  # odd last axis: the final 16-bit half of each row's last word unused
    full, scale = dropout_keep_mask(rng, 0.1, shape)
    part, part_scale = dropout_keep_mask(rng, 0.1, shape, rows=[4, 1])
    np.testing.assert_array_equal(part, np.asarray(full)[[4, 1]])
    assert scale == part_scale == 65536 / (65536 - 6554)
    big, _ = dropout_keep_mask(rng, 0.1, (64, 128, 256))
    assert abs(float(jnp.mean(big)) - (1 - 6554 / 65536)) < 2e-3


# -- bfloat16 precision ------------------------------------------------------------------------


def test_bfloat16_dropout_scales_in_float32():
    x = jax.random.normal(jax.random.key(0), (8, 64), jnp.float32).astype(jnp.bfloat16)
    out = Dropout(0.1).apply({}, x, deterministic=False, rngs={"dropout": jax.random.key(1)})
    scale = dropout_keep_mask(jax.random.key(1), 0.1, x.shape)[1]
    assert out.dtype == jnp.bfloat16
    kept = np.asarray(out) != 0
    want = (np.asarray(x, np.float32) * scale).astype(jnp.bfloat16)
    np.testing.assert_array_equal(np.asarray(out)[kept], want[kept])
    assert kept.mean() > 0.8 and float(jnp.bfloat16(scale)) == 1.109375  # bf16 rounds 1.1111


def test_bfloat16_attention_dropout_path_matches_fused_path():
    """Both paths take float32 QK^T products (the fused one always did): with nothing dropped
    they give the same bits."""
    config = BertConfig(**SMALL, dtype="bfloat16")
    x = jax.random.normal(jax.random.key(1), (2, 16, config.hidden_size)).astype(jnp.bfloat16)
    key_mask = jnp.ones((2, 16), bool).at[1, 11:].set(False)
    params = BertSelfAttention(config).init(jax.random.key(2), x, key_mask, True)
    # Sharpen the attention so that logit rounding would show.
    params = jax.tree.map(lambda p: p * 8.0, params)
    fused = BertSelfAttention(config).apply(params, x, key_mask, True)
    explicit = BertSelfAttention(config.replace(attention_probs_dropout_prob=1e-9)).apply(
        params, x, key_mask, False, rngs={"dropout": jax.random.key(0)}
    )
    # Rounding QK^T to bfloat16 first changed about half of these outputs, by up to 0.8%.
    np.testing.assert_array_equal(np.asarray(explicit, np.float32), np.asarray(fused, np.float32))


def test_bfloat16_decoder_returns_float32_products_of_bfloat16_operands():
    config = BertConfig(**SMALL, dtype="bfloat16")
    h = jax.random.normal(jax.random.key(0), (2, 5, config.hidden_size)) * 3.0
    embeddings = BertEmbeddings(config)
    ids = jnp.zeros((1, 4), jnp.int32)
    params = embeddings.init(jax.random.key(1), ids, ids, ids, True)
    params = jax.tree.map(lambda p: p * 10.0, params)  # logits of order 10
    logits = embeddings.apply(params, h, method="attend")
    assert logits.dtype == jnp.float32 and logits.shape == (2, 5, config.padded_vocab_size)
    table = nn.meta.unbox(params)["params"]["word_embeddings"]["embedding"]
    as_bf16 = lambda a: np.asarray(jnp.asarray(a).astype(jnp.bfloat16), np.float32)  # noqa: E731
    want = np.einsum("bph,vh->bpv", as_bf16(h), as_bf16(table))
    np.testing.assert_allclose(np.asarray(logits), want, rtol=1e-5, atol=1e-4)
    assert np.abs(want).max() > 5.0


def synthetic_batches(n: int, batch: int, seq: int, preds: int, vocab: int, seed: int = 0):
    """Learnable pretraining batches: segment A repeats one random token, segment B repeats it
    again (NSP label 0) or another token (label 1); masked tokens are copies of a neighbour."""
    rng = np.random.default_rng(seed)
    half = seq // 2
    batches = []
    for _ in range(n):
        first, other = rng.integers(5, vocab, (2, batch, 1))
        labels = rng.integers(0, 2, batch)
        second = np.where(labels[:, None] == 0, first, other)
        ids = np.concatenate([first.repeat(half, 1), second.repeat(seq - half, 1)], axis=1)
        positions = np.stack([rng.choice(np.arange(1, seq), preds, replace=False) for _ in ids])
        masked_ids = np.take_along_axis(ids, positions, 1)
        np.put_along_axis(ids, positions, 4, 1)  # [MASK]
        batches.append(
            dict(
                input_ids=ids.astype(np.int32),
                attention_mask=np.ones((batch, seq), np.int32),
                token_type_ids=(np.arange(seq)[None] >= half).repeat(batch, 0).astype(np.int32),
                masked_lm_positions=positions.astype(np.int32),
                masked_lm_ids=masked_ids.astype(np.int32),
                masked_lm_weights=np.ones((batch, preds), np.float32),
                next_sentence_labels=labels.astype(np.int32),
            )
        )
    return batches


def pretraining_test_config(
    model: BertConfig, mesh: dict, steps: int, batch: int, seq: int, preds: int
):
    c = ml_collections.ConfigDict()
    c.num_train_steps, c.warmup_steps, c.batch_size, c.seed = steps, min(5, steps - 1), batch, 0
    c.learning_rate, c.optimizer, c.schedule, c.weight_decay = 1e-2, "adamw", "bert", 0.01
    c.grad_accum_steps = 1
    c.model = ml_collections.ConfigDict(model.to_dict())
    c.data = ml_collections.ConfigDict(
        dict(max_seq_length=seq, max_predictions_per_seq=preds, masked_lm_prob=0.15)
    )
    c.mesh = ml_collections.ConfigDict(mesh)
    return c


def train_losses(config, batches, devices) -> tuple[np.ndarray, object]:
    """The real sharded train step on `devices`, one batch per step; the loss of each."""
    mesh = sharding.make_mesh(config.mesh, devices)
    with jax.set_mesh(mesh):
        trainer = build_pretrainer(config, mesh)
        state = trainer.init(jax.random.key(0))
        losses = []
        for batch in batches:
            state, metrics = trainer.train_step(
                state, trainer.shard_batch(batch), jax.random.key(1)
            )
            losses.append(metrics_from_sums(jax.device_get(metrics))["loss"])
    return np.array(losses), state


def scanned_losses(config, batches) -> np.ndarray:
    """The same step (loss, optimizer, dropout rng per step) in one lax.scan: one compilation."""
    model = BertForPreTraining(BertConfig.from_dict(dict(config.model)))
    optimizer = make_optimizer(config)
    stacked = jax.tree.map(lambda *xs: np.stack(xs), *batches)
    first = jax.tree.map(lambda x: x[0], stacked)

    def run(stacked):
        params = model.init(
            jax.random.key(0),
            first["input_ids"],
            first["token_type_ids"],
            first["attention_mask"],
            first["masked_lm_positions"],
        )["params"]
        params = nn.meta.unbox(params)

        def step(carry, inputs):
            params, opt_state = carry
            index, batch = inputs

            def loss_fn(p):
                out = pretraining_forward(
                    model, p, batch, jax.random.fold_in(jax.random.key(1), index)
                )
                sums = pretraining_sums(out, batch)
                return (
                    sums["mlm_loss_sum"] / sums["mlm_weight"]
                    + sums["nsp_loss_sum"] / sums["nsp_count"]
                )

            loss, grads = jax.value_and_grad(loss_fn)(params)
            updates, opt_state = optimizer.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), loss

        steps = jnp.arange(len(batches))
        _, losses = jax.lax.scan(step, (params, optimizer.init(params)), (steps, stacked))
        return losses

    return np.asarray(jax.jit(run)(stacked))


def test_bfloat16_training_tracks_float32_over_50_steps():
    """Same init, batches and dropout masks; bfloat16 compute vs float32. Stated tolerance: the
    loss curves stay within 0.03 (of about 4.9 falling to 4; measured 0.011) at every step."""
    steps, batch, seq, preds, vocab = 50, 8, 16, 3, 64
    batches = synthetic_batches(steps, batch, seq, preds, vocab)
    model = BertConfig(
        vocab_size=vocab,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=seq,
    )
    one = dict(data=1, fsdp=1, tensor=1)
    curves = {}
    for dtype in ("float32", "bfloat16"):
        config = pretraining_test_config(model.replace(dtype=dtype), one, steps, batch, seq, preds)
        curves[dtype] = scanned_losses(config, batches)
    full, half = curves["float32"], curves["bfloat16"]
    assert full[-5:].mean() < full[:5].mean() - 0.5  # it learns
    assert np.abs(half - full).max() < 0.03, np.abs(half - full)
    assert np.abs(half - full).max() > 0  # really two precisions


# -- the padded vocabulary ---------------------------------------------------------------------


def test_padded_vocabulary_columns_never_count():
    """Even with adversarial values in the padding rows, the padded logits are the float32
    minimum, and loss and accuracy are those of softmax / argmax over the real vocabulary."""
    config = BertConfig(**SMALL)
    assert (config.vocab_size, config.padded_vocab_size) == (97, 128)
    model = BertForPreTraining(config)
    rng = np.random.default_rng(0)
    ids = rng.integers(5, 97, (2, 16)).astype(np.int32)
    positions = np.array([[1, 3, 5], [2, 4, 6]], np.int32)
    init = jax.jit(lambda rng: model.init(rng, ids, masked_lm_positions=positions)["params"])
    params = nn.meta.unbox(init(jax.random.key(0)))
    table = params["bert"]["embeddings"]["word_embeddings"]["embedding"]
    assert table.shape == (128, 32) and not np.asarray(table[97:]).any()
    assert not np.asarray(params["mlm_output_bias"][97:]).any()
    params["mlm_output_bias"] = params["mlm_output_bias"].at[97:].set(1e4)
    params["bert"]["embeddings"]["word_embeddings"]["embedding"] = table.at[97:].set(3.0)

    labels = rng.integers(0, 97, (2, 3)).astype(np.int32)
    batch = dict(
        masked_lm_ids=labels,
        masked_lm_weights=np.array([[1, 1, 0], [1, 1, 1]], np.float32),
        next_sentence_labels=np.array([0, 1], np.int32),
    )

    def loss(p):
        out = model.apply({"params": p}, ids, masked_lm_positions=positions)
        return pretraining_sums(out, batch)["mlm_loss_sum"], out

    (mlm_loss, out), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
    padded = np.asarray(out.padded_mlm_logits)
    assert padded.shape == (2, 3, 128) and out.mlm_logits.shape == (2, 3, 97)
    assert (padded[..., 97:] == np.finfo(np.float32).min).all()
    np.testing.assert_array_equal(padded[..., :97], out.mlm_logits)
    real = np.asarray(out.mlm_logits, np.float64)
    log_probs = real - np.log(np.exp(real - real.max(-1, keepdims=True)).sum(-1, keepdims=True))
    log_probs -= real.max(-1, keepdims=True)
    label_log_prob = np.take_along_axis(log_probs, labels[..., None], -1)[..., 0]
    sums = pretraining_sums(out, batch)
    np.testing.assert_allclose(
        float(mlm_loss), -(label_log_prob * batch["masked_lm_weights"]).sum(), rtol=1e-6
    )
    correct = (real.argmax(-1) == labels) * batch["masked_lm_weights"]
    assert float(sums["mlm_correct"]) == correct.sum()
    # The padding gets no gradient, so no optimizer moves it (and LAMB's norms ignore it).
    assert not np.asarray(grads["mlm_output_bias"][97:]).any()
    assert not np.asarray(grads["bert"]["embeddings"]["word_embeddings"]["embedding"][97:]).any()


def test_vocab_30522_trains_on_tensor_4_and_8_like_one_device():
    """30,522 = 2 x 3 x 5,087: unpadded, `mesh.tensor` 4 and 8 could not split the vocabulary."""
    steps, batch, seq, preds = 2, 8, 8, 2
    model = BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=8,
        intermediate_size=64,
        max_position_embeddings=seq,
    )
    assert model.padded_vocab_size == 30592
    batches = synthetic_batches(steps, batch, seq, preds, model.vocab_size, seed=1)
    one = pretraining_test_config(model, dict(data=1, fsdp=1, tensor=1), steps, batch, seq, preds)
    reference, _ = train_losses(one, batches, jax.devices()[:1])
    for mesh in (dict(data=2, fsdp=1, tensor=4), dict(data=1, fsdp=1, tensor=8)):
        config = pretraining_test_config(model, mesh, steps, batch, seq, preds)
        validate_pretraining_config(config, 8, check_files=False)
        losses, state = train_losses(config, batches, jax.devices())
        np.testing.assert_allclose(losses, reference, rtol=1e-5)
        table = state.params["bert"]["embeddings"]["word_embeddings"]["embedding"]
        assert "tensor" in tuple(table.sharding.spec)
        assert table.addressable_shards[0].data.shape[0] == 30592 // mesh["tensor"]
        assert not np.asarray(table[30522:]).any()  # LAMB moved the real rows, not the padding
        assert np.asarray(table[:30522]).any()


def test_gelu_names_match_their_formulas_and_the_tf1_mapping():
    """ "gelu" is the exact erf form (Hugging Face, PyTorch); google-research/bert's modeling.py
    `gelu` is the tanh approximation, "gelu_new" here, which is how TF1 configs are read."""
    from math import erf

    from bert_jax.convert.tf1 import config_from_tf1_dict, tf1_config_dict
    from bert_jax.model.modeling import ACTIVATIONS

    x = np.linspace(-6.0, 6.0, 2001)
    exact = 0.5 * x * (1.0 + np.vectorize(erf)(x / np.sqrt(2.0)))
    google = 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x**3)))
    as_float = lambda name: np.asarray(ACTIVATIONS[name](jnp.asarray(x, jnp.float32)))  # noqa: E731
    np.testing.assert_allclose(as_float("gelu"), exact, atol=2e-6)
    for name in ("gelu_new", "gelu_pytorch_tanh", "gelu_fast"):
        np.testing.assert_allclose(as_float(name), google, atol=2e-6, err_msg=name)
    assert np.abs(exact - google).max() > 1e-4  # two different functions
    read = config_from_tf1_dict(dict(hidden_act="gelu"))
    np.testing.assert_allclose(as_float(read.hidden_act), google, atol=2e-6)
    assert tf1_config_dict(read)["hidden_act"] == "gelu"
