"""The pretraining loop as a library function: `train_and_evaluate(config, workdir) -> TrainState`.

Called by `python -m bert_jax.pretrain` and usable from a notebook. Resumes from the newest good
checkpoint in WORKDIR/checkpoints; on SIGTERM it finishes the step, saves and returns.
"""

from __future__ import annotations

import json

import jax
import numpy as np
from etils import epath

from bert_jax.checkpoints import checkpointing
from bert_jax.data import input_pipeline
from bert_jax.data.corpus import describe
from bert_jax.data.packed_examples import batch_predictions
from bert_jax.pretraining.config import (
    PRETRAINING_RERUN_FREE,
    eval_batch_size,
    validate_pretraining_config,
)
from bert_jax.pretraining.step import (
    SUM_METRICS,
    Pretrainer,
    TrainState,
    build_pretrainer,
    metrics_from_sums,
)
from bert_jax.training import distributed, loop, optim, rerun, sharding
from bert_jax.training.metrics import (
    peak_flops_per_device,
    pretraining_flops_per_example,
    throughput,
)

DIVERGENCE_KEYS = ("mlm_loss_sum", "nsp_loss_sum", "grad_norm")  # per step, NaN/inf stops the run
# What --config.overwrite=True deletes of an earlier run in the workdir (config.json is rewritten).
RUN_OUTPUTS = (
    "checkpoints", "metrics.jsonl", "metrics", "tensorboard", "final_step.json",
    "dataset.json", rerun.HISTORY,
)  # fmt: skip


def evaluate(pretrainer: Pretrainer, params, config, batches=None) -> dict[str, float]:
    """Held-out masked-LM and NSP metrics over up to config.eval_steps eval batches.

    Each eval step runs eval_batch_size rows (default: the training microbatch, so evaluation
    stays within the memory gradient accumulation keeps small); each process builds only the
    rows of its batch share. batches: this process's local batches (default: the validation
    split). Shares hold different numbers of batches: evaluation stops when any runs out.
    """
    if batches is None:
        share, shares = sharding.batch_share(pretrainer.mesh)
        batches = input_pipeline.make_pretraining_iterator(
            config.data,
            split="validation",
            global_batch_size=eval_batch_size(config),
            seed=config.seed,
            process_index=share,
            process_count=shares,
            num_epochs=1,
        )
    iterator = iter(batches)
    totals = None
    count = 0
    while count < config.eval_steps:
        local_batch = next(iterator, None)
        if not distributed.all_processes(local_batch is not None):
            break
        sums = pretrainer.eval_step(params, pretrainer.shard_batch(local_batch))
        totals = sums if totals is None else jax.tree.map(np.add, totals, sums)
        count += 1
    if totals is None:
        if jax.process_index() == 0 and config.eval_steps > 0:
            print(
                f"evaluation skipped: a share of the validation split holds no full eval batch "
                f"({eval_batch_size(config)} rows over {sharding.batch_share(pretrainer.mesh)[1]}"
                " shares); lower eval_batch_size or raise data.validation_fraction",
                flush=True,
            )
        return {}
    result = metrics_from_sums(jax.device_get(totals), prefix="eval_")
    result["eval_batches"] = count
    result["eval_rows"] = count * eval_batch_size(config)
    shares = sharding.batch_share(pretrainer.mesh)[1]
    if shares > 1 and jax.process_index() == 0 and shares not in _EVAL_SIZE_EXPLAINED:
        _EVAL_SIZE_EXPLAINED.add(shares)
        print(
            f"evaluation: {result['eval_rows']} held-out rows; each of the {shares} data shares "
            "reads its own validation documents and evaluation stops at the smallest share's "
            "last full batch, so the eval size depends on the number of hosts",
            flush=True,
        )
    return result


_EVAL_SIZE_EXPLAINED: set[int] = set()  # share counts whose eval size was explained once


def _load_init_params(config, pretrainer: Pretrainer, state: TrainState) -> TrainState:
    from bert_jax.checkpoints.checkpointing import load_params_for_init

    params = load_params_for_init(config.init_checkpoint, pretrainer.abstract_state.params)
    return state.replace(params=params)


def decay_start(config) -> int | None:
    """The step a wsd schedule's decay starts at, whose checkpoint WORKDIR/decay_start keeps;
    None for other schedules or no decay."""
    if config.schedule != "wsd":
        return None
    total = int(config.num_train_steps)
    start = optim.decay_start_step(total, float(config.wsd_decay_fraction))
    return start if 0 < start < total else None


