"""The fine-tuning config: every key with its default, and validation before anything compiles.

`finetuning_config(kind, mode)` is the whole shipped config of a kind, importable from the installed
package; configs/finetune/KIND.py (the --config files) return it.
The architecture is never configured here: it comes from `init_checkpoint` (a Hugging Face BERT
directory, a bert_jax pretraining workdir or one of its checkpoints), and so does the vocabulary
unless `vocab_file` is set.
"""

from __future__ import annotations

import math
import pathlib

import ml_collections

from bert_jax.convert import hub
from bert_jax.errors import UserError
from bert_jax.finetuning import tasks
from bert_jax.finetuning.tasks import KINDS
from bert_jax.model.config import REMAT_POLICIES
from bert_jax.paths import as_path  # init_checkpoint and vocab_file may be on gs://
from bert_jax.training import sharding
from bert_jax.training.config_parts import (
    add_mesh_keys,
    add_optimizer_defaults,
    add_rerun_keys,
    check_known_keys,
    check_mode,
    check_ranges,
    validate_optimizer_and_batch,
)


def use_test_mode(c: ml_collections.ConfigDict, max_seq_length: int = 32) -> None:
    """Shrinks a fine-tuning config to the seconds-long setup the test suite runs."""
    c.max_seq_length = max_seq_length
    c.batch_size = 8
    c.eval_batch_size = 16
    c.learning_rate = 1e-3
    c.num_train_epochs = 1.0
    c.eval_every_steps = 0
    c.log_every_steps = 5
    c.progress_bar = False


MODES = ("default", "test")  # test: use_test_mode, the seconds-long setup of the test suite


def finetuning_config(kind: str, mode: str = "default") -> ml_collections.ConfigDict:
    """The shipped config of task `kind` (google-research/bert run_classifier / run_squad
    defaults and the kind's recipe): what `--config configs/finetune/KIND.py[:MODE]` gives."""
    if kind not in KINDS:
        raise UserError(f"unknown task kind {kind!r}; choose one of {KINDS}")
    check_mode(mode, MODES, f"configs/finetune/{kind}.py")
    c = _generic_config(kind)
    task = tasks.get(kind)
    c.update(task.recipe)
    if mode == "test":
        use_test_mode(c)
        c.update(task.test_recipe)
    return c


