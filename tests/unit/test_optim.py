"""Optimizers and schedules against numpy transcriptions of the references they name.

The references are written out here from their published algorithms, in float64:
google-research/bert optimization.py (create_optimizer, AdamWeightDecayOptimizer), NVIDIA apex
FusedLAMB (use_nvlamb off and on), and the transformers Trainer's linear schedule with warmup.
"""

import importlib.util
import math
import pathlib
import re

import flax.linen as nn
import jax
import ml_collections
import numpy as np
import pytest
from flax import traverse_util

from bert_jax.errors import UserError
from bert_jax.finetuning import config as finetune_config
from bert_jax.model.modeling import BertConfig, BertForPreTraining
from bert_jax.training.optim import learning_rate_schedule, make_optimizer

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]

# google's exclude_from_weight_decay; NVIDIA's BERT puts the same parameters in its no-decay
# group (which FusedLAMB does not adapt unless use_nvlamb).
GOOGLE_EXCLUDE = ("LayerNorm", "layer_norm", "bias")


def load_config(name: str, arg: str | None = None):
    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "configs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg) if arg else module.get_config()


# -- schedules ---------------------------------------------------------------------------------


def google_lr(step: int, peak: float, warmup: int, total: int, power: float) -> float:
    """optimization.create_optimizer: polynomial_decay(global_step), replaced during warmup by
    global_step / num_warmup_steps * init_lr; global_step is 0 at the first update."""
    decayed = peak * (1.0 - min(step, total) / total) ** power
    if warmup and step < warmup:
        return peak * step / warmup
    return decayed


def trainer_lr(step: int, peak: float, warmup: int, total: int) -> float:
    """transformers.get_linear_schedule_with_warmup's lr_lambda times the peak."""
    if step < warmup:
        return peak * step / max(1, warmup)
    return peak * max(0.0, (total - step) / max(1, total - warmup))


def sample_steps(warmup: int, total: int) -> np.ndarray:
    edges = [0, 1, 2, warmup - 1, warmup, warmup + 1, total - 2, total - 1, total, total + 5]
    rng = np.random.default_rng(0)
    return np.unique(np.r_[edges, rng.integers(0, total, 300)].clip(0))


@pytest.mark.parametrize(
    "name, arg",
    [
        ("bert_base", "phase1"),
        ("bert_base", "phase2"),
        ("bert_large", "phase1"),
        ("bert_large_lamb", "phase1"),
        ("bert_large_lamb", "phase2"),
    ],
)
def test_pretraining_configs_follow_googles_schedule_at_every_step(name, arg):
    config = load_config(name, arg)
    assert config.schedule == "bert"
    peak, warmup, total = config.learning_rate, config.warmup_steps, config.num_train_steps
    steps = sample_steps(warmup, total)
    ours = np.asarray(jax.vmap(learning_rate_schedule(config))(steps))
    want = [google_lr(int(s), peak, warmup, total, config.decay_power) for s in steps]
    np.testing.assert_allclose(ours, want, rtol=1e-6, atol=1e-12)


def test_lamb_phase1_rate_just_after_warmup():
    config = load_config("bert_large_lamb", "phase1")
    schedule = learning_rate_schedule(config)
    warmup = config.warmup_steps  # int(0.2843 * 7038) = 2000
    assert warmup == 2000
    # NVIDIA: 6e-3 * (1 - 0.2843) ** 0.5 = 5.076e-3, not the peak 6e-3.
    assert float(schedule(warmup)) == pytest.approx(6e-3 * (1 - 2000 / 7038) ** 0.5, rel=1e-6)
    assert float(schedule(warmup)) == pytest.approx(5.08e-3, abs=5e-6)
    assert float(schedule(warmup - 1)) == pytest.approx(6e-3 * 1999 / 2000, rel=1e-6)
    assert float(schedule(0)) == 0.0


def test_finetuning_keeps_the_trainer_schedule():
    config = finetune_config.finetuning_config("classification")
    assert config.schedule == "trainer"
    for warmup, total in ((0, 50), (10, 100), (37, 3000)):
        values = dict(learning_rate=2e-5, warmup_steps=warmup, num_train_steps=total)
        schedule = learning_rate_schedule(
            ml_collections.ConfigDict(dict(values, schedule="trainer"))
        )
        steps = sample_steps(max(warmup, 1), total)
        want = [trainer_lr(int(s), 2e-5, warmup, total) for s in steps]
        np.testing.assert_allclose(
            np.asarray(jax.vmap(schedule)(steps)), want, rtol=1e-6, atol=1e-12
        )


