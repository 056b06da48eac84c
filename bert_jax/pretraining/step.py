"""The sharded pretraining step: state init, masked-LM + next-sentence loss (or masked-LM only),
gradient accumulation, batch-size warmup.

`build_pretrainer(config, mesh)` returns jitted functions with explicit in/out shardings, used by
the training loop (`train_lib`) and by the ahead-of-time planner (`plan`) alike.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import optax
from flax.core import meta
from jax.sharding import Mesh, NamedSharding

from bert_jax.data.packed_examples import batch_predictions, sequences_per_row
from bert_jax.model.modeling import BertConfig, BertForPreTraining
from bert_jax.training import sharding
from bert_jax.training.gradients import accumulated_gradients, apply_gradients
from bert_jax.training.optim import learning_rate_schedule, make_optimizer

BATCH_KEYS_2D = ("input_ids", "attention_mask", "token_type_ids")
BATCH_KEYS_P = ("masked_lm_positions", "masked_lm_ids", "masked_lm_weights")
PACKING_KEYS = ("segment_ids", "position_ids", "cls_positions")  # packed rows only

# Sums and counts: exact across devices and accumulation steps; ratios are taken on the host.
SUM_METRICS = (
    "mlm_loss_sum",
    "mlm_correct",
    "mlm_weight",
    "nsp_loss_sum",
    "nsp_correct",
    "nsp_count",
    "real_tokens",
)


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # int32 scalar
    params: Any
    opt_state: Any


def model_config_from(config) -> BertConfig:
    return BertConfig.from_dict(dict(config.model))


def batch_shapes(config, global_batch: int | None = None) -> dict[str, jax.ShapeDtypeStruct]:
    """The pipeline's batch (`make_pretraining_iterator`): b rows of t = max_seq_length, p masked
    positions per row; packed (data.packing) with s = max_sequences_per_row examples per row."""
    b, t = int(global_batch or config.batch_size), int(config.data.max_seq_length)
    p, s = batch_predictions(config.data), sequences_per_row(config.data)
    shapes = {k: jax.ShapeDtypeStruct((b, t), jnp.int32) for k in BATCH_KEYS_2D}
    shapes["masked_lm_positions"] = jax.ShapeDtypeStruct((b, p), jnp.int32)
    shapes["masked_lm_ids"] = jax.ShapeDtypeStruct((b, p), jnp.int32)
    shapes["masked_lm_weights"] = jax.ShapeDtypeStruct((b, p), jnp.float32)
    if s is None:
        shapes["next_sentence_labels"] = jax.ShapeDtypeStruct((b,), jnp.int32)
        return shapes
    shapes["next_sentence_labels"] = jax.ShapeDtypeStruct((b, s), jnp.int32)
    shapes["next_sentence_weights"] = jax.ShapeDtypeStruct((b, s), jnp.float32)
    shapes["segment_ids"] = jax.ShapeDtypeStruct((b, t), jnp.int32)
    shapes["position_ids"] = jax.ShapeDtypeStruct((b, t), jnp.int32)
    shapes["cls_positions"] = jax.ShapeDtypeStruct((b, s), jnp.int32)
    return shapes


def nsp_weights(batch) -> jax.Array | None:
    """Which NSP labels are real examples: next_sentence_weights [B, S] of packed rows, None
    (every label: one example per row) otherwise."""
    return batch.get("next_sentence_weights")


def example_count(batch) -> jax.Array:
    """Examples in a batch, float32: rows, or the filled slots of packed rows."""
    weights = nsp_weights(batch)
    if weights is None:
        return jnp.asarray(batch["next_sentence_labels"].shape[0], jnp.float32)
    return jnp.sum(weights.astype(jnp.float32))


def uses_nsp(config) -> bool:
    """Whether the objective has the next-sentence term (data.next_sentence_prediction)."""
    return bool(config.data.get("next_sentence_prediction", True))


def warmup_batch_size(config, step):
    """Rows of the global batch that train at `step` (an int, or a traced int32 inside the
    step): batch-size warmup grows them from batch_warmup_start_size s to batch_size B over
    batch_warmup_steps N in k = (B - s) // s equal runs of steps, s (1 + floor(k step / N)),
    then B; batch_size without warmup. Integer arithmetic: a resumed run gets the same sizes."""
    full, start = int(config.batch_size), int(config.get("batch_warmup_start_size", 0))
    steps = int(config.get("batch_warmup_steps", 0))
    traced = isinstance(step, jax.Array)
    if not start or not steps:
        return jnp.full((), full, jnp.int32) if traced else full
    increments = (full - start) // start
    if not traced:
        return full if step >= steps else min(start * (1 + increments * step // steps), full)
    rows = jnp.minimum(start * (1 + increments * step // steps), full)
    return jnp.where(step >= steps, full, rows).astype(jnp.int32)


def with_active_rows(batch: dict, rows) -> dict:
    """The batch with only its first `rows` rows counting: their masked-LM and NSP weights are
    kept, the others' zeroed; row_weights [B] (float32) records which rows count."""
    size = batch["input_ids"].shape[0]
    row_weights = (jnp.arange(size) < rows).astype(jnp.float32)
    batch = dict(batch, row_weights=row_weights)
    batch["masked_lm_weights"] = batch["masked_lm_weights"] * row_weights[:, None]
    slots = nsp_weights(batch)
    if slots is None:  # one example per row
        batch["next_sentence_weights"] = row_weights
    else:
        batch["next_sentence_weights"] = slots * row_weights[:, None]
    return batch


