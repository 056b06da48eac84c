"""Fine-tuning as a library function: `train_and_evaluate(config, workdir) -> FinetuneResult`.

The pretrained encoder is loaded once (`load_pretrained_encoder`) and never modified; the task
model is that encoder plus a new head. The shared loop (training/loop.py) trains, evaluates,
keeps best/ and stops with a save on SIGTERM; the same call on the same workdir resumes.
docs/design/finetuning.md lists what WORKDIR holds.
"""

from __future__ import annotations

import dataclasses
import json
import zlib

import jax
import ml_collections
import numpy as np

from bert_jax.checkpoints import checkpointing, pretrained
from bert_jax.data.tokenization import WordPieceTokenizer
from bert_jax.errors import UserError
from bert_jax.finetuning import batches as task_batches
from bert_jax.finetuning import tasks as task_registry
from bert_jax.finetuning.batches import Batch, TrainBatches
from bert_jax.finetuning.config import (
    FINETUNING_RERUN_FREE,
    training_steps,
    validate_finetuning_config,
)
from bert_jax.finetuning.step import SUM_METRICS, Finetuner, FinetuneState, build_finetuner
from bert_jax.finetuning.tasks import features as tasks
from bert_jax.finetuning.tasks import tag_decoding
from bert_jax.model.modeling import BertConfig, BertModel
from bert_jax.paths import as_path
from bert_jax.training import distributed, loop, rerun, sharding
from bert_jax.training.metrics import throughput
from bert_jax.training.optim import learning_rate_schedule

PREDICTION_FILES = sorted({task_registry.get(kind).prediction_file for kind in task_registry.KINDS})
# What --config.overwrite=True deletes of an earlier run in the workdir (the files the run
# describes itself with are rewritten).
DIVERGENCE_KEYS = ("loss_sum", "grad_norm")  # per step, NaN/inf stops the run
RUN_OUTPUTS = (
    "checkpoints", pretrained.BEST_DIR, "metrics.jsonl", "metrics", "tensorboard",
    "eval_results.json", *PREDICTION_FILES, rerun.HISTORY,
)  # fmt: skip


@dataclasses.dataclass
class PretrainedEncoder:
    """A pretrained encoder loaded once; fine-tuning runs read it and never modify it."""

    info: pretrained.CheckpointInfo
    tokenizer: WordPieceTokenizer
    params: dict | None  # the 'bert' subtree, sharded over the mesh; None with random_init


@dataclasses.dataclass
class FinetuneResult:
    state: FinetuneState  # the last step's trainable parameters and optimizer state
    params: dict  # the whole task tree {'bert', head} after the last step
    eval_metrics: dict[str, float]  # final dev metrics, as in eval_results.json
    best_step: int | None
    best_metrics: dict[str, float] | None
    label_list: list[str] | None
    preempted: bool = False  # stopped by SIGTERM after saving; run again to continue
    workdir: str | None = None

    def __repr__(self) -> str:
        """One line: the parameter tree itself would print megabytes."""
        count = sum(int(np.prod(np.shape(leaf))) for leaf in jax.tree.leaves(self.params))
        metrics = {
            k: round(float(v), 4) if np.ndim(v) == 0 and np.isreal(v) else v
            for k, v in self.eval_metrics.items()
        }
        return (
            f"FinetuneResult(step={int(self.state.step)}, eval_metrics={metrics}, "
            f"best_step={self.best_step}, preempted={self.preempted}, "
            f"workdir={self.workdir!r}, parameters={count:,})"
        )


def _abstract_encoder(bert_config: BertConfig, mesh, rules):
    """BertModel parameters as ShapeDtypeStructs with the mesh shardings of a task's 'bert'."""
    model = BertModel(bert_config)

    def init(rng):
        ids = jax.numpy.zeros((1, 8), jax.numpy.int32)
        return model.init(rng, ids)["params"]

    return sharding.sharded_abstract(init, mesh, rules)[0]


def load_pretrained_encoder(config, mesh=None) -> PretrainedEncoder:
    """Reads config.init_checkpoint's architecture, tokenizer and (unless random_init) encoder."""
    mesh = mesh or sharding.make_mesh(config.mesh)
    info = pretrained.inspect_checkpoint(config.init_checkpoint)
    tokenizer = pretrained.load_tokenizer(info, config.vocab_file, config.lowercase)
    params = None
    if not config.random_init:
        abstract = _abstract_encoder(info.bert_config, mesh, sharding.rules_from_config(config))
        params = pretrained.load_encoder(info, abstract)
    return PretrainedEncoder(info=info, tokenizer=tokenizer, params=params)


