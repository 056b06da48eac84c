"""The trainers benchmarked side by side, each served from its own process.

  bert_jax  `bert_jax.pretraining.step.build_pretrainer`: sparse MLM head, jitted, donated state.
  hf_flax   transformers' FlaxBertForPreTraining in a jitted optax step (dense MLM logits).
  hf_torch  transformers' BertForPreTraining (PyTorch, eager) with torch.optim.AdamW.

All three get the same architecture, the same synthetic batches (seeded; B rows of T tokens with
P masked positions), dropout on, AdamW with the same hyperparameters, global-norm clipping and
weight decay off biases and LayerNorm, and float32 unless the spec says otherwise.

`python -m benchmarks.peers '<spec json>'` serves one trainer (what `benchmarks.run_all` starts):
it builds the trainer, runs the first (compiling) step and the warm-up steps, then answers JSON
lines on stdin -- {"cmd": "run", "steps": N} and {"cmd": "finish"} -- on its original stdout;
everything the libraries print goes to stderr. One process per trainer keeps peak RSS apart.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from typing import Any

import numpy as np

FRAMEWORKS = ("bert_jax", "hf_flax", "hf_torch")

# AdamW as bert_jax.pretraining.config.pretraining_config sets it, for every trainer.
DEFAULT_OPTIMIZER = dict(
    schedule="trainer",  # the schedule HFTorchTrainer's LambdaLR computes
    learning_rate=1e-4,
    warmup_steps=10,
    num_train_steps=10_000,
    weight_decay=0.01,
    adam_b1=0.9,
    adam_b2=0.999,
    adam_eps=1e-6,
    max_grad_norm=1.0,
)


def synthetic_batches(
    batch_size: int, seq_len: int, num_predictions: int, vocab_size: int, seed: int, count: int = 4
) -> list[dict[str, np.ndarray]]:
    """`count` pretraining batches in bert_jax's layout: [B, T] input_ids, attention_mask and
    token_type_ids (two segments), [B, P] masked_lm_positions/ids/weights, [B] next_sentence_labels.
    """
    rng = np.random.default_rng(seed)
    b, t, p = batch_size, seq_len, num_predictions
    batches = []
    for _ in range(count):
        positions = np.sort(rng.permuted(np.tile(np.arange(1, t), (b, 1)), axis=1)[:, :p], axis=1)
        token_types = np.zeros((b, t), np.int32)
        token_types[:, t // 2 :] = 1
        batches.append(
            dict(
                input_ids=rng.integers(0, vocab_size, (b, t), dtype=np.int32),
                attention_mask=np.ones((b, t), np.int32),
                token_type_ids=token_types,
                masked_lm_positions=positions.astype(np.int32),
                masked_lm_ids=rng.integers(0, vocab_size, (b, p), dtype=np.int32),
                masked_lm_weights=np.ones((b, p), np.float32),
                next_sentence_labels=rng.integers(0, 2, (b,), dtype=np.int32),
            )
        )
    return batches


def dense_mlm_labels(batch: dict[str, np.ndarray]) -> np.ndarray:
    """[B, T] labels as Hugging Face's heads take them: the masked token id, -100 elsewhere."""
    labels = np.full(batch["input_ids"].shape, -100, np.int64)
    rows = np.arange(labels.shape[0])[:, None]
    ids = np.where(batch["masked_lm_weights"] > 0, batch["masked_lm_ids"], -100)
    labels[rows, batch["masked_lm_positions"]] = ids
    return labels


def _hf_config_kwargs(model: dict[str, Any]) -> dict[str, Any]:
    keys = (
        "vocab_size",
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "intermediate_size",
        "hidden_act",
        "hidden_dropout_prob",
        "attention_probs_dropout_prob",
        "max_position_embeddings",
        "type_vocab_size",
        "initializer_range",
        "layer_norm_eps",
    )
    return {k: model[k] for k in keys}


def _optimizer_config(spec: dict[str, Any]):
    import ml_collections

    return ml_collections.ConfigDict(dict(optimizer="adamw", **spec["optimizer"]))


