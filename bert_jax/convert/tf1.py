"""Original google-research/bert TensorFlow 1 checkpoints <-> bert_jax parameter trees.

A released model is a folder with bert_config.json, vocab.txt and `bert_model.ckpt.index` /
`bert_model.ckpt.data-*`. Variable names follow the Hugging Face names with `/` for `.`
(bert/encoder/layer_0/attention/self/query/kernel), so this module translates the Hugging Face
name table of `bert_jax.convert.hf` instead of keeping a second one. Kernels are [in, out] as in
Flax, except `cls/seq_relationship/output_weights`, which is [2, H].

Needs TensorFlow: `pip install -e ".[tf]"` in the repository (tensorflow-cpu is enough).
"""

from __future__ import annotations

import json
import os
import pathlib
import re

import numpy as np

from bert_jax.convert.hf import (
    architecture_fields,
    check_hf_tensors,
    iter_hf_tensors,
    params_from_hf_tensors,
    pretraining_mappings,
)
from bert_jax.errors import UserError
from bert_jax.model.modeling import BertConfig
from bert_jax.untrusted import MAX_JSON_BYTES, check_file_size, read_json_object

CONFIG_FILE = "bert_config.json"
CHECKPOINT_PREFIX = "bert_model.ckpt"

# Optimizer state and the step counter of google's run_pretraining.py: never model parameters.
_TRAINING_STATE = re.compile(r"(^|/)(adam_m|adam_v|global_step)$")

# Hugging Face names whose TF1 spelling does not follow the general rule in `tf1_name`.
_SPECIAL_NAMES = {
    "cls.predictions.bias": "cls/predictions/output_bias",
    "cls.seq_relationship.weight": "cls/seq_relationship/output_weights",
    "cls.seq_relationship.bias": "cls/seq_relationship/output_bias",
}

# google-research/bert's "gelu" is the tanh approximation (Hugging Face's "gelu_new"), and its
# modeling.py knows no other gelu spelling.
_TANH_GELUS = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")


def import_tensorflow():
    """TensorFlow, imported on first use and kept off the GPUs that JAX uses."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        import tensorflow as tf
    except ImportError as err:
        raise UserError(
            "reading or writing google-research/bert TF1 checkpoints needs TensorFlow; "
            'install it from the repository root with `pip install -e ".[tf]"`'
        ) from err
    try:
        tf.config.set_visible_devices([], "GPU")
    except RuntimeError:  # TensorFlow was already initialised by the caller; leave it as it is.
        pass
    return tf


def tf1_name(hf_name: str, is_linear_weight: bool) -> tuple[str, bool]:
    """A Hugging Face BERT parameter name -> (TF1 variable name, stored transposed vs HF)."""
    if hf_name in _SPECIAL_NAMES:
        # output_weights keeps the [out, in] layout of a Hugging Face Linear weight.
        return _SPECIAL_NAMES[hf_name], False
    *scope, leaf = re.sub(r"\.layer\.(\d+)\.", r".layer_\1.", hf_name).split(".")
    if scope[-1] == "LayerNorm":
        leaf = {"weight": "gamma", "bias": "beta"}[leaf]
    elif scope[-1].endswith("_embeddings"):
        return "/".join(scope), False
    elif is_linear_weight:
        return "/".join([*scope, "kernel"]), True
    return "/".join([*scope, leaf]), False


def tf1_mappings(config: BertConfig) -> list[tuple[str, str, bool]]:
    """(TF1 name, Hugging Face name, stored transposed vs HF) for all of BertForPreTraining."""
    mappings = []
    for hf_name, _, is_linear_weight in pretraining_mappings(config):
        tf_name, transposed = tf1_name(hf_name, is_linear_weight)
        mappings.append((tf_name, hf_name, transposed))
    return mappings


def config_from_tf1_dict(values: dict, source=None) -> BertConfig:
    """bert_config.json -> BertConfig; google's "gelu" becomes the tanh approximation it is."""
    values = architecture_fields(values)
    if values.get("hidden_act") == "gelu":
        values["hidden_act"] = "gelu_new"
    return BertConfig.from_dict(values, source=source)