def _model_config(config, info: pretrained.CheckpointInfo, mesh) -> BertConfig:
    tensor = mesh.shape["tensor"]
    for name in ("num_attention_heads", "intermediate_size"):
        if getattr(info.bert_config, name) % tensor:
            raise UserError(
                f"mesh.tensor {tensor} does not divide the model's {name} "
                f"{getattr(info.bert_config, name)}"
            )
    model_config = info.bert_config.replace(
        hidden_dropout_prob=float(config.hidden_dropout_prob),
        attention_probs_dropout_prob=float(config.attention_probs_dropout_prob),
        dtype=config.dtype,
        remat_policy=config.remat_policy,
    )
    if config.max_seq_length > model_config.max_position_embeddings:
        raise UserError(
            f"max_seq_length {config.max_seq_length} exceeds the model's max_position_embeddings "
            f"{model_config.max_position_embeddings}"
        )
    return model_config


def _schedule(config, total_steps: int, warmup_steps: int):
    values = dict(num_train_steps=total_steps, warmup_steps=warmup_steps, schedule=config.schedule)
    values["learning_rate"] = float(config.learning_rate)
    return learning_rate_schedule(ml_collections.ConfigDict(values))


def local_batch(finetuner: Finetuner, data: tasks.TaskData, batch: Batch) -> dict:
    """The arrays of the rows of `batch` this process supplies: those its devices hold in the
    mesh (sharding.batch_rows), so global row i is batch row i on every host."""
    rows = sharding.batch_rows(finetuner.mesh, batch.num_rows)
    return task_batches.build_batch(finetuner.kind, data, batch, rows)


def is_packed(config, kind: str) -> bool:
    return bool(config.packing) and task_registry.get(kind).packable


def train_batches(config, data: tasks.TaskData, mesh) -> TrainBatches:
    accum = int(config.get("grad_accum_steps", 1))
    return TrainBatches(
        data,
        int(config.batch_size),
        int(config.seed),
        is_packed(config, data.kind),
        int(config.max_sequences_per_row),
        row_multiple=sharding.data_parallel_size(mesh) * accum,
    )


def predict(finetuner: Finetuner, trainable, frozen, data: tasks.TaskData, config):
    """Model outputs for every feature of `data` and the summed loss; (predictions, sums).

    Features run packed (config.packing) or one per row in length buckets, config.eval_batch_size
    rows per step; every output is written back to its feature's place."""
    batches = task_batches.eval_batches(
        data,
        int(config.eval_batch_size),
        is_packed(config, finetuner.kind),
        int(config.max_sequences_per_row),
    )
    buffers = task_batches.predictions_buffers(
        finetuner.kind, data, data.num_labels, finetuner.token_scores
    )
    totals = None
    for batch in batches:
        arrays = finetuner.shard_batch(local_batch(finetuner, data, batch))
        outputs, sums = jax.device_get(finetuner.eval_step(trainable, frozen, arrays))
        task_batches.scatter_predictions(finetuner.kind, data, batch, outputs, buffers)
        totals = sums if totals is None else jax.tree.map(np.add, totals, sums)
    predictions = finetuner.task.predictions(buffers)
    return predictions, {k: float(v) for k, v in totals.items()}


def evaluate(finetuner: Finetuner, trainable, frozen, data: tasks.TaskData, config):
    """Dev metrics by their compute_metrics names, plus `loss`."""
    predictions, sums = predict(finetuner, trainable, frozen, data, config)
    metrics = tasks.compute_metrics(
        finetuner.kind, predictions, data, **finetuner.decoding(trainable)
    )
    metrics["loss"] = sums["loss_sum"] / max(sums["count"], 1.0)
    return metrics


def _load_split(config, split: str, tokenizer, label_list=None, rows=None) -> tasks.TaskData:
    data = tasks.load_task(config, split, tokenizer, label_list=label_list, data=rows)
    counts = " ".join(f"{k}={v}" for k, v in data.stats.items())
    print(f"{split}: {data.source}: {counts}")
    return data