def test_unknown_schedule_and_optimizer_are_user_errors():
    config = ml_collections.ConfigDict(
        dict(learning_rate=1e-3, warmup_steps=1, num_train_steps=5, schedule="cosine")
    )
    with pytest.raises(UserError, match="schedule 'cosine' is not one of"):
        learning_rate_schedule(config)
    config.schedule, config.optimizer, config.weight_decay = "bert", "sgd", 0.0
    with pytest.raises(UserError, match="optimizer 'sgd' is not one of"):
        make_optimizer(config)


# -- optimizers --------------------------------------------------------------------------------


def bert_tree_and_grads(steps: int, seed: int = 0):
    """A tiny BertForPreTraining parameter tree (biases and LayerNorm perturbed away from their
    0 / 1 init, as in a trained model) and `steps` gradient trees, flat by '/'-joined name."""
    config = BertConfig(
        vocab_size=40,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=16,
    )
    ids = np.zeros((1, 8), np.int32)
    params = nn.meta.unbox(
        BertForPreTraining(config).init(jax.random.key(seed), ids, masked_lm_positions=ids[:, :2])
    )["params"]
    rng = np.random.default_rng(seed)
    flat = {
        "/".join(k): np.asarray(v, np.float32) + rng.normal(0, 0.05, v.shape).astype(np.float32)
        for k, v in traverse_util.flatten_dict(params).items()
    }
    grads = []
    for i in range(steps):
        scale = 0.3 if i % 2 else 0.01  # global norms above and below the clip of 1
        grads.append({k: rng.normal(0, scale, v.shape).astype(np.float32) for k, v in flat.items()})
    return flat, grads


def unflatten(flat: dict) -> dict:
    return traverse_util.unflatten_dict({tuple(k.split("/")): v for k, v in flat.items()})


def flatten(tree) -> dict:
    return {"/".join(k): np.asarray(v) for k, v in traverse_util.flatten_dict(tree).items()}


def run_ours(config, params: dict, grads: list[dict], schedule) -> dict:
    optimizer = make_optimizer(config, schedule)
    tree = jax.tree.map(jax.numpy.asarray, unflatten(params))
    state = optimizer.init(tree)

    @jax.jit
    def step(tree, state, g):
        updates, state = optimizer.update(g, state, tree)
        return jax.tree.map(lambda p, u: p + u, tree, updates), state

    for g in grads:
        tree, state = step(tree, state, unflatten(g))
    return flatten(tree)


def excluded(name: str) -> bool:
    return any(re.search(pattern, name) for pattern in GOOGLE_EXCLUDE)


def clip_by_global_norm(grads: dict, max_norm: float) -> dict:
    """tf.clip_by_global_norm / apex FusedLAMB's max_grad_norm: g * max / max(norm, max)."""
    norm = math.sqrt(sum(float(np.sum(np.square(g, dtype=np.float64))) for g in grads.values()))
    return {k: g.astype(np.float64) * max_norm / max(norm, max_norm) for k, g in grads.items()}


def numpy_google_adamw(params, grads, lrs, wd, b1=0.9, b2=0.999, eps=1e-6) -> dict:
    """google-research/bert AdamWeightDecayOptimizer.apply_gradients after clip_by_global_norm."""
    p = {k: v.astype(np.float64) for k, v in params.items()}
    m = {k: np.zeros_like(v) for k, v in p.items()}
    v = {k: np.zeros_like(x) for k, x in p.items()}
    for g, lr in zip(grads, lrs, strict=True):
        g = clip_by_global_norm(g, 1.0)
        for k in p:
            m[k] = b1 * m[k] + (1.0 - b1) * g[k]
            v[k] = b2 * v[k] + (1.0 - b2) * np.square(g[k])
            update = m[k] / (np.sqrt(v[k]) + eps)
            if not excluded(k):
                update = update + wd * p[k]
            p[k] = p[k] - lr * update
    return p


