"""How far the previous optimizer, schedule, dropout and precision code was from the references
(google-research/bert and LAMB), and how far the current code is: one table (numbers, not speed).

  python -m benchmarks.studies.recipe_fidelity

The references are the numpy transcriptions in tests/unit/test_optim.py (google-research/bert
optimization.py, apex FusedLAMB / TF-Addons LAMB). "previous" re-creates the replaced code in a
few lines: optax.lamb with the decay mask, optax.adamw, the Trainer-style schedule for
pretraining, a dropout counter over the whole array, bfloat16-rounded logits and dropout scale.
"""

from __future__ import annotations

import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax

from bert_jax.model.modeling import BertConfig, BertEmbeddings
from bert_jax.model.ops import _mix32, dropout_keep_mask
from bert_jax.training.optim import (
    decay_mask,
    learning_rate_schedule,
    make_optimizer,
    trainer_schedule,
)

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "tests"))
from test_optim import (  # noqa: E402
    bert_tree_and_grads,
    excluded,
    google_lr,
    load_config,
    numpy_google_adamw,
    numpy_lamb,
    optimizer_config,
    unflatten,
)


def _flat(tree_result) -> dict:
    return {"/".join(p.key for p in path): np.asarray(v) for path, v in tree_result}


def _max_diff(ours: dict, want: dict, select) -> float:
    return max(float(np.abs(ours[k] - want[k]).max()) for k in want if select(k))


def _apply(optimizer, params, grads) -> dict:
    tree = unflatten({k: jnp.asarray(v) for k, v in params.items()})
    state = optimizer.init(tree)
    for g in grads:
        updates, state = optimizer.update(unflatten(g), state, tree)
        tree = optax.apply_updates(tree, updates)
    return _flat(jax.tree_util.tree_flatten_with_path(tree)[0])


def lamb_rows(rows: list):
    params, grads = bert_tree_and_grads(1)
    lr = 1e-2
    want = numpy_lamb(params, grads, [lr], 0.01)
    previous = optax.chain(
        optax.clip_by_global_norm(1.0),
        optax.lamb(lr, 0.9, 0.999, 1e-6, weight_decay=0.01, mask=decay_mask),
    )
    now = make_optimizer(optimizer_config("lamb"), lambda _: lr)
    old, new = _apply(previous, params, grads), _apply(now, params, grads)
    for label, select in (
        ("biases + LayerNorm", excluded),
        ("kernels + tables", lambda k: not excluded(k)),
    ):
        rows.append(
            (
                f"LAMB, 1 update (lr 1e-2), max |param - apex| on {label}",
                _max_diff(old, want, select),
                _max_diff(new, want, select),
                0.0,
            )
        )