def _generic_config(kind: str) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.init_checkpoint = ""  # HF BERT dir, bert_jax pretraining workdir, or its checkpoints/<step>
    c.random_init = False  # architecture and vocab from init_checkpoint, weights random (baseline)
    c.vocab_file = ""  # "" = the init checkpoint's vocab.txt (HF) or data.vocab_file (bert_jax)
    c.lowercase = True  # lower-case and strip accents, when vocab_file is given

    c.task = ml_collections.ConfigDict()  # task.*: what to learn, from which files
    c.task.kind = kind  # one of finetuning/tasks KINDS (set by the config file)
    c.task.train_file = ""  # TSV / JSON / CoNLL file (local or gs://)
    c.task.dev_file = ""  # evaluated during and after training
    c.task.test_file = ""  # predicted with do_predict
    c.task.tfds_name = ""  # e.g. glue/sst2, squad: read instead of the files when they are unset
    c.task.tfds_data_dir = ""  # where that TFDS dataset was prepared
    # The label set and the head's order; empty: the training labels, sorted (and printed).
    c.task.labels = ()
    # Rows in memory with named columns (train_and_evaluate(train=DataFrame, ...)): the column of
    # each input; "" = the first present of tasks/rows.py DEFAULT_COLUMNS ("text", "sentence", ...).
    c.task.columns = ml_collections.ConfigDict(
        dict(text="", text_pair="", label="", tokens="", tags="")
    )

    c.max_seq_length = 128  # word pieces per input, and per packed row
    # Several short examples per row of max_seq_length (Krell et al. 2021): each attends only
    # to itself and has its own [CLS]; losses and metrics stay per example. SQuAD windows fill
    # their rows, so squad never packs.
    c.packing = tasks.get(kind).packable
    c.max_sequences_per_row = 16  # the most examples one packed row holds
    c.batch_size = 32  # global, across all processes; packed: examples per step on average
    c.eval_batch_size = 64  # rows per evaluation step (packed rows hold several examples)
    c.learning_rate = 2e-5  # peak
    c.schedule = "trainer"  # the transformers Trainer's: decay from the peak over the rest
    c.num_train_epochs = 3.0  # used when num_train_steps is 0
    c.num_train_steps = 0  # > 0 overrides num_train_epochs
    c.warmup_proportion = 0.1  # warmup as a share of all steps
    # optimizer, weight_decay, adam_b1, adam_b2, adam_eps, nvlamb, max_grad_norm, grad_accum_steps
    add_optimizer_defaults(c)
    c.layerwise_lr_decay = 1.0  # < 1: layer i of L gets lr * decay^(L - i), embeddings decay^(L+1)
    c.freeze_encoder = False  # linear probe: only the head trains; encoder has no optimizer state
    # > 0: FGM adversarial training (gradients.with_adversarial_embeddings): every step also
    # trains on word embeddings moved this far (L2) in the direction that raises the loss.
    c.adversarial_epsilon = 0.0
    c.seed = 42  # the head's initialisation, the data order and (see below) dropout
    # >= 0: the dropout masks' own seed, while the head's initialisation and the data order keep
    # `seed`: reruns that differ in their dropout masks alone show how much of a difference
    # between two runs is that chance. -1: the masks follow `seed`.
    c.dropout_seed = -1

    # Applied on top of the checkpoint's architecture.
    c.hidden_dropout_prob = 0.1  # dropout on embeddings and layer outputs
    c.attention_probs_dropout_prob = 0.1  # dropout on attention weights
    c.dtype = "float32"  # compute dtype; parameters stay float32
    c.remat_policy = "none"  # recompute activations in backward: model REMAT_POLICIES

    # token_classification with BIO / IOBES tags: each sentence's tags are the most probable
    # sequence the scheme allows (no I-X after O or another type; eval.tag_decoding) instead of
    # each word's argmax, in evaluation, do_predict and bert_jax.pipeline.
    c.constrained_decoding = True
    # token_classification: a linear-chain CRF on the classifier ("BERT-CRF", bert_jax.model.crf):
    # tag transition scores trained on whole gold sentences and used when decoding.
    c.crf = False
    # token_classification: > 0, the classifier reads each word piece's last-layer vector beside
    # those of this many neighbours on each side within its sentence (a convolution of width
    # 2 * head_window + 1; zeros beyond the sentence); 0: each piece's own vector, as BERT.
    c.head_window = 0
    c.do_predict = False  # write test predictions (task.test_file) with the best checkpoint
    c.log_every_steps = 50  # training metrics to metrics.jsonl and TensorBoard
    c.eval_every_steps = 1000  # 0 = evaluate only at the end
    c.checkpoint_every_steps = 0  # 0 = at every evaluation and at the end
    add_mesh_keys(c)  # mesh.* (data, fsdp, tensor, dcn_data, dcn_fsdp, ...), logical_axis_rules
    c.progress_bar = True  # tqdm bar on process 0
    add_rerun_keys(c)  # overwrite, resume_with_changes
    return c


# Keys a rerun of a fine-tuning workdir may change without resume_with_changes
# (bert_jax.training.rerun): how the run is laid out, logged and saved, not what it computes
# (evaluation covers every dev feature whatever its batch size). The data files too: the run
# records its labels and a fingerprint of the featurised train and dev data in task_info.json,
# compared instead.
FINETUNING_RERUN_FREE = frozenset({
    "log_every_steps", "checkpoint_every_steps", "progress_bar", "eval_batch_size", "do_predict",
    "task.train_file", "task.dev_file", "task.test_file", "task.tfds_name", "task.tfds_data_dir",
    "task.columns",
    "mesh", "logical_axis_rules", "remat_policy", "overwrite", "resume_with_changes",
})  # fmt: skip


def training_steps(
    config, num_train_features: int, steps_per_epoch: int | None = None
) -> tuple[int, int]:
    """(total optimizer steps, warmup steps), counted as the transformers Trainer counts them;
    steps_per_epoch (packed rows) defaults to one feature per row."""
    if config.num_train_steps > 0:
        total = int(config.num_train_steps)
    else:
        per_epoch = steps_per_epoch or math.ceil(num_train_features / config.batch_size)
        total = max(1, math.ceil(per_epoch * float(config.num_train_epochs)))
    return total, math.ceil(float(config.warmup_proportion) * total)


FINETUNING_RANGES = {
    "learning_rate": "positive",
    "num_train_epochs": "non_negative",
    "num_train_steps": "non_negative",
    "weight_decay": "non_negative",
    "max_grad_norm": "non_negative",
    "max_seq_length": "at_least_one",
    "eval_every_steps": "non_negative",
    "checkpoint_every_steps": "non_negative",
    "hidden_dropout_prob": "fraction",
    "attention_probs_dropout_prob": "fraction",
}


