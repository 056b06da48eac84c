"""Models by path: Hugging Face BERT dirs, bert_jax pretraining workdirs, fine-tuned workdirs.

`inspect_checkpoint(path)` tells which of the three a path is and reads its architecture and
vocabulary without loading weights; `load_encoder` / `load_pretraining_params` /
`load_finetuned` (a fine-tuned workdir or a transformers task model) then read the weights into
the requested (sharded) layout. The fine-tuned workdir's files are listed in
docs/design/checkpoints_and_sealing.md.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from flax.core import meta

from bert_jax.checkpoints.sealing import SealedManager
from bert_jax.convert import hf, hub
from bert_jax.data.tokenization import WordPieceTokenizer, load_tokenizer_file
from bert_jax.errors import UserError
from bert_jax.model.modeling import BertConfig
from bert_jax.paths import as_path
from bert_jax.untrusted import MAX_POSITIONS, is_int, read_json_object, shown

HUGGINGFACE, BERT_JAX, FINETUNED = "huggingface", "bert_jax", "finetuned"
TASK_INFO, MODEL_CONFIG, VOCAB, BEST_DIR = (
    "task_info.json",
    "model_config.json",
    "vocab.txt",
    "best",
)


@dataclasses.dataclass(frozen=True)
class CheckpointInfo:
    """What a path holds, read from its small files only."""

    path: epath.Path  # a local path or gs://
    format: str  # HUGGINGFACE, BERT_JAX or FINETUNED
    bert_config: BertConfig
    vocab_file: epath.Path | None
    lowercase: bool | None  # None: the files do not say
    task_info: dict | None = None  # FINETUNED only


def _optional(values: dict, key: str, kind: type, path) -> Any:
    """values[key] when absent (None) or of type `kind` (int excludes bool); else a UserError."""
    value = values.get(key)
    if value is None:
        return None
    if not (is_int(value) if kind is int else isinstance(value, kind)):
        raise UserError(f"{path}: {key} must be a {kind.__name__}, got {shown(value)}")
    return value


def _check_task_info(info: dict, path) -> dict:
    """task_info.json of a fine-tuned workdir, which may come from anywhere: types and ranges."""
    from bert_jax.finetuning import tasks

    kind = info.get("kind")
    if not isinstance(kind, str) or kind not in tasks.KINDS:
        raise UserError(f"{path}: kind {shown(kind)} is not one of {tasks.KINDS}")
    head = info.get("head")
    if not isinstance(head, str) or not head.isidentifier():
        raise UserError(f"{path}: head {shown(head)} is not a parameter name")
    labels = _optional(info, "label_list", list, path)
    if labels is not None and not all(isinstance(label, str) for label in labels):
        raise UserError(f"{path}: label_list must hold strings, got {shown(labels)}")
    expected = tasks.get(kind).num_labels(labels)
    if info.get("num_labels") != expected or not is_int(info.get("num_labels")) or expected < 1:
        raise UserError(
            f"{path}: num_labels is {shown(info.get('num_labels'))}; a {kind} task with "
            f"label_list {shown(labels)} has {expected}"
        )
    _optional(info, "lowercase", bool, path)
    length = _optional(info, "max_seq_length", int, path)
    if length is not None and not 0 < length <= MAX_POSITIONS:
        raise UserError(f"{path}: max_seq_length {length} is not in [1, {MAX_POSITIONS}]")
    return info


def _pretraining_workdir(path: epath.Path) -> epath.Path | None:
    """The workdir of a bert_jax pretraining run: path itself, its checkpoints/ or checkpoints/N."""
    for candidate in (path, path.parent, path.parent.parent):
        config = candidate / "config.json"
        if config.is_file() and "model" in read_json_object(config):
            return candidate
    return None


def _pretraining_vocab(workdir: epath.Path, data: dict) -> epath.Path | None:
    vocab = data.get("vocab_file") or ""
    candidates = []
    if vocab:
        candidates += [as_path(vocab), workdir / vocab, workdir / as_path(vocab).name]
    candidates.append(workdir / VOCAB)
    return next((c for c in candidates if c.is_file()), None)


def inspect_checkpoint(path) -> CheckpointInfo:
    """Classifies `path` (or a Hugging Face hub name, `hub.resolve`) and reads its BertConfig,
    vocabulary file and casing."""
    named = hub.resolve(path)  # named in the error as the user gave it
    path = as_path(named)
    if not path.exists():
        raise UserError(
            f"{named} not found: expected a Hugging Face BERT directory or a bert_jax workdir"
        )
    if (path / TASK_INFO).is_file():
        info = _check_task_info(read_json_object(path / TASK_INFO), path / TASK_INFO)
        vocab = path / VOCAB
        return CheckpointInfo(
            path=path,
            format=FINETUNED,
            bert_config=BertConfig.from_json_file(path / MODEL_CONFIG),
            vocab_file=vocab if vocab.is_file() else None,
            lowercase=info.get("lowercase"),
            task_info=info,
        )
    workdir = _pretraining_workdir(path)
    if workdir is not None:
        config_file = workdir / "config.json"
        config = read_json_object(config_file)
        data = _optional(config, "data", dict, config_file) or {}
        _optional(data, "vocab_file", str, config_file)
        _optional(data, "lowercase", bool, config_file)
        # The architecture only: the pretraining run's compute settings (bfloat16, remat, a GPU
        # attention kernel) are choices for its hardware, not properties of the weights.
        model = BertConfig.from_dict(config["model"], source=f"{config_file} (model)")
        bert_config = model.replace(
            dtype="float32", remat_policy="none", attention_implementation=None
        )
        return CheckpointInfo(
            path=path,
            format=BERT_JAX,
            bert_config=bert_config,
            vocab_file=_pretraining_vocab(workdir, data),
            lowercase=data.get("lowercase"),
        )
    if (path / "config.json").is_file():
        lowercase = None
        tokenizer_config = path / "tokenizer_config.json"
        if tokenizer_config.is_file():
            values = read_json_object(tokenizer_config, "a tokenizer config")
            lowercase = _optional(values, "do_lower_case", bool, tokenizer_config)
        vocab = path / VOCAB
        if not vocab.is_file():
            vocab = path / "tokenizer.json"  # ModernBERT's and other BPE tokenizers
        return CheckpointInfo(
            path=path,
            format=HUGGINGFACE,
            bert_config=hf.read_hf_config(path),
            vocab_file=vocab if vocab.is_file() else None,
            lowercase=lowercase,
        )
    raise UserError(
        f"{path}: neither a Hugging Face BERT directory (config.json + model.safetensors), a "
        "bert_jax pretraining workdir (config.json with 'model') nor a fine-tuned workdir "
        f"({TASK_INFO})"
    )


def load_tokenizer(
    info: CheckpointInfo, vocab_file="", lowercase: bool = True
) -> WordPieceTokenizer:
    """vocab_file when given (with `lowercase`), else the checkpoint's own vocabulary and casing;
    either must fit the model's embedding table (check_vocab_fits)."""
    if vocab_file:
        tokenizer = load_tokenizer_file(vocab_file, lowercase=lowercase)
        check_vocab_fits(tokenizer, info.bert_config, vocab_file)
        return tokenizer
    if info.vocab_file is None:
        raise UserError(
            f"{info.path} has no vocabulary ({VOCAB}); pass the one the model was trained with "
            "(--config.vocab_file=PATH, or vocab_file= for pipelines)"
        )
    casing = lowercase if info.lowercase is None else bool(info.lowercase)
    tokenizer = load_tokenizer_file(info.vocab_file, lowercase=casing)
    check_vocab_fits(tokenizer, info.bert_config, info.vocab_file)
    return tokenizer