def read_tf1_config(config_file) -> BertConfig:
    """A google-research/bert bert_config.json -> BertConfig (types and ranges checked)."""
    values = read_json_object(config_file, "a bert_config.json")
    return config_from_tf1_dict(values, source=config_file)


def tf1_config_dict(config: BertConfig) -> dict:
    """BertConfig -> the fields of google's bert_config.json."""
    act = "gelu" if config.hidden_act in _TANH_GELUS else config.hidden_act
    return {
        "attention_probs_dropout_prob": config.attention_probs_dropout_prob,
        "hidden_act": act,
        "hidden_dropout_prob": config.hidden_dropout_prob,
        "hidden_size": config.hidden_size,
        "initializer_range": config.initializer_range,
        "intermediate_size": config.intermediate_size,
        "max_position_embeddings": config.max_position_embeddings,
        "num_attention_heads": config.num_attention_heads,
        "num_hidden_layers": config.num_hidden_layers,
        "type_vocab_size": config.type_vocab_size,
        "vocab_size": config.vocab_size,
    }


def find_tf1_checkpoint(path) -> pathlib.Path:
    """A checkpoint prefix (.../bert_model.ckpt) or a folder holding one -> the prefix."""
    path = pathlib.Path(path)
    if path.with_name(path.name + ".index").is_file():
        return path
    if not path.is_dir():
        raise UserError(
            f"{path}: no TF1 checkpoint here; pass a folder with {CONFIG_FILE} and "
            f"{CHECKPOINT_PREFIX}.index / .data-*, or a checkpoint prefix such as "
            f".../{CHECKPOINT_PREFIX}"
        )
    if (path / f"{CHECKPOINT_PREFIX}.index").is_file():
        return path / CHECKPOINT_PREFIX
    state = path / "checkpoint"
    if state.is_file():  # written by tf.train.Saver: names the newest of several
        check_file_size(state, MAX_JSON_BYTES, "a TF checkpoint state file")
        text = state.read_text(encoding="utf-8", errors="replace")
        match = re.search(r'^model_checkpoint_path:\s*"(.*)"', text, re.MULTILINE)
        if match:
            prefix = path / match.group(1)
            if prefix.with_name(prefix.name + ".index").is_file():
                return prefix
    indexes = sorted(path.glob("*.index"))
    if len(indexes) == 1:
        return indexes[0].with_suffix("")
    if not indexes:
        raise UserError(f"{path}: no *.index file; not a TF1 checkpoint folder")
    raise UserError(
        f"{path}: several checkpoints ({', '.join(i.stem for i in indexes)}); "
        "pass the prefix of the one to read"
    )