def validate_finetuning_config(config, num_devices: int, in_memory=()) -> None:
    """Checks what can be checked before data is read or anything compiles; raises UserError.

    in_memory: the splits whose rows were passed in memory rather than named by task.*_file."""
    check_ranges(config, FINETUNING_RANGES)
    task = config.task
    if task.kind not in KINDS:
        raise UserError(f"task.kind={task.kind!r} is not one of {KINDS}")
    check_known_keys(config, finetuning_config(task.kind), f"{task.kind} fine-tuning")
    if not config.init_checkpoint:
        raise UserError(
            "init_checkpoint is not set: pass --config.init_checkpoint=PATH (a Hugging Face BERT "
            "directory or a bert_jax pretraining workdir)"
        )
    if not as_path(hub.resolve(config.init_checkpoint)).exists():
        raise UserError(f"init_checkpoint {config.init_checkpoint} not found")
    for split in ("train", "dev") + (("test",) if config.do_predict else ()):
        path = task.get(f"{split}_file")
        if split in in_memory:
            if path:
                raise UserError(f"{split} rows were passed and task.{split}_file is set: use one")
            continue
        if path and not pathlib.Path(path).expanduser().is_file():
            raise UserError(f"task.{split}_file {path} not found")
        if not path and not task.tfds_name:
            raise UserError(
                f"set task.{split}_file (or task.tfds_name), or pass the {split} rows to "
                "train_and_evaluate"
            )
    if config.vocab_file and not as_path(config.vocab_file).is_file():
        raise UserError(f"vocab_file {config.vocab_file} not found")
    shape = sharding.mesh_shape(config.mesh, num_devices)
    data_parallel = shape["data"] * shape["fsdp"]
    for key in ("batch_size", "eval_batch_size"):
        value = int(config[key])
        if value < 1 or value % data_parallel:
            raise UserError(
                f"{key} {value} must be a positive multiple of the data-parallel size "
                f"{data_parallel} (mesh data*fsdp)"
            )
    validate_optimizer_and_batch(config, data_parallel)
    if config.num_train_steps <= 0 and config.num_train_epochs <= 0:
        raise UserError("set num_train_epochs > 0 or num_train_steps > 0")
    if not 0.0 <= config.warmup_proportion <= 1.0:
        raise UserError(f"warmup_proportion {config.warmup_proportion} is not in [0, 1]")
    if not 0.0 < config.layerwise_lr_decay <= 1.0:
        raise UserError(f"layerwise_lr_decay {config.layerwise_lr_decay} is not in (0, 1]")
    if config.freeze_encoder and config.layerwise_lr_decay != 1.0:
        raise UserError("layerwise_lr_decay needs a trained encoder; unset it or freeze_encoder")
    epsilon = float(config.get("adversarial_epsilon", 0.0))
    if epsilon < 0:
        raise UserError(f"adversarial_epsilon {epsilon} is negative: use 0 (off) or a length > 0")
    if epsilon > 0 and config.freeze_encoder:
        raise UserError("adversarial_epsilon moves the word embeddings, which freeze_encoder "
                        "freezes: unset one")  # fmt: skip
    if int(config.get("dropout_seed", -1)) < -1:
        raise UserError(f"dropout_seed {config.dropout_seed} must be >= 0, or -1 (from seed)")
    if config.freeze_encoder and config.random_init:
        raise UserError("freeze_encoder with random_init would probe a random encoder; pick one")
    if config.remat_policy not in REMAT_POLICIES:
        raise UserError(
            f"remat_policy {config.remat_policy!r} is not one of {list(REMAT_POLICIES)}"
        )
    if int(config.get("head_window", 0)) < 0:
        raise UserError(f"head_window {config.head_window} is negative: use 0 (off) or more")
    labels = [str(label) for label in task.get("labels", ())]
    if labels and not tasks.get(task.kind).uses_label_list:
        raise UserError(f"task.labels does not apply to the {task.kind} kind: unset it")
    if len(set(labels)) != len(labels):
        raise UserError(f"task.labels {labels} repeats a label")
    tasks.get(task.kind).check_config(config)
    if int(config.max_sequences_per_row) < 1:
        raise UserError(f"max_sequences_per_row must be >= 1, got {config.max_sequences_per_row}")
    if config.log_every_steps < 1:
        raise UserError(f"log_every_steps must be >= 1, got {config.log_every_steps}")
