"""The modern-encoder recipe pieces: the warmup-stable-decay schedule and StableAdamW against
hand computations, MLM-only examples (one segment of whole sentences, no NSP in the step), and
batch-size warmup (its sizes, and a warmup step equal to a step on only the rows that count).
All on BERT-architecture tiny configs."""

import dataclasses
import random

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from conftest import demo_config

from bert_jax.data import examples
from bert_jax.errors import UserError
from bert_jax.pretraining.config import validate_pretraining_config
from bert_jax.pretraining.step import build_pretrainer, warmup_batch_size
from bert_jax.training import sharding
from bert_jax.training.optim import learning_rate_schedule, make_optimizer


def schedule_config(**overrides):
    c = ml_collections.ConfigDict(
        dict(
            learning_rate=1.0,
            num_train_steps=100,
            warmup_steps=10,
            schedule="wsd",
            wsd_decay_fraction=0.2,
            wsd_decay_shape="linear",
            end_learning_rate_factor=0.1,
        )
    )
    c.update(overrides)
    return c


@pytest.mark.parametrize("shape", ["linear", "1-sqrt"])
def test_wsd_schedule_values(shape):
    lr = learning_rate_schedule(schedule_config(wsd_decay_shape=shape))
    fall = {"linear": lambda x: x, "1-sqrt": np.sqrt}[shape]
    # warmup 0..10, stable to 80, decay 80..100 from 1.0 to 0.1
    expected = {0: 0.0, 5: 0.5, 10: 1.0, 50: 1.0, 80: 1.0, 100: 0.1, 120: 0.1}
    for step in (85, 90, 99):
        expected[step] = 1.0 - 0.9 * fall((step - 80) / 20)
    for step, value in expected.items():
        assert float(lr(step)) == pytest.approx(value, abs=1e-6), step
    assert float(lr(90)) == pytest.approx(0.55 if shape == "linear" else 1 - 0.9 * 0.5**0.5)


def test_wsd_schedule_without_decay_stays_at_the_peak_and_rejects_bad_values():
    lr = learning_rate_schedule(schedule_config(wsd_decay_fraction=0.0))
    assert [float(lr(s)) for s in (10, 99, 100)] == [1.0, 1.0, 1.0]
    with pytest.raises(UserError, match="inside the 10 warmup steps"):
        learning_rate_schedule(schedule_config(wsd_decay_fraction=0.95))
    with pytest.raises(UserError, match="wsd_decay_shape 'cosine'"):
        learning_rate_schedule(schedule_config(wsd_decay_shape="cosine"))


def stable_adamw_reference(params, grads_seq, lr, b1, b2, eps, wd, decays):
    """Wortsman et al. 2023, Alg. 1 (AdamW-style decay) written out in float64 numpy."""
    p = {k: np.asarray(v, np.float64) for k, v in params.items()}
    m = {k: np.zeros_like(v) for k, v in p.items()}
    v = {k: np.zeros_like(x) for k, x in p.items()}
    for t, grads in enumerate(grads_seq, start=1):
        for k in p:
            g = np.asarray(grads[k], np.float64)
            m[k] = b1 * m[k] + (1 - b1) * g
            v[k] = b2 * v[k] + (1 - b2) * g * g
            m_hat, v_hat = m[k] / (1 - b1**t), v[k] / (1 - b2**t)
            rms = np.sqrt(np.mean(g * g / np.maximum(v_hat, eps * eps)))
            eta = lr / max(1.0, rms)
            update = m_hat / (np.sqrt(v_hat) + eps) + (wd * p[k] if decays[k] else 0.0)
            p[k] = p[k] - eta * update
    return p