def pretraining_sums(output, batch, nsp: bool = True) -> dict[str, jax.Array]:
    """Loss sums and counts for one (micro)batch; float32. Per masked token (mlm_*) and per
    example (nsp_*; with nsp False only nsp_count, the examples), packed rows or not;
    real_tokens counts the positions that are not padding; with row_weights (batch-size
    warmup) only the rows that count, and rows counts those.

    The masked-LM terms never materialise log-probabilities, an argmax or (in the backward pass)
    a scatter over [B, P, V]: each is a whole extra pass over the largest array of the step.
    A prediction counts as correct when the label's logit is the maximum.
    """
    # The padded vocabulary (sharded evenly over `tensor`); its extra columns hold the float32
    # minimum, so they add exp(-inf) = 0 to the normaliser and never reach the maximum.
    logits = output.padded_mlm_logits.astype(jnp.float32)  # [B, P, V']
    ids = batch["masked_lm_ids"]
    weights = batch["masked_lm_weights"].astype(jnp.float32)
    max_logit = jax.lax.stop_gradient(jnp.max(logits, axis=-1))  # [B, P]
    log_normalizer = max_logit + jnp.log(jnp.sum(jnp.exp(logits - max_logit[..., None]), axis=-1))
    is_label = jax.lax.broadcasted_iota(jnp.int32, logits.shape, 2) == ids[..., None]
    label_logit = jnp.sum(jnp.where(is_label, logits, 0.0), axis=-1)  # [B, P]
    token_log_prob = label_logit - log_normalizer
    mlm_correct = (label_logit >= max_logit).astype(jnp.float32) * weights
    sums = {
        "mlm_loss_sum": -jnp.sum(token_log_prob * weights),
        "mlm_correct": jnp.sum(mlm_correct),
        "mlm_weight": jnp.sum(weights),
        "nsp_count": example_count(batch),
    }
    row_weights = batch.get("row_weights")
    if "attention_mask" in batch:  # every pipeline batch; a bare loss computation may omit it
        real = (batch["attention_mask"] > 0).astype(jnp.float32)
        if row_weights is not None:
            real = real * row_weights[:, None]
        sums["real_tokens"] = jnp.sum(real)
    if row_weights is not None:
        sums["rows"] = jnp.sum(row_weights)
    if not nsp:
        return sums
    nsp_log_probs = jax.nn.log_softmax(output.nsp_logits.astype(jnp.float32))  # [B(, S), 2]
    labels = batch["next_sentence_labels"]  # [B], packed [B, S]
    nsp_nll = -jnp.take_along_axis(nsp_log_probs, labels[..., None], axis=-1)[..., 0]
    nsp_correct = (jnp.argmax(nsp_log_probs, -1) == labels).astype(jnp.float32)
    slots = nsp_weights(batch)
    if slots is not None:  # packed: empty slots count for nothing
        slots = slots.astype(jnp.float32)
        nsp_nll, nsp_correct = nsp_nll * slots, nsp_correct * slots
    sums["nsp_loss_sum"] = jnp.sum(nsp_nll)
    sums["nsp_correct"] = jnp.sum(nsp_correct)
    return sums


def pretraining_forward(model: BertForPreTraining, params, batch: dict, dropout_rng=None):
    """The model on a pretraining batch (packed rows too); dropout on when a dropout_rng is
    given."""
    packed = {k: batch[k] for k in PACKING_KEYS if k in batch}
    return model.apply(
        {"params": params},
        batch["input_ids"],
        batch["token_type_ids"],
        None if packed else batch["attention_mask"],  # segment_ids mask padding out
        batch["masked_lm_positions"],
        deterministic=dropout_rng is None,
        rngs=None if dropout_rng is None else {"dropout": dropout_rng},
        **packed,
    )


@dataclasses.dataclass
class Pretrainer:
    """Everything the loop and the planner need, built once per (config, mesh)."""

    config: Any
    model_config: BertConfig
    model: BertForPreTraining
    mesh: Mesh
    rules: tuple
    optimizer: optax.GradientTransformation
    schedule: optax.Schedule
    state_shardings: Any
    batch_shardings: dict[str, NamedSharding]
    init: Callable  # rng -> TrainState (sharded)
    train_step: Callable  # (state, batch, rng) -> (state, metrics)
    eval_step: Callable  # (params, batch) -> metrics sums
    abstract_state: Any

    def shard_batch(self, local_batch: dict) -> dict:
        return sharding.global_batch_from_local(local_batch, self.mesh)


