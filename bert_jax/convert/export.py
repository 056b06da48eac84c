"""Export a pretraining workdir or any loadable checkpoint (`python -m bert_jax.export`): a
Hugging Face folder (safetensors, tokenizer files), a TF1 checkpoint, or a sentence-transformers
folder (the encoder with mean pooling). A fine-tuned workdir becomes the transformers task model
of its kind (BertForSequenceClassification, -TokenClassification, -QuestionAnswering)."""

from __future__ import annotations

import json
import pathlib

from absl import app, flags

from bert_jax import entry
from bert_jax.errors import UserError


def define_flags() -> None:
    """Defines the command's flags: called by its entry module, so importing this module
    for its functions defines none (absl flags are global to the process)."""
    global _OUT, _FORMAT, _ENCODER_ONLY
    _OUT = flags.DEFINE_string("out", None, "Directory to write.")
    _ENCODER_ONLY = flags.DEFINE_bool(
        "encoder_only",
        False,
        "A fine-tuned workdir: export the encoder alone (transformers BertModel), without the "
        "task head (needed when transformers cannot express the head, e.g. a CRF).",
    )
    _FORMAT = flags.DEFINE_enum(
        "format",
        "hf",
        ["hf", "tf1", "sentence-transformers"],
        "Hugging Face, Google TF1, or sentence-transformers (encoder + mean pooling).",
    )
    flags.mark_flag_as_required("out")


# The files `export` writes in the Hugging Face format (README and notebook list them so).
HF_FILES = ("config.json", "model.safetensors", "vocab.txt", "tokenizer_config.json")


def export(path, out, fmt: str = "hf", *, encoder_only: bool = False) -> pathlib.Path:
    """Loads the model at `path` (local, gs:// or a hub name) and writes it to the local
    directory `out` in `fmt`: a pretraining checkpoint as BertForPreTraining, a fine-tuned
    workdir as its transformers task model (its encoder alone as BertModel with encoder_only).
    Nothing is left in `out` when the export fails."""
    from bert_jax.checkpoints import pretrained
    from bert_jax.convert import hf
    from bert_jax.data.json_tokenizer import is_tokenizer_json

    info = pretrained.inspect_checkpoint(path)
    if fmt == "sentence-transformers":
        return export_sentence_transformers(info, out)
    finetuned = info.format == pretrained.FINETUNED
    if finetuned and fmt != "hf":
        raise UserError(
            f"{path} is a fine-tuned workdir: export it with --format=hf (its task model) or "
            "--format=sentence-transformers (its encoder with mean pooling)"
        )
    if encoder_only and not finetuned:
        raise UserError(f"--encoder_only applies to fine-tuned workdirs; {path} is not one")
    with hf.staged_directory(out) as scratch:
        if finetuned:
            _export_task_model(info, scratch, encoder_only)
        elif fmt == "hf":
            params = pretrained.load_pretraining_params(info)
            hf.save_hf_checkpoint(info.bert_config, params, scratch)
        else:
            from bert_jax.convert import tf1

            params = pretrained.load_pretraining_params(info)
            tf1.save_tf1_checkpoint(info.bert_config, params, scratch)
        json_tokenizer = info.vocab_file is not None and is_tokenizer_json(info.vocab_file)
        if fmt == "hf":
            write_tokenizer_config(info, scratch, json_tokenizer)
        if info.vocab_file is not None:  # local or gs://
            name = "tokenizer.json" if json_tokenizer else "vocab.txt"
            (scratch / name).write_bytes(info.vocab_file.read_bytes())
        else:
            print(f"warning: {path} names no vocabulary; copy its vocab.txt into {out} yourself")
    return pathlib.Path(out)


def write_tokenizer_config(info, out: pathlib.Path, json_tokenizer: bool) -> None:
    """tokenizer_config.json for the vocabulary of `info` (a vocab.txt or a tokenizer.json)."""
    from bert_jax.data.json_tokenizer import JsonTokenizer

    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast" if json_tokenizer else "BertTokenizer",
        # Longer inputs would run past the position table.
        "model_max_length": int(info.bert_config.max_position_embeddings),
    }
    if json_tokenizer:  # its specials, by the names bert_jax's tokenizer found them under
        tokenizer = JsonTokenizer.from_file(info.vocab_file)
        for role in ("pad", "unk", "cls", "sep", "mask"):
            tokenizer_config[f"{role}_token"] = tokenizer.vocab[getattr(tokenizer, f"{role}_id")]
    if info.lowercase is not None:
        tokenizer_config["do_lower_case"] = bool(info.lowercase)
    (out / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2) + "\n")


