"""Export a pretraining workdir or any loadable checkpoint (`python -m bert_jax.export`): a
Hugging Face folder (safetensors, tokenizer files), a TF1 checkpoint, or a sentence-transformers
folder (the encoder with mean pooling)."""

from __future__ import annotations

import json
import pathlib

from absl import app, flags

from bert_jax import entry
from bert_jax.errors import UserError


def define_flags() -> None:
    """Defines the command's flags: called by its entry module, so importing this module
    for its functions defines none (absl flags are global to the process)."""
    global _OUT, _FORMAT
    _OUT = flags.DEFINE_string("out", None, "Directory to write.")
    _FORMAT = flags.DEFINE_enum(
        "format",
        "hf",
        ["hf", "tf1", "sentence-transformers"],
        "Hugging Face, Google TF1, or sentence-transformers (encoder + mean pooling).",
    )
    flags.mark_flag_as_required("out")


def export(path, out, fmt: str = "hf") -> pathlib.Path:
    """Loads the BertForPreTraining parameters at `path` (local or gs://) and writes them to the
    local directory `out` in `fmt`."""
    from bert_jax.checkpoints import pretrained
    from bert_jax.convert import hf
    from bert_jax.data.json_tokenizer import JsonTokenizer, is_tokenizer_json

    info = pretrained.inspect_checkpoint(path)
    if fmt == "sentence-transformers":
        return export_sentence_transformers(info, out)
    params = pretrained.load_pretraining_params(info)
    out = pathlib.Path(out)
    json_tokenizer = info.vocab_file is not None and is_tokenizer_json(info.vocab_file)
    if fmt == "hf":
        hf.save_hf_checkpoint(info.bert_config, params, out)
        tokenizer_config = {
            "tokenizer_class": "PreTrainedTokenizerFast" if json_tokenizer else "BertTokenizer",
            # Longer inputs would run past the position table.
            "model_max_length": int(info.bert_config.max_position_embeddings),
        }
        if json_tokenizer:  # its specials, by the names bert_jax's tokenizer found them under
            tokenizer = JsonTokenizer.from_file(info.vocab_file)
            for role in ("pad", "unk", "cls", "sep", "mask"):
                token_id = getattr(tokenizer, f"{role}_id")
                tokenizer_config[f"{role}_token"] = tokenizer.vocab[token_id]
        if info.lowercase is not None:
            tokenizer_config["do_lower_case"] = bool(info.lowercase)
        (out / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2) + "\n")
    else:
        from bert_jax.convert import tf1

        tf1.save_tf1_checkpoint(info.bert_config, params, out)
    if info.vocab_file is not None:  # local or gs://
        name = "tokenizer.json" if json_tokenizer else "vocab.txt"
        (out / name).write_bytes(info.vocab_file.read_bytes())
    else:
        print(f"warning: {path} names no vocabulary; copy its vocab.txt into {out} yourself")
    return out


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
        raise app.UsageError("usage: python -m bert_jax.export PATH --out DIR [--format=hf|tf1]")
    entry.quiet_logging()
    entry.check_output_dir(_OUT.value, "--out")
    out = export(argv[1], _OUT.value, _FORMAT.value)
    print(f"exported {argv[1]} to {out} ({_FORMAT.value})")