def build_pretrainer(config, mesh: Mesh) -> Pretrainer:
    model_config = model_config_from(config)
    model = BertForPreTraining(model_config)
    rules = sharding.rules_from_config(config)
    optimizer_schedule = learning_rate_schedule(config)
    optimizer = make_optimizer(config, optimizer_schedule)
    accum = int(config.get("grad_accum_steps", 1))
    shapes = batch_shapes(config)
    nsp = uses_nsp(config)
    batch_warmup = warmup_batch_size(config, 0) != int(config.batch_size)

    def init_boxed(rng):
        dummy = {k: jnp.zeros((1, *v.shape[1:]), v.dtype) for k, v in shapes.items()}
        variables = model.init(
            rng,
            dummy["input_ids"],
            dummy["token_type_ids"],
            dummy["attention_mask"],
            dummy["masked_lm_positions"],
        )
        params = variables["params"]
        return TrainState(
            step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params)
        )

    abstract_state, state_shardings = sharding.sharded_abstract(init_boxed, mesh, rules)
    batch_shardings = {k: sharding.batch_sharding(mesh, len(v.shape)) for k, v in shapes.items()}

    def init(rng) -> TrainState:
        with nn.logical_axis_rules(rules):
            return meta.unbox(init_boxed(rng))

    def train_step(state: TrainState, batch: dict, rng: jax.Array):
        if batch_warmup:  # one compiled step: the rows past this step's size count for nothing
            batch = with_active_rows(batch, warmup_batch_size(config, state.step))
        # Normalised by the whole batch's counts, so accumulated gradients equal full-batch ones.
        mlm_total = jnp.maximum(jnp.sum(batch["masked_lm_weights"]), 1.0)
        nsp_total = jnp.maximum(example_count(batch), 1.0)

        def loss_fn(params, micro, dropout_rng):
            output = pretraining_forward(model, params, micro, dropout_rng)
            with jax.named_scope("loss"):  # planning.hlo_costs groups the step's ops by scope
                sums = pretraining_sums(output, micro, nsp)
            loss = sums["mlm_loss_sum"] / mlm_total
            if nsp:
                loss = loss + sums["nsp_loss_sum"] / nsp_total
            return loss, sums

        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
        step_rng = jax.random.fold_in(rng, state.step)
        with nn.logical_axis_rules(rules):
            sums, grads = accumulated_gradients(grad_fn, state.params, batch, step_rng, accum)
        with jax.named_scope("optimizer"):
            return apply_gradients(state, grads, sums, optimizer, optimizer_schedule)

    def eval_step(params, batch):
        with nn.logical_axis_rules(rules):
            return pretraining_sums(pretraining_forward(model, params, batch), batch, nsp)

    rep = sharding.replicated(mesh)
    jit_init = jax.jit(init, out_shardings=state_shardings)
    jit_train = jax.jit(
        train_step,
        in_shardings=(state_shardings, batch_shardings, rep),
        out_shardings=(state_shardings, rep),
        donate_argnums=(0,),
    )
    jit_eval = jax.jit(
        eval_step, in_shardings=(state_shardings.params, batch_shardings), out_shardings=rep
    )
    return Pretrainer(
        config=config,
        model_config=model_config,
        model=model,
        mesh=mesh,
        rules=rules,
        optimizer=optimizer,
        schedule=optimizer_schedule,
        state_shardings=state_shardings,
        batch_shardings=batch_shardings,
        init=jit_init,
        train_step=jit_train,
        eval_step=jit_eval,
        abstract_state=abstract_state,
    )


def metrics_from_sums(sums: dict[str, float], prefix: str = "") -> dict[str, float]:
    """Ratios from summed metrics (host side); the nsp_* ones only where the sums have them."""
    mlm_w = max(float(sums["mlm_weight"]), 1e-9)
    mlm_loss = float(sums["mlm_loss_sum"]) / mlm_w
    out = {
        "loss": mlm_loss,
        "mlm_loss": mlm_loss,
        "mlm_accuracy": float(sums["mlm_correct"]) / mlm_w,
    }
    if "nsp_loss_sum" in sums:
        nsp_n = max(float(sums["nsp_count"]), 1e-9)
        out["nsp_loss"] = float(sums["nsp_loss_sum"]) / nsp_n
        out["nsp_accuracy"] = float(sums["nsp_correct"]) / nsp_n
        out["loss"] = mlm_loss + out["nsp_loss"]
    return {prefix + k: v for k, v in out.items()}