def schedule_rows(rows: list):
    lamb = load_config("bert_large_lamb", "phase1")
    w, total, peak = lamb.warmup_steps, lamb.num_train_steps, lamb.learning_rate
    previous = trainer_schedule(peak, w, total, lamb.decay_power)
    now = learning_rate_schedule(lamb)
    rows.append(
        (
            f"LAMB phase 1 lr at step {w} (just after warmup)",
            float(previous(w)),
            float(now(w)),
            google_lr(w, peak, w, total, lamb.decay_power),
        )
    )
    for name, config in (
        ("bert_base phase 1", load_config("bert_base", "phase1")),
        ("LAMB phase 1", lamb),
    ):
        w, total, peak, p = (
            config.warmup_steps,
            config.num_train_steps,
            config.learning_rate,
            config.decay_power,
        )
        steps = np.arange(0, total + 1, max(1, total // 5000))
        want = np.array([google_lr(int(s), peak, w, total, p) for s in steps])
        old = np.asarray(jax.vmap(trainer_schedule(peak, w, total, p))(steps))
        new = np.asarray(jax.vmap(learning_rate_schedule(config))(steps))
        rows.append(
            (
                f"{name}: max |lr - google| / peak over the run",
                float(np.abs(old - want).max() / peak),
                float(np.abs(new - want).max() / peak),
                0.0,
            )
        )


def adamw_rows(rows: list):
    steps, warmup, lr = 5, 2, 1e-2
    params, grads = bert_tree_and_grads(steps, seed=1)
    config = optimizer_config("adamw_bert")
    config.update(
        dict(learning_rate=lr, warmup_steps=warmup, num_train_steps=steps, schedule="bert")
    )
    schedule = learning_rate_schedule(config)
    want = numpy_google_adamw(
        params, grads, [google_lr(s, lr, warmup, steps, 1.0) for s in range(steps)], 0.01
    )
    previous_config = optimizer_config("adamw")
    previous = make_optimizer(previous_config, schedule)  # optax.adamw: bias-corrected
    old, new = (
        _apply(previous, params, grads),
        _apply(make_optimizer(config, schedule), params, grads),
    )
    every = lambda k: True  # noqa: E731
    rows.append(
        (
            "AdamW, 5 updates with google's schedule, max |param - google|",
            _max_diff(old, want, every),
            _max_diff(new, want, every),
            0.0,
        )
    )
    rows.append(
        (
            "bert_base recipe's AdamW: first update / lr (|m / sqrt(v)|)",
            1.0,
            0.1 / np.sqrt(0.001),
            0.1 / np.sqrt(0.001),
        )
    )


def _previous_keep_mask(rng, rate, shape, rows):
    """The replaced dropout_keep_mask, restricted to `rows`: one uint32 counter over the array."""
    k1, k2 = jax.random.bits(rng, (2,), jnp.uint32)
    words = (*shape[:-1], (shape[-1] + 1) // 2)
    part = (len(rows), *words[1:])
    counter = jnp.asarray(rows, jnp.uint32).reshape(-1, *[1] * (len(words) - 1)) * jnp.uint32(
        int(np.prod(words[1:])) % 2**32
    )
    for axis in range(1, len(words)):
        counter = counter + jax.lax.broadcasted_iota(jnp.uint32, part, axis) * jnp.uint32(
            int(np.prod(words[axis + 1 :]))
        )
    bits = _mix32(_mix32((counter * jnp.uint32(0x9E3779B9)) ^ k1) + k2)
    halves = jax.lax.bitcast_convert_type(bits, jnp.uint16).reshape(len(rows), *shape[1:-1], -1)
    return halves[..., : shape[-1]] >= jnp.uint16(min(round(rate * 65536), 65535))


def dropout_rows(rows: list):
    rng = jax.random.key(0)
    for label, shape, other in (
        ("BERT-Large attention at 512", (4096, 16, 512, 512), 2048),
        ("LAMB phase 1 attention, whole batch", (65536, 16, 128, 128), 32768),
    ):
        old = np.asarray(_previous_keep_mask(rng, 0.1, shape, [0, other]))
        new = np.asarray(dropout_keep_mask(rng, 0.1, shape, rows=[0, other])[0])
        rows.append(
            (
                f"dropout: share of equal mask bits, rows 0 and {other} of {label}",
                float((old[0] == old[1]).mean()),
                float((new[0] == new[1]).mean()),
                0.9**2 + 0.1**2,
            )
        )
    scale = 65536 / (65536 - round(0.1 * 65536))
    rows.append(("bf16 dropout scale (rate 0.1)", float(jnp.bfloat16(scale)), scale, 1 / 0.9))


def decoder_rows(rows: list):
    config = BertConfig.preset("tiny", dtype="bfloat16")  # vocab 30522
    h = jax.random.normal(jax.random.key(0), (4, 20, 128))
    ids = jnp.zeros((1, 4), jnp.int32)
    embeddings = BertEmbeddings(config)
    params = embeddings.init(jax.random.key(1), ids, ids, ids, True)
    params = jax.tree.map(lambda p: p * 25.0, params)  # logits of order 10, as a trained model's
    now = np.asarray(embeddings.apply(params, h, method="attend"))
    previous = np.asarray(jnp.asarray(now).astype(jnp.bfloat16).astype(jnp.float32))
    table = params["params"]["word_embeddings"]["embedding"]
    as_bf16 = lambda a: np.asarray(jnp.asarray(a).astype(jnp.bfloat16), np.float64)  # noqa: E731
    want = np.einsum("bph,vh->bpv", as_bf16(h), as_bf16(nn_unbox(table)))
    rows.append(
        (
            f"bf16 MLM decoder: max |logit - exact product| (|logits| <= {np.abs(want).max():.0f})",
            float(np.abs(previous - want).max()),
            float(np.abs(now - want).max()),
            0.0,
        )
    )


def nn_unbox(x):
    return getattr(x, "value", x)


def main():
    rows: list[tuple[str, float, float, float]] = []
    lamb_rows(rows)
    schedule_rows(rows)
    adamw_rows(rows)
    dropout_rows(rows)
    decoder_rows(rows)
    width = max(len(r[0]) for r in rows)
    print(f"{'check':<{width}}  {'previous':>12}  {'now':>12}  {'reference':>12}")
    for label, old, new, want in rows:
        print(f"{label:<{width}}  {old:>12.6g}  {new:>12.6g}  {want:>12.6g}")


if __name__ == "__main__":
    main()