def check_vocab_fits(tokenizer, bert_config: BertConfig, source) -> None:
    """A UserError when the tokenizer has more tokens than the model's vocab_size: ids past the
    embedding table read NaN (fine-tuning's loss, every embedding). Fewer is fine (pretraining
    allows padding the table, e.g. to a multiple of 128)."""
    if tokenizer.vocab_size > bert_config.vocab_size:
        raise UserError(
            f"{source} has {tokenizer.vocab_size} tokens but the model's vocab_size is only "
            f"{bert_config.vocab_size}; pass the matching vocabulary"
        )


def _place(tree, abstract):
    """Host arrays -> jax.Arrays laid out as `abstract` (ShapeDtypeStructs with shardings)."""

    def put(value, target):
        value = np.asarray(value, dtype=target.dtype)
        if value.shape != target.shape:
            raise UserError(
                f"parameter shape {value.shape} does not match the model's {target.shape}"
            )
        sharding = getattr(target, "sharding", None)
        if sharding is None:
            return jax.device_put(value)
        return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])

    return jax.tree.map(put, tree, abstract)


def _restore_params(directory: epath.Path, abstract) -> Any:
    """The 'params' item of the newest intact step under directory (a fine-tuning run's sealed
    best/ manager: its arrays are verified against the step's manifest)."""
    from bert_jax.checkpoints import checkpointing

    manager = SealedManager(directory, {"params": ocp.StandardCheckpointHandler()}, create=False)
    items = checkpointing.fitting_items(
        manager.step_dir, "params", abstract, f"the model {TASK_INFO} describes",
        f"Was {TASK_INFO} edited, or written by another version of bert_jax?",
    )  # fmt: skip
    try:
        newest = manager.restore_newest(items)
    finally:
        manager.close()
    if newest is None:
        raise UserError(
            f"{directory}: no intact checkpoint; has the fine-tuning run finished an evaluation?"
        )
    return newest[1]["params"]


