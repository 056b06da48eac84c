"""Optimizers and schedules: AdamW or LAMB, weight decay masked off LayerNorm and biases,
global-norm clipping, linear warmup then linear or polynomial decay."""

from __future__ import annotations

import optax
from flax import traverse_util

from bert_jax.errors import UserError

NO_DECAY_LEAVES = ("bias", "scale", "mlm_output_bias")


def decay_mask(params):
    """True for parameters that get weight decay: every kernel and embedding table."""
    flat = traverse_util.flatten_dict(params)
    mask = {path: path[-1] not in NO_DECAY_LEAVES for path in flat}
    return traverse_util.unflatten_dict(mask)


def learning_rate_schedule(config) -> optax.Schedule:
    """Linear warmup to learning_rate, then polynomial decay (power 1 = linear) to end value."""
    total = int(config.num_train_steps)
    warmup = int(config.warmup_steps)
    if warmup > total:
        raise UserError(f"warmup_steps {warmup} exceeds num_train_steps {total}")
    peak = float(config.learning_rate)
    end = peak * float(config.get("end_learning_rate_factor", 0.0))
    power = float(config.get("decay_power", 1.0))
    warmup_fn = optax.linear_schedule(0.0, peak, max(warmup, 1))
    decay_fn = optax.polynomial_schedule(peak, end, power, max(total - warmup, 1))
    return optax.join_schedules([warmup_fn, decay_fn], [warmup])


def make_optimizer(config, schedule: optax.Schedule | None = None) -> optax.GradientTransformation:
    schedule = schedule or learning_rate_schedule(config)
    name = config.optimizer
    b1, b2 = float(config.get("adam_b1", 0.9)), float(config.get("adam_b2", 0.999))
    eps = float(config.get("adam_eps", 1e-6))
    if name == "adamw":
        update = optax.adamw(
            schedule, b1, b2, eps, weight_decay=config.weight_decay, mask=decay_mask
        )
    elif name == "lamb":
        update = optax.lamb(
            schedule, b1, b2, eps, weight_decay=config.weight_decay, mask=decay_mask
        )
    else:
        raise UserError(f"optimizer {name!r} is not 'adamw' or 'lamb'")
    clip = float(config.get("max_grad_norm", 1.0))
    return optax.chain(optax.clip_by_global_norm(clip), update) if clip > 0 else update