def data_fingerprint(data: tasks.TaskData) -> dict:
    """{"features", "crc32"} of a split's featurised arrays: another file, an edited one or another
    tokenization gives another CRC."""
    crc = 0
    for name in sorted(data.arrays):
        crc = zlib.crc32(np.ascontiguousarray(data.arrays[name]), crc)
    return {"features": data.num_features, "crc32": f"{crc:08x}"}


def _write_json(path, values: dict) -> None:
    if jax.process_index() == 0:
        path.write_text(json.dumps(values, indent=2) + "\n")


def run_rngs(seed: int) -> tuple[jax.Array, jax.Array]:
    """(parameter initialisation, dropout) keys of a run; the data order is seeded separately
    (task_batches.train_indices), so a head can be reproduced outside the run:
    model.init(init_rng, ...)."""
    key = jax.random.key(seed)
    return jax.random.fold_in(key, 0), jax.random.fold_in(key, 1)


def dropout_rng_of(config) -> jax.Array:
    """The run's dropout key: run_rngs(seed)'s, or run_rngs(dropout_seed)'s when that is set."""
    seed = int(config.get("dropout_seed", -1))
    return run_rngs(int(config.seed) if seed < 0 else seed)[1]


def _start_state(config, finetuner: Finetuner, encoder: PretrainedEncoder, label_list=None):
    """(state, frozen) at step 0: the pretrained encoder plus a fresh head (the checkpoint's own
    when it is a task model with the task's labels: pretrained.task_head), or all fresh."""
    init_rng, _ = run_rngs(config.seed)
    if config.random_init:
        params = finetuner.init_params(init_rng)
        encoder_params, head = params["bert"], finetuner.head(params)
    else:
        encoder_params, head = encoder.params, finetuner.init_head(init_rng)
        head = pretrained.task_head(encoder.info, config.task.kind, label_list, head)
    state = finetuner.start(encoder_params, head)
    return state, (encoder_params if finetuner.freeze_encoder else {})


def constrained_decoding(config, train_data: tasks.TaskData) -> bool:
    """Whether tags are decoded as whole sequences that obey their BIO / IOBES scheme
    (eval.tag_decoding): config.constrained_decoding, for entity tag sets whose training
    sentences all obey the scheme (IOB1 data, where I-X may open an entity, does not)."""
    if not (config.get("constrained_decoding", True) and train_data.is_bio):
        return False
    gold = [example.tags for example in train_data.examples]
    breaks = tag_decoding.scheme_breaks(gold, train_data.label_list)
    if breaks:
        print(
            f"constrained_decoding: {breaks} of {len(gold)} training sentences break the "
            "IOB2 / IOBES rules (IOB1 tags?), so tags are decoded word by word (argmax)"
        )
    return not breaks


def _check_layout(encoder_params, finetuner: Finetuner):
    """The encoder as this run's mesh lays it out (a copy only if it was loaded for another)."""
    wanted = finetuner.param_shardings["bert"]
    same = all(
        a.sharding == s
        for a, s in zip(jax.tree.leaves(encoder_params), jax.tree.leaves(wanted), strict=True)
    )
    return encoder_params if same else jax.device_put(encoder_params, wanted)