def load_tf1_checkpoint(path, config_file=None, *, verbose: bool = True) -> tuple[BertConfig, dict]:
    """A google-research/bert TF1 checkpoint -> (BertConfig, BertForPreTraining params).

    Adam slots and global_step are skipped, and counted; other variables that are no BERT
    pretraining parameter (a fine-tuned classifier) are ignored and listed; missing heads are
    initialised freshly and reported, as by `load_hf_checkpoint`. Needs TensorFlow (the tf extra).

    Args:
        path: the checkpoint folder or prefix (`.../bert_model.ckpt`).
        config_file: its bert_config.json (default: beside the checkpoint).
        verbose: print what was skipped, ignored or initialised freshly.

    Returns:
        (config, params): the model's BertConfig and its BertForPreTraining parameter tree of
        float32 arrays (unsharded).

    Raises:
        UserError: no checkpoint or config there, TensorFlow missing, or variables whose names,
            shapes or dtypes do not match the config.
    """
    prefix = find_tf1_checkpoint(path)
    config_file = pathlib.Path(config_file) if config_file else prefix.parent / CONFIG_FILE
    if not config_file.is_file():
        raise UserError(
            f"{config_file} not found: a TF1 checkpoint needs its {CONFIG_FILE} "
            "(pass config_file= when it lives elsewhere)"
        )
    config = read_tf1_config(config_file)

    tf = import_tensorflow()
    try:
        reader = tf.train.load_checkpoint(str(prefix))
        shapes = reader.get_variable_to_shape_map()
        dtypes = reader.get_variable_to_dtype_map()
    except Exception as err:  # TensorFlow's errors for damaged index files vary
        raise UserError(f"{prefix}: cannot read TF1 checkpoint ({_first_line(err)})") from err
    stored = set(shapes)
    mappings = tf1_mappings(config)
    known = {tf_name for tf_name, _, _ in mappings}
    training_state = sorted(n for n in stored if _TRAINING_STATE.search(n))
    ignored = sorted(stored - known - set(training_state))
    source_names = {hf: tf_name for tf_name, hf, _ in mappings}
    # Names, shapes and dtypes are checked against the config before any tensor is read.
    check_hf_tensors(
        config,
        {
            hf_name: (
                tuple(reversed(shapes[tf_name])) if transposed else tuple(shapes[tf_name]),
                dtypes[tf_name].name,
            )
            for tf_name, hf_name, transposed in mappings
            if tf_name in stored
        },
        str(prefix),
        source_names,
    )

    weights = {}
    for tf_name, hf_name, transposed in mappings:
        if tf_name in stored:
            try:
                value = reader.get_tensor(tf_name)
            except Exception as err:  # a damaged data file: DataLossError, OutOfRangeError, ...
                raise UserError(
                    f"{prefix}: cannot read variable {tf_name} ({_first_line(err)})"
                ) from err
            weights[hf_name] = value.T if transposed else value
    if verbose and training_state:
        print(
            f"{prefix}: skipped {len(training_state)} optimizer/step variables (adam_m, "
            "adam_v, global_step)"
        )
    if verbose and ignored:
        print(
            f"{prefix}: ignored {len(ignored)} variables that are not BERT pretraining: {ignored}"
        )
    params = params_from_hf_tensors(
        config,
        weights,
        str(prefix),
        verbose=verbose,
        source_names=source_names,
    )
    return config, params


def _first_line(err: Exception) -> str:
    """TensorFlow's messages run over many lines; the first, cut short, says what broke."""
    lines = str(err).strip().splitlines()
    line = lines[0] if lines else type(err).__name__
    return line if len(line) <= 200 else line[:197] + "..."


def save_tf1_checkpoint(config: BertConfig, params: dict, path) -> pathlib.Path:
    """Writes folder `path` with bert_config.json and bert_model.ckpt.{index,data-00000-of-00001}.

    google-research/bert (`--init_checkpoint=path/bert_model.ckpt`) and `load_tf1_checkpoint` read
    it. Google's code computes "gelu" as the tanh approximation whatever the model was trained
    with; a hidden_act it does not know (e.g. silu) is written as is. Needs TensorFlow.

    Args:
        config: the model's BertConfig.
        params: a BertForPreTraining parameter tree.
        path: the folder to write (created if missing).

    Returns:
        The folder.
    """
    tf = import_tensorflow()
    directory = pathlib.Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    renames = {hf: (tf_name, t) for tf_name, hf, t in tf1_mappings(config)}
    tensors = {}
    for hf_name, value in iter_hf_tensors(config, params):
        tf_name, transposed = renames[hf_name]
        tensors[tf_name] = np.ascontiguousarray(value.T) if transposed else value
    names = sorted(tensors)
    prefix = directory / CHECKPOINT_PREFIX
    # SaveV2 is the op tf.compat.v1.train.Saver runs; calling it directly needs no graph.
    tf.raw_ops.SaveV2(
        prefix=str(prefix),
        tensor_names=names,
        shape_and_slices=[""] * len(names),
        tensors=[tf.constant(tensors[n]) for n in names],
    )
    (directory / "checkpoint").write_text(
        f'model_checkpoint_path: "{CHECKPOINT_PREFIX}"\n'
        f'all_model_checkpoint_paths: "{CHECKPOINT_PREFIX}"\n'
    )
    (directory / CONFIG_FILE).write_text(json.dumps(tf1_config_dict(config), indent=2) + "\n")
    return directory
