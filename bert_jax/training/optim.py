"""Optimizers and learning-rate schedules, each named after the reference it reproduces.

Optimizers (`config.optimizer`): adamw (PyTorch/HF AdamW), adamw_bert (google-research/bert's
AdamWeightDecayOptimizer, no bias correction), lamb (NVIDIA apex FusedLAMB), stableadamw
(AdamW with per-tensor update clipping, Wortsman et al. 2023, as ModernBERT), all after
global-norm clipping with weight decay masked off biases and LayerNorm. Schedules
(`config.schedule`): bert (decay over the whole run), trainer (decay after warmup), wsd
(warmup-stable-decay).
See docs/design/optimizers.md.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import traverse_util

from bert_jax.errors import UserError

NO_DECAY_LEAVES = ("bias", "scale", "mlm_output_bias")
OPTIMIZERS = ("adamw", "adamw_bert", "lamb", "stableadamw")
SCHEDULES = ("bert", "trainer", "wsd")
WSD_DECAY_SHAPES = ("linear", "1-sqrt")


def decay_mask(params):
    """True for parameters that get weight decay (and, in LAMB with weight decay, the trust
    ratio): every kernel and embedding table; False for biases and LayerNorm (google's and
    NVIDIA's exclusions)."""
    flat = traverse_util.flatten_dict(params)
    mask = {path: path[-1] not in NO_DECAY_LEAVES for path in flat}
    return traverse_util.unflatten_dict(mask)


def bert_schedule(
    peak: float, warmup: int, total: int, power: float = 1.0, end: float = 0.0
) -> optax.Schedule:
    """google-research/bert's schedule: step/warmup * peak, then (peak - end)(1 - step/T)^p + end.

    The step is the number of updates already made (optax's count), as google's global_step:
    the first update gets lr 0. (NVIDIA's PolyWarmUpScheduler draws the same curve but counts
    from 1, with warmup a fraction of T: its update s gets this schedule's value at s + 1.)
    (T - s) / T is formed from exact integers, so the rate keeps float32 accuracy to the end.
    """
    integral = float(power).is_integer()

    def schedule(step):
        s = jnp.asarray(step).astype(jnp.float32)
        remaining = jnp.maximum(total - s, 0.0) / total
        decayed = remaining ** int(power) if integral else remaining**power
        lr = (peak - end) * decayed + end
        if warmup > 0:
            lr = jnp.where(s < warmup, peak * s / warmup, lr)
        return lr

    return schedule


def trainer_schedule(
    peak: float, warmup: int, total: int, power: float = 1.0, end: float = 0.0
) -> optax.Schedule:
    """The transformers Trainer's: linear warmup, then decay from the peak over total - warmup."""
    warmup_fn = optax.linear_schedule(0.0, peak, max(warmup, 1))
    decay_fn = optax.polynomial_schedule(peak, end, power, max(total - warmup, 1))
    return optax.join_schedules([warmup_fn, decay_fn], [warmup])


def decay_start_step(total: int, decay_fraction: float) -> int:
    """The first step of a warmup-stable-decay schedule's decay: the last `decay_fraction` of
    `total` steps decay (rounded to whole steps)."""
    return total - int(round(total * decay_fraction))


def wsd_schedule(
    peak: float, warmup: int, total: int, decay_fraction: float, shape: str, end: float = 0.0
) -> optax.Schedule:
    """Warmup-stable-decay (trapezoidal): peak * s / warmup, then the peak, then over the last
    decay_fraction of the steps from D = decay_start_step to `total` with x = (s - D) / (T - D):
    linear peak - (peak - end) x, or 1-sqrt (ModernBERT) end + (peak - end)(1 - sqrt(x))."""
    if shape not in WSD_DECAY_SHAPES:
        raise UserError(f"wsd_decay_shape {shape!r} is not one of {list(WSD_DECAY_SHAPES)}")
    start = decay_start_step(total, decay_fraction)
    length = max(total - start, 1)

    def schedule(step):
        s = jnp.asarray(step).astype(jnp.float32)
        x = jnp.clip(s - start, 0.0, length) / length
        fall = x if shape == "linear" else jnp.sqrt(x)
        lr = peak - (peak - end) * fall
        if warmup > 0:
            lr = jnp.where(s < warmup, peak * s / warmup, lr)
        return lr

    return schedule


def learning_rate_schedule(config) -> optax.Schedule:
    """The schedule `config.schedule` names, from learning_rate, warmup_steps, num_train_steps,
    decay_power and end_learning_rate_factor."""
    total = int(config.num_train_steps)
    warmup = int(config.warmup_steps)
    if warmup > total:
        raise UserError(f"warmup_steps {warmup} exceeds num_train_steps {total}")
    name = config.get("schedule", "bert")
    if name not in SCHEDULES:
        raise UserError(f"schedule {name!r} is not one of {list(SCHEDULES)}")
    peak = float(config.learning_rate)
    end = peak * float(config.get("end_learning_rate_factor", 0.0))
    power = float(config.get("decay_power", 1.0))
    if name == "wsd":
        fraction = float(config.get("wsd_decay_fraction", 0.1))
        if not 0 <= fraction <= 1:
            raise UserError(f"wsd_decay_fraction must be in [0, 1], got {fraction!r}")
        if decay_start_step(total, fraction) < warmup:
            raise UserError(
                f"wsd_decay_fraction {fraction} starts the decay at step "
                f"{decay_start_step(total, fraction)}, inside the {warmup} warmup steps: lower it"
            )
        shape = str(config.get("wsd_decay_shape", "linear"))
        return wsd_schedule(peak, warmup, max(total, 1), fraction, shape, end)
    make = bert_schedule if name == "bert" else trainer_schedule
    return make(peak, warmup, max(total, 1), power, end)


class ScaleByUncorrectedAdamState(NamedTuple):
    mu: optax.Updates
    nu: optax.Updates


def scale_by_adam_without_bias_correction(
    b1: float, b2: float, eps: float
) -> optax.GradientTransformation:
    """m / (sqrt(v) + eps) from Adam's moments, with no 1 / (1 - b^t) correction (as google's
    AdamWeightDecayOptimizer: early updates are smaller than bias-corrected Adam's)."""

    def init(params):
        zeros = lambda p: jnp.zeros_like(p)  # noqa: E731
        return ScaleByUncorrectedAdamState(
            mu=jax.tree.map(zeros, params), nu=jax.tree.map(zeros, params)
        )

    def update(updates, state, params=None):
        del params
        mu = jax.tree.map(lambda g, m: b1 * m + (1.0 - b1) * g, updates, state.mu)
        nu = jax.tree.map(lambda g, v: b2 * v + (1.0 - b2) * jnp.square(g), updates, state.nu)
        updates = jax.tree.map(lambda m, v: m / (jnp.sqrt(v) + eps), mu, nu)
        return updates, ScaleByUncorrectedAdamState(mu=mu, nu=nu)

    return optax.GradientTransformation(init, update)


class ScaleByStableAdamState(NamedTuple):
    count: jax.Array
    mu: optax.Updates
    nu: optax.Updates


def scale_by_stable_adam(
    b1: float, b2: float, eps: float, weight_decay: float = 0.0, mask=decay_mask
) -> optax.GradientTransformation:
    """StableAdamW before the learning rate (Wortsman et al. 2023, Alg. 1; optimi's StableAdamW,
    which ModernBERT trains with): per tensor, (m^ / (sqrt(v^) + eps) + weight_decay * p) /
    max(1, RMS), RMS = sqrt(mean(g^2 / max(v^, eps^2))), m^ and v^ Adam's bias-corrected
    moments. The clipping divides the tensor's learning rate, so it scales the decay as well;
    `mask(params)` says which tensors decay."""

    def init(params):
        zeros = lambda p: jnp.zeros_like(p)  # noqa: E731
        return ScaleByStableAdamState(
            count=jnp.zeros((), jnp.int32),
            mu=jax.tree.map(zeros, params),
            nu=jax.tree.map(zeros, params),
        )

    def update(updates, state, params=None):
        count = state.count + 1
        t = count.astype(jnp.float32)
        mu = jax.tree.map(lambda g, m: b1 * m + (1.0 - b1) * g, updates, state.mu)
        nu = jax.tree.map(lambda g, v: b2 * v + (1.0 - b2) * jnp.square(g), updates, state.nu)
        decays = mask(params) if weight_decay else jax.tree.map(lambda _: False, updates)

        def scaled(g, m, v, p, decays):
            m_hat, v_hat = m / (1.0 - b1**t), v / (1.0 - b2**t)
            rms = jnp.sqrt(jnp.mean(jnp.square(g) / jnp.maximum(v_hat, eps * eps)))
            u = m_hat / (jnp.sqrt(v_hat) + eps)
            if decays:
                u = u + weight_decay * p
            return u / jnp.maximum(1.0, rms)

        scaled_updates = jax.tree.map(scaled, updates, mu, nu, params, decays)
        return scaled_updates, ScaleByStableAdamState(count, mu, nu)

    return optax.GradientTransformation(init, update)


def make_optimizer(config, schedule: optax.Schedule | None = None) -> optax.GradientTransformation:
    """Clipping then `config.optimizer` (see the module docstring) at `schedule`."""
    schedule = schedule or learning_rate_schedule(config)
    name = config.optimizer
    b1, b2 = float(config.get("adam_b1", 0.9)), float(config.get("adam_b2", 0.999))
    eps = float(config.get("adam_eps", 1e-6))
    weight_decay = float(config.weight_decay)
    if name == "adamw":
        update = optax.adamw(schedule, b1, b2, eps, weight_decay=weight_decay, mask=decay_mask)
    elif name == "adamw_bert":
        update = optax.chain(
            scale_by_adam_without_bias_correction(b1, b2, eps),
            optax.add_decayed_weights(weight_decay, decay_mask),
            optax.scale_by_learning_rate(schedule),
        )
    elif name == "stableadamw":
        update = optax.chain(
            scale_by_stable_adam(b1, b2, eps, weight_decay), optax.scale_by_learning_rate(schedule)
        )
    elif name == "lamb":
        # optax.lamb gates only the weight decay with its mask. apex applies the trust ratio
        # per parameter group where `use_nvlamb or decay != 0` (multi_tensor_lamb.cu, stage 2).
        nvlamb = bool(config.get("nvlamb", False))

        def adapted(params):
            return jax.tree.map(lambda d: nvlamb or (d and weight_decay != 0), decay_mask(params))

        update = optax.chain(
            optax.scale_by_adam(b1, b2, eps),
            optax.add_decayed_weights(weight_decay, decay_mask),
            optax.masked(optax.scale_by_trust_ratio(), adapted),
            optax.scale_by_learning_rate(schedule),
        )
    else:
        raise UserError(f"optimizer {name!r} is not one of {list(OPTIMIZERS)}")
    clip = float(config.get("max_grad_norm", 1.0))
    return optax.chain(optax.clip_by_global_norm(clip), update) if clip > 0 else update