def lost_in_transformers(task_info: dict) -> list[str]:
    """What of a fine-tuned head transformers' task model of its kind cannot hold."""
    lost = []
    if task_info.get("crf"):
        lost.append("the CRF's transition scores (crf=True)")
    if int(task_info.get("head_window", 0)):
        lost.append(
            f"the head window (head_window={task_info['head_window']}: the classifier reads "
            "neighbouring positions)"
        )
    return lost


def _export_task_model(info, out: pathlib.Path, encoder_only: bool) -> None:
    from bert_jax.checkpoints import pretrained
    from bert_jax.convert import hf
    from bert_jax.finetuning import tasks

    task_info = info.task_info
    task_model = tasks.get(task_info["kind"]).hf_task_model  # None: the encoder is the model
    lost = lost_in_transformers(task_info)
    if lost and not encoder_only and task_model is not None:
        raise UserError(
            f"{info.path}: transformers cannot express {' and '.join(lost)}; exporting would "
            "lose it. Pass --encoder_only to export the encoder alone (as BertModel)"
        )
    params = pretrained.load_finetuned(info.path).params
    if encoder_only or task_model is None:
        hf.save_hf_encoder(info.bert_config, params["bert"], out)
        return
    architecture, problem_type = task_model
    rope = info.bert_config.position_embedding_type == "rope"
    if rope and architecture != "BertForSequenceClassification":
        raise UserError(
            f"{info.path}: a rotary (ModernBERT) {task_info['kind']} model has no transformers "
            "task model here (only sequence classification maps); pass --encoder_only"
        )
    labels = task_info.get("label_list") or [f"LABEL_{i}" for i in range(task_info["num_labels"])]
    task_config = {}
    if architecture != "BertForQuestionAnswering":
        task_config = {
            "id2label": {str(i): label for i, label in enumerate(labels)},
            "label2id": {label: i for i, label in enumerate(labels)},
        }
    if problem_type is not None:
        task_config["problem_type"] = problem_type
    if rope:
        from bert_jax.convert import modernbert

        modernbert.save_classifier(info.bert_config, params, out, task_config)
    else:
        hf.save_hf_task_model(info.bert_config, params, out, architecture, task_config)


def export_sentence_transformers(info, out) -> pathlib.Path:
    """The encoder of `info` (any format) as a sentence-transformers folder with mean pooling;
    its max_seq_length is a fine-tuned run's (per sentence for an embedding run), else 128."""
    import jax
    import numpy as np
    from flax.core import meta

    from bert_jax.checkpoints import pretrained
    from bert_jax.finetuning.tasks import embedding
    from bert_jax.model.modeling import BertModel

    if info.vocab_file is None:
        raise UserError(
            f"{info.path} names no vocabulary; a sentence-transformers folder needs one"
        )
    model = BertModel(info.bert_config)
    ids = jax.ShapeDtypeStruct((1, 8), np.int32)
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    abstract = jax.tree.map(
        lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=device),
        meta.unbox(jax.eval_shape(lambda i: model.init(jax.random.key(0), i), ids)["params"]),
    )
    encoder = pretrained.load_encoder(info, abstract)
    length = 128
    if info.task_info is not None:  # a fine-tuned workdir: the length it was trained at
        from bert_jax.finetuning import tasks

        length = int(info.task_info.get("max_seq_length", length))
        if isinstance(tasks.get(info.task_info["kind"]), embedding.Embedding):
            length = embedding.sentence_length(length)  # a row held two sentences
    return embedding.export_sentence_transformers(
        info.bert_config,
        encoder,
        info.vocab_file.read_text(encoding="utf-8"),
        out,
        lowercase=info.lowercase if info.lowercase is not None else True,
        max_seq_length=min(length, int(info.bert_config.max_position_embeddings)),
    )


def main(argv):
    if len(argv) != 2:
        raise app.UsageError(
            "usage: python -m bert_jax.export PATH --out DIR [--format=hf|tf1] [--encoder_only]"
        )
    entry.quiet_logging()
    entry.check_output_dir(_OUT.value, "--out")
    out = export(argv[1], _OUT.value, _FORMAT.value, encoder_only=_ENCODER_ONLY.value)
    print(f"exported {argv[1]} to {out} ({_FORMAT.value})")
