"""Export a pretraining workdir or any loadable checkpoint to a Hugging Face folder
(safetensors, tokenizer files) or a TF1 checkpoint (`python -m bert_jax.export`)."""

from __future__ import annotations

import json
import pathlib

from absl import app, flags

from bert_jax import entry

_OUT = flags.DEFINE_string("out", None, "Directory to write.")
_FORMAT = flags.DEFINE_enum("format", "hf", ["hf", "tf1"], "Hugging Face or Google TF1.")
flags.mark_flag_as_required("out")


def export(path, out, fmt: str = "hf") -> pathlib.Path:
    """Loads the BertForPreTraining parameters at `path` (local or gs://) and writes them to the
    local directory `out` in `fmt`."""
    from bert_jax.checkpoints import pretrained
    from bert_jax.convert import hf

    info = pretrained.inspect_checkpoint(path)
    params = pretrained.load_pretraining_params(info)
    out = pathlib.Path(out)
    if fmt == "hf":
        hf.save_hf_checkpoint(info.bert_config, params, out)
        tokenizer_config = {
            "tokenizer_class": "BertTokenizer",
            # Longer inputs would run past the position table.
            "model_max_length": int(info.bert_config.max_position_embeddings),
        }
        if info.lowercase is not None:
            tokenizer_config["do_lower_case"] = bool(info.lowercase)
        (out / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2) + "\n")
    else:
        from bert_jax.convert import tf1

        tf1.save_tf1_checkpoint(info.bert_config, params, out)
    if info.vocab_file is not None:  # local or gs://
        (out / "vocab.txt").write_bytes(info.vocab_file.read_bytes())
    else:
        print(f"warning: {path} names no vocabulary; copy its vocab.txt into {out} yourself")
    return out


def main(argv):
    if len(argv) != 2:
        raise app.UsageError("usage: python -m bert_jax.export PATH --out DIR [--format=hf|tf1]")
    entry.quiet_logging()
    entry.check_output_dir(_OUT.value, "--out")
    out = export(argv[1], _OUT.value, _FORMAT.value)
    print(f"exported {argv[1]} to {out} ({_FORMAT.value})")