def train_and_evaluate(
    config, workdir, encoder: PretrainedEncoder | None = None, *, train=None, dev=None, test=None
) -> FinetuneResult:
    """Fine-tunes per `config` into `workdir`; resumes from WORKDIR/checkpoints when present.

    Args:
      config: a fine-tuning ConfigDict (bert_jax.finetuning_config(kind); docs/configs.md).
      workdir: local or gs:// directory for checkpoints/, best/, metrics and results.
      encoder: a PretrainedEncoder from load_pretrained_encoder, to share one load between
        runs; None loads config.init_checkpoint.
      train, dev, test: a split's rows in memory instead of its task.*_file: a list of
        (text, label), (text_a, text_b, label), (text, [labels]) or (tokens, tags) tuples, a
        pandas DataFrame or a datasets.Dataset (columns: config task.columns; docs/tasks.md).

    Returns:
      A FinetuneResult: final state, parameters and dev metrics, the best step; preempted=True
      (and no eval_metrics) when SIGTERM stopped it after saving.
    """
    distributed.initialize_if_needed()
    rows = {"train": train, "dev": dev, "test": test}
    in_memory = {split for split, data in rows.items() if data is not None}
    validate_finetuning_config(config, jax.device_count(), in_memory)
    workdir = as_path(workdir)  # local (absolute) or gs://
    kind = config.task.kind
    mesh = sharding.make_mesh(config.mesh)
    with jax.set_mesh(mesh):
        encoder = encoder or load_pretrained_encoder(config, mesh)
        if encoder.params is None and not config.random_init:
            raise UserError("the PretrainedEncoder was loaded with random_init; load it again")
        tokenizer = encoder.tokenizer
        model_config = _model_config(config, encoder.info, mesh)
        train_data = _load_split(config, "train", tokenizer, rows=train)
        dev_data = _load_split(config, "dev", tokenizer, train_data.label_list, rows=dev)
        batches = train_batches(config, train_data, mesh)
        print(f"train: {batches.describe()}")
        total_steps, warmup_steps = training_steps(
            config, train_data.num_features, batches.steps_per_epoch
        )
        finetuner = build_finetuner(
            config,
            kind,
            model_config,
            train_data.num_labels,
            mesh,
            _schedule(config, total_steps, warmup_steps),
            constrained=constrained_decoding(config, train_data),
            crf=bool(config.get("crf", False)),
        )
        if encoder.params is not None:
            encoder = dataclasses.replace(encoder, params=_check_layout(encoder.params, finetuner))
        main_metric = tasks.main_metric(train_data)
        # A rerun of this workdir with settings or data that change the result stops here, before
        # anything is written (bert_jax.training.rerun); the labels and data are compared by
        # fingerprint.
        data_record = dict(
            train_data=data_fingerprint(train_data), dev_data=data_fingerprint(dev_data)
        )
        records = {
            "config.json": json.loads(config.to_json()),
            pretrained.TASK_INFO: dict(label_list=train_data.label_list, **data_record),
        }
        changes = rerun.check(workdir, config, records, FINETUNING_RERUN_FREE, RUN_OUTPUTS)
        checkpointer = checkpointing.Checkpointer(
            workdir, config.checkpoint_every_steps, 1, layout="finetuning",
            best_metric=main_metric, best_dir=pretrained.BEST_DIR,
        )  # fmt: skip
        # Before this run's config.json replaces the old one: a checkpoint of other settings
        # (another head, CRF or label set) is an error, not a damaged checkpoint to replace.
        restored = checkpointer.restore(finetuner.abstract_state)
        if jax.process_index() == 0:
            workdir.mkdir(parents=True, exist_ok=True)
            (workdir / "config.json").write_text(config.to_json(indent=2))
            task_info = dict(
                kind=kind,
                label_list=train_data.label_list,
                num_labels=train_data.num_labels,
                head=finetuner.head_name,
                lowercase=tokenizer.lowercase,
                max_seq_length=int(config.max_seq_length),
                main_metric=main_metric,
                columns=train_data.columns,
                init_checkpoint=str(config.init_checkpoint),
                constrained_decoding=finetuner.constrained,
                crf=finetuner.crf,
                head_window=int(config.get("head_window", 0)),
                **data_record,
            )
            pretrained.write_finetuned_files(workdir, task_info, model_config, tokenizer)
            rerun.record(workdir, changes, restored.step if restored else 0)
        distributed.barrier("finetune_workdir")
        if restored is not None:
            start_step, state = restored.step, restored.state
            pending_metrics = restored.pending_metrics
            frozen = encoder.params if finetuner.freeze_encoder else {}
            print(f"resumed from {checkpointer.directory / str(start_step)}")
        else:
            start_step, pending_metrics = 0, []
            state, frozen = _start_state(config, finetuner, encoder, train_data.label_list)
        print(
            f"fine-tuning {kind}: {train_data.num_features} train features, {total_steps} steps "
            f"({warmup_steps} warmup) of {config.batch_size}; dev {dev_data.num_features} features"
        )
        state, eval_metrics = _run_loop(
            config, finetuner, state, frozen, batches, dev_data, start_step, total_steps,
            workdir, checkpointer, pending_metrics,
        )  # fmt: skip
        checkpointer.wait()
        best_step, best_metrics = checkpointer.best_step()
        preempted = eval_metrics is None
        if not preempted:
            results = dict(eval_metrics, step=total_steps, best_step=best_step)
            if best_metrics:
                results["best_" + main_metric] = best_metrics[main_metric]
            _write_json(workdir / "eval_results.json", results)
            if config.do_predict:
                _predict_test(config, finetuner, checkpointer, tokenizer, train_data, workdir, test)
        checkpointer.close()
    return FinetuneResult(
        state=state,
        params=finetuner.full_params(state, frozen),
        eval_metrics=eval_metrics or {},
        best_step=best_step,
        best_metrics=best_metrics,
        label_list=train_data.label_list,
        preempted=preempted,
        workdir=str(workdir),
    )