def load_encoder(info: CheckpointInfo, abstract_encoder, *, announce: bool = True) -> dict:
    """The 'bert' subtree of any checkpoint format, placed like abstract_encoder.

    abstract_encoder: BertModel parameters as ShapeDtypeStructs (with shardings for a mesh).
    announce: say where the parameters came from (training runs; pipelines pass False).
    """
    if info.format == HUGGINGFACE:
        _, params = hf.load_hf_checkpoint(info.path, verbose=False)
        architecture = hf.task_architecture(info.path)
        if announce and architecture and not hf.TASK_ARCHITECTURES[architecture][1]:
            from bert_jax.checkpoints.checkpointing import _print_main

            _print_main(f"init_checkpoint: a {architecture} has no pooler; initialised fresh")
        return _place(params["bert"], abstract_encoder)
    if info.format == FINETUNED:
        sharding = getattr(jax.tree.leaves(abstract_encoder)[0], "sharding", None)
        if isinstance(sharding, jax.sharding.NamedSharding):  # the head is tiny: replicate it
            sharding = jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec())
        head_abstract = jax.tree.map(
            lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding),
            finetuned_head_abstract(info),
        )
        abstract = {"bert": abstract_encoder, **head_abstract}
        return _restore_params(info.path / BEST_DIR, abstract)["bert"]
    from bert_jax.checkpoints import checkpointing

    if not hasattr(checkpointing, "load_params_for_init"):
        raise UserError(f"{info.path}: this bert_jax version cannot read pretraining checkpoints")
    loaded = checkpointing.load_params_for_init(
        str(info.path), {"bert": abstract_encoder}, subtree=("bert",), announce=announce
    )
    return loaded["bert"]


def load_pretraining_params(info: CheckpointInfo, *, announce: bool = True) -> dict:
    """The whole BertForPreTraining tree (encoder and MLM/NSP heads) on the default device."""
    if info.format == HUGGINGFACE:
        return jax.device_put(hf.load_hf_checkpoint(info.path, need_mlm_head=True)[1])
    if info.format != BERT_JAX:
        raise UserError(f"{info.path}: a fine-tuned workdir has no masked-LM head")
    from bert_jax.checkpoints import checkpointing
    from bert_jax.model.modeling import BertForPreTraining

    model = BertForPreTraining(info.bert_config)
    ids = jax.ShapeDtypeStruct((1, 8), np.int32)
    abstract = meta.unbox(jax.eval_shape(lambda i: model.init(jax.random.key(0), i), ids)["params"])
    return checkpointing.load_params_for_init(
        str(info.path), abstract, subtree=(), announce=announce
    )


def finetuned_head_abstract(info: CheckpointInfo) -> dict:
    """The abstract head subtrees of a fine-tuned workdir: {classifier, and "crf" if any}."""
    from bert_jax.finetuning import tasks

    model = tasks.model_for(info.task_info, info.bert_config)
    ids = jax.ShapeDtypeStruct((1, 8), np.int32)
    abstract = jax.eval_shape(lambda i: model.init(jax.random.key(0), i, i, i), ids)["params"]
    return {name: tree for name, tree in meta.unbox(abstract).items() if name != "bert"}


def write_finetuned_files(workdir, task_info: dict, bert_config: BertConfig, tokenizer) -> None:
    workdir = as_path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / TASK_INFO).write_text(json.dumps(task_info, indent=2) + "\n")
    (workdir / MODEL_CONFIG).write_text(json.dumps(bert_config.to_dict(), indent=2) + "\n")
    tokenizer.save_vocab(workdir / VOCAB)


@dataclasses.dataclass
class FinetunedModel:
    """A fine-tuned workdir loaded for inference on the default device."""

    info: CheckpointInfo
    tokenizer: WordPieceTokenizer
    params: dict  # the whole task tree {'bert', head}

    @property
    def kind(self) -> str:
        return self.info.task_info["kind"]

    @property
    def label_list(self) -> list[str] | None:
        return self.info.task_info.get("label_list")