def test_stable_adamw_matches_the_hand_computation_and_clips():
    rng = np.random.default_rng(0)
    params = {"kernel": rng.normal(size=(3, 4)), "bias": rng.normal(size=(4,))}
    # Step 2's kernel gradient is 100x step 1's: g^2 / v^ is large, so RMS > 1 clips it.
    g1 = {"kernel": rng.normal(size=(3, 4)), "bias": rng.normal(size=(4,))}
    g2 = {"kernel": 100 * rng.normal(size=(3, 4)), "bias": rng.normal(size=(4,))}
    config = ml_collections.ConfigDict(
        dict(
            optimizer="stableadamw",
            learning_rate=0.01,
            weight_decay=0.1,
            adam_b1=0.9,
            adam_b2=0.98,
            adam_eps=1e-6,
            max_grad_norm=0.0,
        )
    )
    optimizer = make_optimizer(config, optax.constant_schedule(0.01))
    state = optimizer.init(jax.tree.map(jnp.float32, params))
    p = jax.tree.map(jnp.float32, params)
    for g in (g1, g2):
        updates, state = optimizer.update(jax.tree.map(jnp.float32, g), state, p)
        p = optax.apply_updates(p, updates)
    want = stable_adamw_reference(
        params, [g1, g2], 0.01, 0.9, 0.98, 1e-6, 0.1, {"kernel": True, "bias": False}
    )
    for k in params:
        np.testing.assert_allclose(np.asarray(p[k]), want[k], rtol=1e-5, atol=1e-7)
    # The clipping acted: plain AdamW's step-2 kernel update is larger.
    kernel_rms = np.sqrt(np.mean(g2["kernel"] ** 2 / (0.02 * g2["kernel"] ** 2 + 0.98 * 0.0)))
    assert kernel_rms > 1
    adamw = make_optimizer(
        ml_collections.ConfigDict({**config.to_dict(), "optimizer": "adamw"}),
        optax.constant_schedule(0.01),
    )
    a_state, a = adamw.init(jax.tree.map(jnp.float32, params)), jax.tree.map(jnp.float32, params)
    for g in (g1, g2):
        updates, a_state = adamw.update(jax.tree.map(jnp.float32, g), a_state, a)
        a = optax.apply_updates(a, updates)
    moved = lambda tree: np.abs(np.asarray(tree["kernel"]) - params["kernel"]).sum()  # noqa: E731
    assert moved(p) < moved(a)


# -- MLM-only examples ---------------------------------------------------------------------------

OPTIONS = examples.ExampleOptions(
    max_seq_length=16,
    max_predictions_per_seq=5,
    masked_lm_prob=0.3,
    short_seq_prob=0.0,
    next_sentence_prediction=False,
)
VOCAB = examples.Vocabulary(size=100, pad_id=0, cls_id=1, sep_id=2, mask_id=3)
SENTENCES, DOCUMENTS = np.array([3, 4, 5, 20, 2, 2]), np.array([3, 3])


def test_document_chunks_fill_the_row_and_drop_no_token():
    chunks = examples.document_chunks(SENTENCES, DOCUMENTS, random.Random(0), OPTIONS)
    # 14 text tokens a row: document 0 (12 tokens) whole; document 1 (24) as 14 + 10.
    assert chunks.a_start.tolist() == [0, 12, 26]
    assert chunks.a_length.tolist() == [12, 14, 10]
    assert (chunks.b_length == 0).all() and not chunks.is_random_next.any()
    short = dataclasses.replace(OPTIONS, short_seq_prob=1.0)
    chunks = examples.document_chunks(SENTENCES, DOCUMENTS, random.Random(0), short)
    assert chunks.a_length.sum() == SENTENCES.sum()  # every token in exactly one chunk
    assert (np.diff(chunks.a_start) == chunks.a_length[:-1]).all()


def test_single_segment_rows_have_one_sep_no_token_types_and_the_masking_budget():
    tokens = np.arange(10, 46, dtype=np.int32)  # 36 tokens, documents of 12 and 24
    built = examples.create_examples(
        tokens, SENTENCES, DOCUMENTS, [0], OPTIONS, VOCAB, shuffle=False
    )
    lengths = built["attention_mask"].sum(1)
    assert lengths.tolist() == [14, 16, 12]  # [CLS] chunk [SEP]
    restored = examples.original_ids(built)
    np.testing.assert_array_equal(restored[0, :14], [1, *range(10, 22), 2])
    np.testing.assert_array_equal(restored[1, :16], [1, *range(22, 36), 2])
    np.testing.assert_array_equal(restored[2, :12], [1, *range(36, 46), 2])
    assert (built["token_type_ids"] == 0).all()
    # round(n x 0.3) with n the row's tokens, specials included: 14 -> 4, 16 -> 5, 12 -> 4
    assert built["masked_lm_weights"].sum(1).tolist() == [4, 5, 4]
    positions = built["masked_lm_positions"][built["masked_lm_weights"] > 0]
    assert positions.min() >= 1  # never [CLS], [SEP] or padding
    rows = np.nonzero(built["masked_lm_weights"])[0]
    assert (positions < lengths[rows] - 1).all()


# -- the step --------------------------------------------------------------------------------------


def tiny_config(**overrides):
    c = demo_config("test")
    c.data.next_sentence_prediction = False
    c.model.hidden_dropout_prob = 0.0
    c.model.attention_probs_dropout_prob = 0.0
    c.mesh.data = 1
    c.warmup_steps = 0  # the first update moves the parameters
    for key, value in overrides.items():
        node = c
        *parents, leaf = key.split(".")
        for part in parents:
            node = node[part]
        node[leaf] = value
    return c