def _run_loop(
    config, finetuner, state, frozen, batches, dev_data, start_step, total_steps, workdir,
    checkpointer, pending_metrics,
):  # fmt: skip
    """Trains from start_step; returns (state, final dev metrics), or (state, None) when SIGTERM
    stopped it after saving the state."""
    train_data = batches.data
    latest = {}  # the last dev evaluation's metrics

    def train_step(state, step):
        batch = batches.batch(step)
        arrays = finetuner.shard_batch(local_batch(finetuner, train_data, batch))
        state, metrics = finetuner.train_step(state, frozen, arrays, dropout_rng)
        counts = {
            "examples": int((batch.slots >= 0).sum()),
            "tokens": batch.num_rows * batch.length,
            "real_tokens": task_batches.real_tokens(train_data, batch),
        }
        return state, metrics, counts

    def log_scalars(fetched, timing: loop.Timing) -> dict:
        sums = {k: sum(float(m[k]) for m in fetched) for k in SUM_METRICS}
        scalars = {
            "loss": sums["loss_sum"] / max(sums["count"], 1.0),
            "learning_rate": float(fetched[-1]["learning_rate"]),
            "grad_norm": float(np.mean([m["grad_norm"] for m in fetched])),
        }
        if finetuner.task.counts_correct:
            scalars["accuracy"] = sums["correct"] / max(sums["count"], 1.0)
        if timing.steps:
            scalars.update(throughput(timing.steps_per_sec, timing.steps, timing.counts))
        return scalars

    def evaluate_dev(state, step) -> dict:
        latest.clear()
        latest.update(evaluate(finetuner, state.params, frozen, dev_data, config))
        checkpointer.save_best(step, finetuner.full_params(state, frozen), latest)
        return {f"eval_{k}": v for k, v in latest.items()}

    dropout_rng = dropout_rng_of(config)
    outcome = loop.run(
        loop.Loop(
            total_steps=total_steps,
            log_every=config.log_every_steps,
            eval_every=config.eval_every_steps,
            checkpointer=checkpointer,
            workdir=workdir,
            divergence_keys=DIVERGENCE_KEYS,
            train_step=train_step,
            log_scalars=log_scalars,
            postfix=lambda scalars: dict(loss=f"{scalars['loss']:.4f}"),
            evaluate=evaluate_dev,
            desc=f"finetune {finetuner.kind}",
            progress_bar=config.progress_bar,
            save_after_eval=True,  # best/ and the train state of the same step
            stop_at_last_step=False,  # the run is done: its results and predictions follow
        ),
        state,
        start_step,
        pending_metrics,
    )
    if outcome.stopped:
        return outcome.state, None
    if not latest:  # resumed after the last step: evaluate what was restored
        latest.update(evaluate(finetuner, outcome.state.params, frozen, dev_data, config))
    return outcome.state, dict(latest)


def _predict_test(config, finetuner, checkpointer, tokenizer, train_data, workdir, rows) -> None:
    test_data = _load_split(config, "test", tokenizer, train_data.label_list, rows=rows)
    step, params = checkpointer.restore_best(finetuner.abstract_params)
    trainable, frozen = finetuner.split_params(params)
    predictions, _ = predict(finetuner, trainable, frozen, test_data, config)
    if jax.process_index() == 0:
        path = workdir / finetuner.task.prediction_file
        tasks.write_predictions(
            finetuner.kind, predictions, test_data, path, **finetuner.decoding(trainable)
        )
        print(f"test predictions of step {step} ({test_data.num_features} features): {path}")