def numpy_lamb(params, grads, lrs, wd, nvlamb=False, b1=0.9, b2=0.999, eps=1e-6) -> dict:
    """apex FusedLAMB.step with its defaults (adam_w_mode, bias_correction, grad_averaging,
    max_grad_norm 1) and NVIDIA's two parameter groups (weight decay `wd`, and 0 for the excluded
    names), written out from multi_tensor_lamb.cu: the gradients divided by
    max(global norm, 1) / 1 (the norm of all of them, both groups); stage 1 the bias-corrected
    Adam direction plus decay * p; stage 2 p -= lr * ratio * update with ratio ||p|| / ||update||
    where both are non-zero and `use_nvlamb or decay != 0`, else 1."""
    p = {k: v.astype(np.float64) for k, v in params.items()}
    m = {k: np.zeros_like(v) for k, v in p.items()}
    v = {k: np.zeros_like(x) for k, x in p.items()}
    for step, (g, lr) in enumerate(zip(grads, lrs, strict=True), start=1):
        g = clip_by_global_norm(g, 1.0)
        correction1, correction2 = 1.0 - b1**step, 1.0 - b2**step
        for k in p:
            decay = 0.0 if excluded(k) else wd  # the group's weight_decay
            m[k] = b1 * m[k] + (1.0 - b1) * g[k]
            v[k] = b2 * v[k] + (1.0 - b2) * np.square(g[k])
            update = (m[k] / correction1) / (np.sqrt(v[k] / correction2) + eps) + decay * p[k]
            ratio = 1.0
            if nvlamb or decay != 0:
                param_norm, update_norm = np.linalg.norm(p[k]), np.linalg.norm(update)
                if param_norm != 0 and update_norm != 0:
                    ratio = param_norm / update_norm
            p[k] = p[k] - lr * ratio * update
    return p


def optimizer_config(name: str, wd: float = 0.01) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        dict(optimizer=name, weight_decay=wd, adam_b1=0.9, adam_b2=0.999, adam_eps=1e-6)
    )


def assert_params_close(ours: dict, want: dict, params: dict):
    assert ours.keys() == want.keys()
    for k in want:
        np.testing.assert_allclose(ours[k], want[k], rtol=0, atol=1e-6, err_msg=k)
    moved = max(np.abs(want[k] - params[k]).max() for k in want)
    assert moved > 1e-3  # the updates are large enough for the comparison to mean something


@pytest.mark.parametrize("steps", [1, 4])
@pytest.mark.parametrize("wd, nvlamb", [(0.01, False), (0.0, False), (0.01, True), (0.0, True)])
def test_lamb_matches_apex(steps, wd, nvlamb):
    """Without weight decay apex's default LAMB is Adam (no trust ratio anywhere); nvlamb puts
    the trust ratio on biases and LayerNorm too, with or without weight decay."""
    params, grads = bert_tree_and_grads(steps)
    lr = 1e-2
    config = optimizer_config("lamb", wd)
    config.nvlamb = nvlamb
    ours = run_ours(config, params, grads, lambda _: lr)
    assert_params_close(ours, numpy_lamb(params, grads, [lr] * steps, wd, nvlamb), params)
    # The exclusions really are exercised: biases, LayerNorm and the MLM output bias.
    assert any(excluded(k) and k.endswith("bias") for k in params)
    assert any("LayerNorm" in k for k in params) and "mlm_output_bias" in params
    # ... and the two rules for the trust ratio differ here.
    other = numpy_lamb(params, grads, [lr] * steps, wd, not nvlamb)
    assert max(np.abs(other[k] - ours[k]).max() for k in ours) > 1e-3


def test_adamw_bert_matches_googles_optimizer_with_its_schedule():
    steps, warmup = 5, 2
    params, grads = bert_tree_and_grads(steps, seed=1)
    config = optimizer_config("adamw_bert")
    config.update(
        dict(learning_rate=1e-2, warmup_steps=warmup, num_train_steps=steps, schedule="bert")
    )
    schedule = learning_rate_schedule(config)
    lrs = [google_lr(s, 1e-2, warmup, steps, 1.0) for s in range(steps)]
    assert lrs[0] == 0.0  # google's first update has global_step 0
    ours = run_ours(config, params, grads, schedule)
    assert_params_close(ours, numpy_google_adamw(params, grads, lrs, 0.01), params)


def test_adamw_is_the_bias_corrected_form():
    """'adamw' stays PyTorch's / transformers' AdamW: its first update is lr * m_hat / sqrt(v_hat)
    = lr * g / (|g| + eps), where google's uncorrected one is (1 - b1) / sqrt(1 - b2) = 3.16
    times larger (google's schedule gives that first update lr 0)."""
    params, grads = bert_tree_and_grads(1, seed=2)
    lr = 1e-3
    ours = run_ours(optimizer_config("adamw", wd=0.0), params, grads, lambda _: lr)
    g = clip_by_global_norm(grads[0], 1.0)
    for k in params:
        want = params[k] - lr * g[k] / (np.abs(g[k]) + 1e-6)
        np.testing.assert_allclose(ours[k], want, rtol=0, atol=1e-6, err_msg=k)