def load_finetuned(workdir) -> FinetunedModel:
    """A fine-tuned workdir's best parameters, tokenizer and task description; or a transformers
    task model folder (BertForSequenceClassification, -TokenClassification, -QuestionAnswering)
    with the task description its config.json implies."""
    info = inspect_checkpoint(workdir)
    if info.format == HUGGINGFACE:
        architecture = hf.task_architecture(info.path)
        if architecture is not None:
            info = dataclasses.replace(info, task_info=hf_task_info(info, architecture))
            tree = hf.load_hf_task_model(info.path, architecture, info.task_info["num_labels"])
            return FinetunedModel(info, load_tokenizer(info), jax.device_put(tree))
    if info.format != FINETUNED:
        raise UserError(
            f"{workdir}: not a fine-tuned workdir (no {TASK_INFO}) nor a transformers task model "
            f"({', '.join(hf.TASK_ARCHITECTURES)})"
        )
    from bert_jax.model.modeling import BertModel

    ids = jax.ShapeDtypeStruct((1, 8), np.int32)
    encoder = jax.eval_shape(lambda i: BertModel(info.bert_config).init(jax.random.key(0), i), ids)[
        "params"
    ]
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    abstract = {"bert": meta.unbox(encoder), **finetuned_head_abstract(info)}
    abstract = jax.tree.map(
        lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=device), abstract
    )
    params = _restore_params(info.path / BEST_DIR, abstract)
    return FinetunedModel(info=info, tokenizer=load_tokenizer(info), params=params)


def hf_task_info(info: CheckpointInfo, architecture: str) -> dict:
    """The task_info.json a fine-tuning run would have written for a transformers task model:
    its kind from the architecture and problem_type, its labels from id2label."""
    config_file = info.path / "config.json"
    values = read_json_object(config_file, "a Hugging Face config")
    problem_type = _optional(values, "problem_type", str, config_file)
    id2label = _optional(values, "id2label", dict, config_file) or {}
    if not all(isinstance(k, str) and k.isdigit() for k in id2label):
        raise UserError(f"{config_file}: id2label keys must be label ids, got {shown(id2label)}")
    labels = [id2label[k] for k in sorted(id2label, key=int)]
    if sorted(int(k) for k in id2label) != list(range(len(labels))):
        raise UserError(f"{config_file}: id2label must number its labels 0..n-1")
    from bert_jax.finetuning import tasks

    kind = tasks.for_hf_task_model(architecture, problem_type, len(labels))
    if not tasks.get(kind).uses_label_list:
        labels = None

    task_info = {
        "kind": kind,
        "head": hf.TASK_ARCHITECTURES[architecture][0],
        "label_list": labels,
        "num_labels": tasks.get(kind).num_labels(labels),
        "max_seq_length": min(int(info.bert_config.max_position_embeddings), MAX_POSITIONS),
        "crf": False,
        "head_window": 0,
        "constrained_decoding": False,
    }
    if info.lowercase is not None:
        task_info["lowercase"] = info.lowercase
    return _check_task_info(task_info, config_file)


def task_head(info: CheckpointInfo, kind: str, label_list, fresh: dict) -> dict:
    """The head fine-tuning starts from: `fresh` ({head name: tree, maybe "crf"}, placed), with
    the init checkpoint's own head instead when that is a task model (a transformers task-model
    folder or a fine-tuned workdir) of the same kind and labels. One line says which, and why."""
    from bert_jax.checkpoints.checkpointing import _print_main
    from bert_jax.finetuning import tasks

    if info.format == HUGGINGFACE:
        architecture = hf.task_architecture(info.path)
        theirs = hf_task_info(info, architecture) if architecture else None
    else:
        theirs = info.task_info if info.format == FINETUNED else None
    name = tasks.get(kind).head_name
    if theirs is None or name not in fresh:
        return fresh
    reason = None
    if theirs["kind"] != kind:
        reason = f"it was fine-tuned for {theirs['kind']}, not {kind}"
    elif theirs.get("label_list") != label_list:
        reason = f"its labels {theirs.get('label_list')} are not the task's {label_list}"
    else:
        if info.format == HUGGINGFACE:
            tree = hf.load_hf_task_model(info.path, architecture, theirs["num_labels"])
        else:
            tree = jax.device_get(load_finetuned(info.path).params)
        loaded = tree.get(theirs["head"])
        shapes = lambda t: jax.tree.map(np.shape, t)
        if loaded is None or shapes(loaded) != shapes(fresh[name]):
            reason = "its head's shapes are not this run's (another head_window?)"
    if reason is not None:
        _print_main(f"init_checkpoint: {name} head re-initialised: {reason}")
        return fresh
    _print_main(f"init_checkpoint: {name} head kept from {info.path} (its labels are the task's)")
    return {**fresh, name: _place(loaded, fresh[name])}
