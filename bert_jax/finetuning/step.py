"""The sharded fine-tuning step: the task's model and losses jitted, trainable / frozen split.

Parameters are {'bert': encoder, HEAD: head}. By default both train. With freeze_encoder the
train state holds only the head (a linear probe: the optimizer never sees the encoder, so it has
no state for it); the encoder is a separate argument of every step that is never donated,
differentiated or updated, so it stays bit-identical.

Batches are those of `bert_jax.finetuning.batches`: one feature per row (input_ids,
token_type_ids, attention_mask [B, L], targets per row, `weights` float32 [B]: 1 for a real
feature, 0 for the rows that pad the last batch of an epoch or of an evaluation), or packed rows
(segment_ids, position_ids [B, L], cls_positions [B, S]; targets and `weights` per sequence
[B, S], token targets [B, L]). Losses and metrics are sums over sequences (tokens for tagging),
so both layouts mean the same.
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
from flax import traverse_util
from flax.core import meta
from jax.sharding import Mesh, NamedSharding

from bert_jax.finetuning import tasks
from bert_jax.finetuning.batches import PACKING_KEYS
from bert_jax.finetuning.tasks.base import Task
from bert_jax.model.modeling import BertConfig, is_vocab_param
from bert_jax.training import sharding
from bert_jax.training.gradients import (
    accumulated_gradients,
    apply_gradients,
    with_adversarial_embeddings,
)
from bert_jax.training.optim import make_optimizer

ENCODER = "bert"
SUM_METRICS = ("loss_sum", "count", "correct")


@flax.struct.dataclass
class FinetuneState:
    step: jax.Array  # int32 scalar
    params: Any  # the trainable tree: everything, or only the head when the encoder is frozen
    opt_state: Any


def _is_word_embedding(path: tuple[str, ...]) -> bool:
    return is_vocab_param(path) and path[-1] == "embedding"


def _subtrees(tree: dict, names: tuple[str, ...]) -> dict:
    return {name: tree[name] for name in names}


def layerwise_lr_multipliers(params, num_layers: int, decay: float):
    """Per-parameter learning-rate factors, BEiT's layer-wise decay: head and pooler 1, layer i
    (0-based) decay^(L - i), embeddings decay^(L + 1); a tree like params. (ELECTRA's exponents
    are one larger: its head sits at depth L + 2.)"""

    def depth(path: tuple[str, ...]) -> int:
        if path[0] != ENCODER or path[1] == "pooler":
            return num_layers + 1
        if path[1] == "embeddings":
            return 0
        if path[2].startswith("layer_"):
            return int(path[2].removeprefix("layer_")) + 1
        return num_layers  # the pre-LN final norm sits right after the last layer

    flat = traverse_util.flatten_dict(params)
    factors = {path: float(decay) ** (num_layers + 1 - depth(path)) for path in flat}
    return traverse_util.unflatten_dict(factors)


def scale_updates(multipliers) -> optax.GradientTransformation:
    """Multiplies each update by a fixed per-parameter factor: with AdamW last in the chain this
    is a per-parameter learning rate (decoupled weight decay included)."""

    def init_fn(params):
        del params
        return optax.EmptyState()

    def update_fn(updates, state, params=None):
        del params
        return jax.tree.map(lambda u, m: u * m, updates, multipliers), state

    return optax.GradientTransformation(init_fn, update_fn)


@dataclasses.dataclass
class Finetuner:
    """Jitted functions and shardings for one (task, model, mesh); see build_finetuner."""

    task: Task  # the kind's module (bert_jax.finetuning.tasks)
    model: nn.Module
    model_config: BertConfig
    mesh: Mesh
    rules: tuple
    freeze_encoder: bool
    head_name: str  # the classifier (task_info's "head")
    head_names: tuple[str, ...]  # every subtree besides the encoder: the classifier, "crf"
    schedule: optax.Schedule
    optimizer: optax.GradientTransformation
    param_shardings: Any  # the whole task tree
    state_shardings: Any
    frozen_shardings: Any  # the encoder's when frozen, else {}
    abstract_params: Any  # ShapeDtypeStructs with shardings, the whole task tree
    abstract_state: Any
    batch_sharding: NamedSharding  # every batch array: rows over the data-parallel axes
    init_params: Callable  # rng -> every parameter fresh (the random-init baseline)
    init_head: Callable  # rng -> {each of head_names: ...}, what a pretrained model lacks
    start: Callable  # (encoder, head) -> state; the encoder stays valid and unchanged
    train_step: Callable  # (state, frozen, batch, rng) -> (state, metrics)
    eval_step: Callable  # (trainable, frozen, batch) -> (predictions, sums)
    constrained: bool = False  # tags decoded under their BIO / IOBES rules (eval.tag_decoding)
    crf: bool = False  # ... and a CRF's learned scores (the 'crf' subtree)

    @property
    def kind(self) -> str:
        return self.task.kind

    @property
    def token_scores(self) -> bool:
        """eval_step returns tag log-probabilities (for the host's Viterbi), not ids."""
        return self.constrained or self.crf

    def head(self, params: dict) -> dict:
        """The head subtrees of a whole task tree (or of the trainable part)."""
        return _subtrees(params, self.head_names)

    def decoding(self, trainable: dict) -> dict:
        """How the host decodes eval_step's tag scores: tasks.decode_predictions' keywords."""
        crf = jax.device_get(trainable["crf"]) if self.crf else None
        return {"constrained": self.constrained, "crf": crf}

    def shard_batch(self, local_batch: dict) -> dict:
        return sharding.global_batch_from_local(local_batch, self.mesh)

    def full_params(self, state: FinetuneState, frozen) -> dict:
        """The whole task tree {'bert', head}; shares buffers with state and frozen."""
        return {**state.params, ENCODER: frozen} if self.freeze_encoder else state.params

    def split_params(self, params: dict) -> tuple[dict, dict]:
        """Whole task tree -> (trainable, frozen), the inverse of full_params."""
        if self.freeze_encoder:
            return self.head(params), params[ENCODER]
        return params, {}


def build_finetuner(
    config,
    kind: str,
    model_config: BertConfig,
    num_labels: int,
    mesh: Mesh,
    schedule: optax.Schedule,
    constrained: bool = False,
    crf: bool = False,
) -> Finetuner:
    """config: the fine-tuning config (optimizer keys, freeze_encoder, layerwise_lr_decay);
    constrained: tags are decoded under their BIO / IOBES rules, crf: a token classifier with
    learned tag transitions (bert_jax.model.crf); either way evaluation returns tag
    log-probabilities (host_predictions) for the host's Viterbi."""
    token_scores = constrained or crf  # as Finetuner.token_scores
    window = int(config.get("head_window", 0))
    task = tasks.get(kind)
    model = task.model(model_config, num_labels, crf, window)
    head_name, heads = task.head_name, task.head_names(crf)
    rules = sharding.rules_from_config(config)
    freeze = bool(config.freeze_encoder)
    seq_len = int(config.max_seq_length)
    accum = int(config.get("grad_accum_steps", 1))
    adversarial_epsilon = float(config.get("adversarial_epsilon", 0.0))

    def init_boxed(rng):
        ids = jnp.zeros((1, seq_len), jnp.int32)
        return model.init(rng, ids, ids, ids)["params"]

    def trainable_part(params):
        return _subtrees(params, heads) if freeze else params

    abstract_params, param_shardings = sharding.sharded_abstract(init_boxed, mesh, rules)
    trainable_shardings = trainable_part(param_shardings)
    frozen_shardings = param_shardings[ENCODER] if freeze else {}

    optimizer = make_optimizer(config, schedule)
    if float(config.layerwise_lr_decay) < 1.0:
        multipliers = layerwise_lr_multipliers(
            trainable_part(abstract_params),
            model_config.num_hidden_layers,
            config.layerwise_lr_decay,
        )
        optimizer = optax.chain(optimizer, scale_updates(multipliers))

    def state_boxed(rng):
        trainable = trainable_part(init_boxed(rng))
        return FinetuneState(
            step=jnp.zeros((), jnp.int32), params=trainable, opt_state=optimizer.init(trainable)
        )

    # Boxed parameters carry their logical axes into the optimizer moments.
    abstract_state, state_shardings = sharding.sharded_abstract(state_boxed, mesh, rules)
    batch_shardings = sharding.batch_sharding(mesh, 1)  # a prefix: the leading (row) axis
    rep = sharding.replicated(mesh)

    def init_params(rng):
        with nn.logical_axis_rules(rules):
            return meta.unbox(init_boxed(rng))

    def init_head(rng):
        # Only the head is returned, so XLA drops the encoder's initialisation.
        return _subtrees(init_params(rng), heads)

    def start(encoder, head):
        trainable = trainable_part({ENCODER: encoder, **head})
        # Fresh output buffers: donating the state later never touches the encoder passed in.
        return FinetuneState(
            step=jnp.zeros((), jnp.int32),
            params=jax.tree.map(jnp.copy, trainable),
            opt_state=optimizer.init(trainable),
        )

    def apply(params, batch, deterministic, rng=None):
        with nn.logical_axis_rules(rules):
            return model.apply(
                {"params": params},
                batch["input_ids"],
                batch["token_type_ids"],
                batch.get("attention_mask"),
                deterministic=deterministic,
                rngs=None if rng is None else {"dropout": rng},
                **{k: batch[k] for k in PACKING_KEYS if k in batch},
            )

    def train_step(state: FinetuneState, frozen, batch: dict, rng: jax.Array):
        # The whole batch's count: accumulated gradients equal the full-batch gradient.
        total = jnp.maximum(jnp.sum(task.target_weights(batch)), 1.0)

        def loss_fn(trainable, micro, dropout_rng):
            params = {**trainable, ENCODER: frozen} if freeze else trainable
            sums = task.loss_sums(apply(params, micro, False, dropout_rng), micro)
            return sums["loss_sum"] / total, sums

        grad_fn = with_adversarial_embeddings(
            jax.value_and_grad(loss_fn, has_aux=True), adversarial_epsilon, _is_word_embedding
        )
        step_rng = jax.random.fold_in(rng, state.step)
        sums, grads = accumulated_gradients(grad_fn, state.params, batch, step_rng, accum)
        return apply_gradients(state, grads, sums, optimizer, schedule)

    def eval_step(trainable, frozen, batch: dict):
        params = {**trainable, ENCODER: frozen} if freeze else trainable
        outputs = apply(params, batch, True)
        return task.host_predictions(outputs, token_scores), task.loss_sums(outputs, batch)

    head_shardings = _subtrees(param_shardings, heads)
    return Finetuner(
        task=task,
        model=model,
        model_config=model_config,
        mesh=mesh,
        rules=rules,
        freeze_encoder=freeze,
        head_name=head_name,
        head_names=heads,
        schedule=schedule,
        optimizer=optimizer,
        param_shardings=param_shardings,
        state_shardings=state_shardings,
        frozen_shardings=frozen_shardings,
        abstract_params=abstract_params,
        abstract_state=abstract_state,
        batch_sharding=batch_shardings,
        init_params=jax.jit(init_params, out_shardings=param_shardings),
        init_head=jax.jit(init_head, out_shardings=head_shardings),
        start=jax.jit(
            start,
            in_shardings=(param_shardings[ENCODER], head_shardings),
            out_shardings=state_shardings,
        ),
        train_step=jax.jit(
            train_step,
            in_shardings=(state_shardings, frozen_shardings, batch_shardings, rep),
            out_shardings=(state_shardings, rep),
            donate_argnums=(0,),
        ),
        eval_step=jax.jit(
            eval_step,
            in_shardings=(trainable_shardings, frozen_shardings, batch_shardings),
            out_shardings=rep,
        ),
        constrained=constrained,
        crf=crf,
    )
