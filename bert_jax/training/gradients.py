"""What the pretraining and fine-tuning steps share: gradients accumulated over microbatches, and
the optimizer update with its metrics.

A step's loss function is written for one (micro)batch and returns (loss, sums), where sums are
float32 scalars (loss sums and counts). It must normalise its loss by counts of the *whole*
batch, so that the accumulated gradient equals the full-batch gradient.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

# (params, microbatch, rng) -> ((loss, sums), grads), e.g. jax.value_and_grad(..., has_aux=True)
GradFn = Callable[[Any, dict, jax.Array], tuple[tuple[jax.Array, dict], Any]]


def split_microbatches(batch: dict, accum: int) -> dict:
    """[B, ...] -> [accum, B // accum, ...]; microbatch k takes rows k, k+accum, ... so every
    device keeps its own rows (the batch dimension stays sharded)."""

    def split(x):
        x = x.reshape(x.shape[0] // accum, accum, *x.shape[1:])
        return jnp.swapaxes(x, 0, 1)

    return jax.tree.map(split, batch)


def accumulated_gradients(
    grad_fn: GradFn, params, batch: dict, rng: jax.Array, accum: int
) -> tuple[dict, Any]:
    """(sums, grads) of the whole batch, in `accum` sequential microbatches (lax.scan).

    accum 1 is one call of grad_fn with `rng`; otherwise microbatch k gets fold_in(rng, k) and the
    sums and gradients are added up, so peak activation memory is that of one microbatch.
    """
    if accum == 1:
        (_, sums), grads = grad_fn(params, batch, rng)
        return sums, grads
    micro = split_microbatches(batch, accum)
    first = jax.tree.map(lambda x: x[0], micro)
    (_, sums_shape), _ = jax.eval_shape(grad_fn, params, first, rng)
    zero_sums = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), sums_shape)
    zero_grads = jax.tree.map(jnp.zeros_like, params)

    def accumulate(carry, inputs):
        grads_acc, sums_acc = carry
        index, microbatch = inputs
        (_, sums), grads = grad_fn(params, microbatch, jax.random.fold_in(rng, index))
        grads_acc = jax.tree.map(jnp.add, grads_acc, grads)
        return (grads_acc, jax.tree.map(jnp.add, sums_acc, sums)), None

    (grads, sums), _ = jax.lax.scan(accumulate, (zero_grads, zero_sums), (jnp.arange(accum), micro))
    return sums, grads


def apply_gradients(
    state, grads, sums: dict, optimizer: optax.GradientTransformation, schedule: optax.Schedule
):
    """One optimizer update of `state` (a flax struct with step, params, opt_state).

    Returns (new state, metrics): the sums plus grad_norm and the step's learning_rate.
    """
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = dict(sums)
    metrics["grad_norm"] = optax.tree.norm(grads)
    metrics["learning_rate"] = schedule(state.step)
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics


def with_adversarial_embeddings(grad_fn: GradFn, epsilon: float, is_embedding) -> GradFn:
    """FGM (Miyato et al., 2017): each (micro)batch also trains on inputs moved against the model.

    After the clean gradient g, the embedding table E (the leaves where is_embedding(path)) is
    moved to E + epsilon * g_E / ||g_E|| (the direction that raises the loss most, for a step
    of L2 length epsilon over the whole table: only the rows of the batch's tokens move), the
    loss is differentiated again there (a fresh dropout mask), and the two gradients are added.
    The sums (metrics) are the clean pass's. epsilon 0 returns grad_fn itself.
    """
    if epsilon <= 0:
        return grad_fn

    def moved(params, grads):
        def move(path, p, g):
            if not is_embedding(tuple(k.key for k in path)):
                return p
            norm = jnp.sqrt(jnp.sum(jnp.square(g.astype(jnp.float32))))
            return p + (epsilon * g / jnp.maximum(norm, 1e-12)).astype(p.dtype)

        return jax.tree_util.tree_map_with_path(move, params, grads)

    def adversarial_grad_fn(params, batch, rng):
        (loss, sums), grads = grad_fn(params, batch, rng)
        _, adversarial = grad_fn(moved(params, grads), batch, jax.random.fold_in(rng, 1 << 30))
        return (loss, sums), jax.tree.map(jnp.add, grads, adversarial)

    return adversarial_grad_fn