class BertJaxTrainer:
    """bert_jax's own pretraining step, as `bert_jax.pretraining.train` runs it."""

    def __init__(self, spec: dict[str, Any]):
        import jax

        from bert_jax.pretraining.config import pretraining_config
        from bert_jax.pretraining.step import build_pretrainer
        from bert_jax.training import sharding

        config = pretraining_config(spec["preset"], **spec["model_overrides"])
        config.update(spec["optimizer"])
        config.batch_size = spec["batch_size"]
        config.data.max_seq_length = spec["seq_len"]
        config.data.max_predictions_per_seq = spec["num_predictions"]
        config.seed = spec["seed"]
        self._jax = jax
        self.mesh = sharding.make_mesh(config.mesh)
        with jax.set_mesh(self.mesh):
            self.pretrainer = build_pretrainer(config, self.mesh)
            self.state = self.pretrainer.init(jax.random.key(config.seed))
        self.rng = jax.random.key(config.seed + 1)
        self.metrics = None

    def step(self, batch: dict[str, np.ndarray]) -> None:
        with self._jax.set_mesh(self.mesh):
            device_batch = self.pretrainer.shard_batch(batch)
            self.state, self.metrics = self.pretrainer.train_step(
                self.state, device_batch, self.rng
            )

    def sync(self) -> float:
        m = self._jax.device_get(self.metrics)
        return float(
            m["mlm_loss_sum"] / max(m["mlm_weight"], 1.0) + m["nsp_loss_sum"] / m["nsp_count"]
        )


class HFFlaxTrainer:
    """FlaxBertForPreTraining with a jitted, donated optax step; the loss as in HF's Flax examples
    (dense [B, T, V] logits, cross-entropy at the labelled positions)."""

    def __init__(self, spec: dict[str, Any]):
        import jax
        import jax.numpy as jnp
        import optax
        import transformers

        from bert_jax.training.optim import make_optimizer

        hf_config = transformers.BertConfig(**_hf_config_kwargs(spec["model"]))
        dtype = jnp.dtype(spec["model"]["dtype"])
        model = transformers.FlaxBertForPreTraining(hf_config, seed=spec["seed"], dtype=dtype)
        optimizer = make_optimizer(_optimizer_config(spec))
        self._jax = jax
        self.params = model.params
        self.opt_state = optimizer.init(self.params)
        self.step_index = 0
        self.rng = jax.random.PRNGKey(spec["seed"] + 1)
        self.loss = None

        def train_step(params, opt_state, batch, rng, step):
            rng = jax.random.fold_in(rng, step)

            def loss_fn(p):
                out = model(
                    batch["input_ids"],
                    batch["attention_mask"],
                    batch["token_type_ids"],
                    params=p,
                    dropout_rng=rng,
                    train=True,
                )
                labels = batch["labels"]
                weights = (labels >= 0).astype(jnp.float32)
                log_probs = jax.nn.log_softmax(out.prediction_logits.astype(jnp.float32))
                nll = -jnp.take_along_axis(log_probs, jnp.maximum(labels, 0)[..., None], -1)[..., 0]
                mlm = jnp.sum(nll * weights) / jnp.maximum(jnp.sum(weights), 1.0)
                nsp_log_probs = jax.nn.log_softmax(out.seq_relationship_logits.astype(jnp.float32))
                nsp_labels = batch["next_sentence_labels"][:, None]
                nsp = -jnp.mean(jnp.take_along_axis(nsp_log_probs, nsp_labels, -1))
                return mlm + nsp

            loss, grads = jax.value_and_grad(loss_fn)(params)
            updates, opt_state = optimizer.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state, loss

        self._train_step = jax.jit(train_step, donate_argnums=(0, 1))

    def step(self, batch: dict[str, np.ndarray]) -> None:
        hf_batch = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
        hf_batch["labels"] = dense_mlm_labels(batch).astype(np.int32)
        hf_batch["next_sentence_labels"] = batch["next_sentence_labels"]
        self.params, self.opt_state, self.loss = self._train_step(
            self.params, self.opt_state, hf_batch, self.rng, np.int32(self.step_index)
        )
        self.step_index += 1

    def sync(self) -> float:
        return float(self._jax.device_get(self.loss))