def train_and_evaluate(config, workdir) -> TrainState:
    """Pretrains BERT per `config`, writing checkpoints and metrics under `workdir`.

    Args:
      config: a pretraining ConfigDict (a configs/*.py get_config; docs/configs.md).
      workdir: local or gs:// directory; a run there resumes from its newest intact checkpoint.

    Returns:
      The TrainState after the last step run (num_train_steps, or the step saved on SIGTERM).
    """
    distributed.initialize_if_needed()
    workdir = epath.Path(workdir)  # local paths and gs:// alike
    validate_pretraining_config(config, jax.device_count())
    mesh = sharding.make_mesh(config.mesh)
    is_main = jax.process_index() == 0
    config_json = config.to_json(indent=2)
    records = {"config.json": json.loads(config_json)}
    changes = rerun.check(workdir, config, records, PRETRAINING_RERUN_FREE, RUN_OUTPUTS)
    if is_main:
        workdir.mkdir(parents=True, exist_ok=True)
        if not changes:  # else written once the run has resumed, with the changes recorded
            (workdir / "config.json").write_text(config_json)
        print(describe(input_pipeline.prepare_data(config.data, workdir)))
    distributed.barrier("data_prepared")
    config = input_pipeline.with_prepared_dataset(
        config, workdir
    )  # no raw text is read from here on

    with jax.set_mesh(mesh):
        pretrainer = build_pretrainer(config, mesh)
        share, shares = sharding.batch_share(mesh)  # hosts holding the same rows feed the same
        checkpointer = checkpointing.Checkpointer(
            workdir,
            config.checkpoint_every_steps,
            config.keep_checkpoints,
            config,
            data_share=(share, shares),
            kept_step=decay_start(config),
        )
        train_iter = input_pipeline.make_pretraining_iterator(
            config.data,
            split="train",
            global_batch_size=config.batch_size,
            seed=config.seed,
            process_index=share,
            process_count=shares,
        )
        init_rng, dropout_rng = jax.random.split(jax.random.key(config.seed))
        restored = checkpointer.restore(pretrainer.abstract_state)
        pending_metrics = []
        if restored is not None:
            start_step, state = restored.step, restored.state
            if restored.data_state is not None:
                train_iter.set_state(restored.data_state)
            if restored.rng is not None:
                dropout_rng = restored.rng
            pending_metrics = restored.pending_metrics or []
            if is_main:
                print(f"resumed from {checkpointer.directory / str(start_step)}")
        else:
            state = pretrainer.init(init_rng)
            start_step = 0
            if config.init_checkpoint:
                state = _load_init_params(config, pretrainer, state)
        if changes and is_main:
            (workdir / "config.json").write_text(config_json)
            rerun.record(workdir, changes, start_step)
        state = _run_loop(
            config,
            pretrainer,
            checkpointer,
            train_iter,
            state,
            start_step,
            dropout_rng,
            workdir,
            pending_metrics,
        )
        checkpointer.close()
    return state


def _run_loop(
    config,
    pretrainer,
    checkpointer,
    train_iter,
    state,
    start_step,
    dropout_rng,
    workdir,
    pending_metrics,
):
    # Per batch row (padding and all the examples of a packed row included).
    model_flops = pretraining_flops_per_example(
        pretrainer.model_config, config.data.max_seq_length, batch_predictions(config.data)
    )
    peak = config.peak_flops_per_device or peak_flops_per_device(
        cpu_peak_flops=config.cpu_peak_flops
    )
    peak_total = peak * jax.device_count()

    def train_step(state, step):
        batch = pretrainer.shard_batch(next(train_iter))
        state, metrics = pretrainer.train_step(state, batch, dropout_rng)
        return state, metrics, None

    def log_scalars(fetched, timing: loop.Timing) -> dict:
        # The keys the step returns (no nsp_* but nsp_count for an MLM-only objective; rows
        # under batch-size warmup, the rows that trained).
        keys = [k for k in (*SUM_METRICS, "rows") if k in fetched[0]]
        sums = {k: float(sum(m[k] for m in fetched)) for k in keys}
        scalars = metrics_from_sums(sums)
        scalars["learning_rate"] = float(fetched[-1]["learning_rate"])
        scalars["grad_norm"] = float(np.mean([m["grad_norm"] for m in fetched]))
        rows = sums.get("rows", len(fetched) * config.batch_size)
        if "rows" in sums:
            scalars["batch_size"] = float(fetched[-1]["rows"])
        summed = {
            "examples": sums["nsp_count"],
            "tokens": rows * config.data.max_seq_length,
            "real_tokens": sums["real_tokens"],
        }
        steps_per_sec = timing.steps_per_sec
        scalars.update(throughput(steps_per_sec, len(fetched), summed))
        # Counts the FLOPs of the rows that train: under batch-size warmup the step computes
        # the full batch, so this is what the warmup's rows get of the chips.
        scalars["mfu"] = steps_per_sec * rows / len(fetched) * model_flops / peak_total
        return scalars

    outcome = loop.run(
        loop.Loop(
            total_steps=config.num_train_steps,
            log_every=config.log_every_steps,
            eval_every=config.eval_every_steps,
            checkpointer=checkpointer,
            workdir=workdir,
            divergence_keys=DIVERGENCE_KEYS,
            train_step=train_step,
            log_scalars=log_scalars,
            postfix=lambda s: dict(loss=f"{s['loss']:.3f}", mlm_acc=f"{s['mlm_accuracy']:.3f}"),
            evaluate=lambda state, step: evaluate(pretrainer, state.params, config),
            data_state=train_iter.get_state,
            rng=dropout_rng,
            desc="pretrain",
            progress_bar=config.progress_bar,
            announce_compile=True,
        ),
        state,
        start_step,
        pending_metrics,
    )
    checkpointer.wait()  # the last step is saved before the run says it finished
    if jax.process_index() == 0:
        (epath.Path(workdir) / "final_step.json").write_text(json.dumps({"step": outcome.step}))
    return outcome.state