def random_batch(config, rows: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    t, p = config.data.max_seq_length, config.data.max_predictions_per_seq
    lengths = rng.integers(t // 2, t + 1, rows)
    mask = (np.arange(t)[None] < lengths[:, None]).astype(np.int32)
    positions = np.sort(rng.integers(1, t // 2, (rows, p)), axis=1).astype(np.int32)
    return {
        "input_ids": (rng.integers(5, 200, (rows, t)) * mask).astype(np.int32),
        "attention_mask": mask,
        "token_type_ids": np.zeros((rows, t), np.int32),
        "masked_lm_positions": positions,
        "masked_lm_ids": rng.integers(5, 200, (rows, p)).astype(np.int32),
        "masked_lm_weights": (rng.random((rows, p)) < 0.8).astype(np.float32),
        "next_sentence_labels": rng.integers(0, 2, rows).astype(np.int32),
    }


def run_steps(config, batches):
    mesh = sharding.make_mesh(config.mesh, jax.devices()[:1])
    with jax.set_mesh(mesh):
        trainer = build_pretrainer(config, mesh)
        state = trainer.init(jax.random.key(0))
        out = []
        for batch in batches:
            state, metrics = trainer.train_step(
                state, trainer.shard_batch(batch), jax.random.key(1)
            )
            out.append(jax.device_get(metrics))
        return jax.device_get(state.params), out


def test_mlm_only_step_has_no_nsp_term():
    config = tiny_config()
    batch = random_batch(config, config.batch_size)
    params, (metrics,) = run_steps(config, [batch])
    assert not any(k.startswith("nsp_") and k != "nsp_count" for k in metrics)
    assert metrics["nsp_count"] == config.batch_size
    # The NSP head gets no gradient: with weight decay 0 its parameters do not move.
    config.weight_decay = 0.0
    init_params = None
    mesh = sharding.make_mesh(config.mesh, jax.devices()[:1])
    with jax.set_mesh(mesh):
        init_params = jax.device_get(build_pretrainer(config, mesh).init(jax.random.key(0)).params)
    params, _ = run_steps(config, [batch])
    np.testing.assert_array_equal(
        params["nsp"]["dense"]["kernel"], init_params["nsp"]["dense"]["kernel"]
    )
    moved = (
        params["mlm_transform"]["dense"]["kernel"] - init_params["mlm_transform"]["dense"]["kernel"]
    )
    assert np.abs(moved).max() > 1e-5


def test_warmup_batch_sizes():
    config = ml_collections.ConfigDict(
        dict(batch_size=4608, batch_warmup_start_size=768, batch_warmup_steps=100)
    )
    sizes = [warmup_batch_size(config, s) for s in (0, 19, 20, 39, 40, 79, 80, 99, 100, 10**6)]
    # k = 5 runs of 20 steps at 768, 1536, ..., 3840; then 4608
    assert sizes == [768, 768, 1536, 1536, 2304, 3072, 3840, 3840, 4608, 4608]
    traced = jax.jit(lambda s: warmup_batch_size(config, s))
    assert [int(traced(jnp.int32(s))) for s in (0, 20, 79, 99, 100)] == [
        768,
        1536,
        3072,
        3840,
        4608,
    ]
    assert warmup_batch_size(ml_collections.ConfigDict(dict(batch_size=8)), 0) == 8


@pytest.mark.parametrize("accum", [1, 2])
def test_a_warmup_step_equals_a_step_on_the_rows_that_count(accum):
    """Batch 8 at warmup size 4: the same update and sums as a batch of those 4 rows alone."""
    warm = tiny_config(batch_size=8, batch_warmup_start_size=4, batch_warmup_steps=10)
    warm.grad_accum_steps = accum
    plain = tiny_config(batch_size=4)
    full = random_batch(warm, 8)
    first = {k: v[:4] for k, v in full.items()}
    warm_params, (warm_metrics,) = run_steps(warm, [full])
    plain_params, (plain_metrics,) = run_steps(plain, [first])
    assert warm_metrics["rows"] == 4
    for key in ("mlm_loss_sum", "mlm_weight", "mlm_correct", "nsp_count", "real_tokens"):
        np.testing.assert_allclose(warm_metrics[key], plain_metrics[key], rtol=1e-5)
    np.testing.assert_allclose(warm_metrics["grad_norm"], plain_metrics["grad_norm"], rtol=1e-4)
    for a, b in zip(jax.tree.leaves(warm_params), jax.tree.leaves(plain_params), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    # ...and not the update of all 8 rows.
    _, (all_rows,) = run_steps(tiny_config(batch_size=8), [full])
    assert (
        abs(all_rows["grad_norm"] - plain_metrics["grad_norm"]) > 1e-3 * plain_metrics["grad_norm"]
    )


def test_batch_warmup_keys_are_checked():
    config = tiny_config(batch_size=8, batch_warmup_start_size=8, batch_warmup_steps=4)
    with pytest.raises(UserError, match="batch_warmup_start_size 8"):
        validate_pretraining_config(config, 1, check_files=False)