class HFTorchTrainer:
    """BertForPreTraining in eager PyTorch (its default attention), torch.optim.AdamW."""

    def __init__(self, spec: dict[str, Any]):
        import torch
        import transformers

        torch.manual_seed(spec["seed"])
        self._torch = torch
        hf_config = transformers.BertConfig(**_hf_config_kwargs(spec["model"]))
        self.model = transformers.BertForPreTraining(hf_config).train()
        opt = spec["optimizer"]
        no_decay = ("bias", "LayerNorm.weight")
        named = list(self.model.named_parameters())
        groups = [
            {
                "params": [p for n, p in named if not n.endswith(no_decay)],
                "weight_decay": opt["weight_decay"],
            },
            {"params": [p for n, p in named if n.endswith(no_decay)], "weight_decay": 0.0},
        ]
        self.optimizer = torch.optim.AdamW(
            groups,
            lr=opt["learning_rate"],
            betas=(opt["adam_b1"], opt["adam_b2"]),
            eps=opt["adam_eps"],
        )
        warmup, total = opt["warmup_steps"], opt["num_train_steps"]
        self.schedule = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            lambda s: (
                s / max(warmup, 1) if s < warmup else max(0.0, (total - s) / max(total - warmup, 1))
            ),
        )
        self.max_grad_norm = opt["max_grad_norm"]
        self.loss = None

    def step(self, batch: dict[str, np.ndarray]) -> None:
        torch = self._torch
        out = self.model(
            input_ids=torch.from_numpy(batch["input_ids"]).long(),
            attention_mask=torch.from_numpy(batch["attention_mask"]).long(),
            token_type_ids=torch.from_numpy(batch["token_type_ids"]).long(),
            labels=torch.from_numpy(dense_mlm_labels(batch)),
            next_sentence_label=torch.from_numpy(batch["next_sentence_labels"]).long(),
        )
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.max_grad_norm)
        self.optimizer.step()
        self.schedule.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.loss = out.loss.detach()

    def sync(self) -> float:
        return float(self.loss)


TRAINERS = {"bert_jax": BertJaxTrainer, "hf_flax": HFFlaxTrainer, "hf_torch": HFTorchTrainer}


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB


def _cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


def _timed_steps(trainer, batches: list[dict], start: int, steps: int) -> dict[str, float]:
    """Runs `steps` steps with one synchronisation at the end (none inside the loop)."""
    wall0, cpu0 = time.perf_counter(), _cpu_seconds()
    for i in range(steps):
        trainer.step(batches[(start + i) % len(batches)])
    loss = trainer.sync()
    return dict(wall_s=time.perf_counter() - wall0, cpu_s=_cpu_seconds() - cpu0, loss=loss)


def serve(spec: dict[str, Any], commands=sys.stdin) -> None:
    """Builds one trainer and answers the parent's commands (module docstring)."""
    reply = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # library chatter must not corrupt replies

    def send(message: dict) -> None:
        reply.write(json.dumps(message) + "\n")

    t0 = time.perf_counter()
    trainer = TRAINERS[spec["framework"]](spec)
    setup_s = time.perf_counter() - t0
    batches = synthetic_batches(
        spec["batch_size"],
        spec["seq_len"],
        spec["num_predictions"],
        spec["model"]["vocab_size"],
        spec["seed"],
    )
    first = _timed_steps(trainer, batches, 0, 1)
    warmup = (
        _timed_steps(trainer, batches, 1, spec["warmup_steps"]) if spec["warmup_steps"] else None
    )
    done = 1 + spec["warmup_steps"]
    send(
        dict(
            ready=True,
            setup_s=setup_s,
            first_step_s=first["wall_s"],
            warmup_step_s=warmup["wall_s"] / spec["warmup_steps"] if warmup else None,
            loss=first["loss"],
        )
    )
    for line in commands:
        command = json.loads(line)
        if command["cmd"] == "run":
            result = _timed_steps(trainer, batches, done, command["steps"])
            done += command["steps"]
            send(dict(result, steps=command["steps"]))
        elif command["cmd"] == "finish":
            send(dict(peak_rss_mib=_peak_rss_mib(), steps_done=done))
            return
        else:
            send(dict(error=f"unknown command {command['cmd']!r}"))


if __name__ == "__main__":
    serve(json.loads(sys.argv[1]))
