"""Hugging Face BERT checkpoints <-> bert_jax parameter trees.

Hugging Face stores `nn.Linear` weights as [out, in]; Flax kernels are [in, out], so kernels are
transposed both ways. Older checkpoints name LayerNorm parameters gamma/beta; both are read.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import pathlib
import shutil
import tempfile
from collections.abc import Iterator

import jax
import numpy as np
from flax import traverse_util

from bert_jax.errors import UserError
from bert_jax.model.modeling import (
    BertConfig,
    BertForPreTraining,
    is_vocab_param,
    pad_vocab_rows,
    trim_vocab_rows,
)
from bert_jax.untrusted import (
    check_file_size,
    checkpoint_byte_limit,
    read_json_object,
    shown,
)

# The modern-encoder BertConfig fields, which Hugging Face BERT has no place for.
MODERN_FIELDS = (
    "position_embedding_type",
    "ffn_type",
    "norm_type",
    "use_bias",
    "embedding_norm",
    "local_attention_window",
    "pooler",
)

# (Hugging Face name, bert_jax path, is a dense kernel that needs a transpose)
Mapping = tuple[str, tuple[str, ...], bool]


def _dense(hf: str, path: tuple[str, ...]) -> list[Mapping]:
    return [
        (f"{hf}.weight", (*path, "dense", "kernel"), True),
        (f"{hf}.bias", (*path, "dense", "bias"), False),
    ]


def _norm(hf: str, path: tuple[str, ...]) -> list[Mapping]:
    return [
        (f"{hf}.weight", (*path, "norm", "scale"), False),
        (f"{hf}.bias", (*path, "norm", "bias"), False),
    ]


def encoder_mappings(config: BertConfig, prefix: str = "bert.") -> list[Mapping]:
    """Names of BertModel's parameters; bert_jax paths are relative to the 'bert' subtree."""
    emb = ("embeddings",)
    maps: list[Mapping] = [
        (
            f"{prefix}embeddings.word_embeddings.weight",
            (*emb, "word_embeddings", "embedding"),
            False,
        ),
        (
            f"{prefix}embeddings.position_embeddings.weight",
            (*emb, "position_embeddings", "embedding"),
            False,
        ),
        (
            f"{prefix}embeddings.token_type_embeddings.weight",
            (*emb, "token_type_embeddings", "embedding"),
            False,
        ),
        *_norm(f"{prefix}embeddings.LayerNorm", (*emb, "LayerNorm")),
    ]
    for i in range(config.num_hidden_layers):
        hf = f"{prefix}encoder.layer.{i}."
        ours = ("encoder", f"layer_{i}")
        for proj in ("query", "key", "value"):
            maps += _dense(f"{hf}attention.self.{proj}", (*ours, "attention", proj))
        maps += _dense(f"{hf}attention.output.dense", (*ours, "attention", "output"))
        maps += _norm(f"{hf}attention.output.LayerNorm", (*ours, "attention_layer_norm"))
        maps += _dense(f"{hf}intermediate.dense", (*ours, "intermediate"))
        maps += _dense(f"{hf}output.dense", (*ours, "output"))
        maps += _norm(f"{hf}output.LayerNorm", (*ours, "output_layer_norm"))
    if config.pre_layer_norm:
        raise UserError("Hugging Face BERT is post-LN; a pre_layer_norm model has no HF equivalent")
    modern = [
        f"{f.name}={shown(getattr(config, f.name))}"
        for f in dataclasses.fields(BertConfig)
        if f.name in MODERN_FIELDS and getattr(config, f.name) != f.default
    ]
    if modern or not config.type_vocab_size:
        raise UserError(
            "Hugging Face BERT has no equivalent of "
            + ", ".join(modern or ["type_vocab_size=0"])
            + " (a rope model exports as ModernBERT)"
        )
    maps += _dense(f"{prefix}pooler.dense", ("pooler",))
    return maps


def pretraining_mappings(config: BertConfig) -> list[Mapping]:
    """All of BertForPreTraining: the encoder under 'bert' plus the MLM and NSP heads."""
    maps = [(hf, ("bert", *path), t) for hf, path, t in encoder_mappings(config)]
    maps += _dense("cls.predictions.transform.dense", ("mlm_transform",))
    maps += _norm("cls.predictions.transform.LayerNorm", ("mlm_layer_norm",))
    maps.append(("cls.predictions.bias", ("mlm_output_bias",), False))
    maps += _dense("cls.seq_relationship", ("nsp",))
    return maps


HEAD_PATHS = ("mlm_transform", "mlm_layer_norm", "mlm_output_bias", "nsp")
MLM_HEAD_PATHS = HEAD_PATHS[:3]
# transformers' task models: their head's name (the same in bert_jax's task trees), and whether
# the encoder keeps its pooler (token classification and QA build BertModel without one).
TASK_ARCHITECTURES = {
    "BertForSequenceClassification": ("classifier", True),
    "BertForTokenClassification": ("classifier", False),
    "BertForQuestionAnswering": ("qa_outputs", False),
}


def task_head_mappings(head: str) -> list[Mapping]:
    """A task model's head: one dense layer, the same name on both sides."""
    return _dense(head, (head,))


# safetensors dtype codes -> numpy names; parameters must be stored in one of _FLOAT_DTYPES.
_SAFETENSORS_DTYPES = {
    **{f"F{bits}": f"float{bits}" for bits in (16, 32, 64)},
    **{f"I{bits}": f"int{bits}" for bits in (8, 16, 32, 64)},
    **{f"U{bits}": f"uint{bits}" for bits in (8, 16, 32, 64)},
    "BF16": "bfloat16",
    "BOOL": "bool",
}
_FLOAT_DTYPES = frozenset({"float16", "bfloat16", "float32", "float64"})


def read_hf_weights(directory: pathlib.Path, config: BertConfig) -> dict[str, np.ndarray]:
    """The named tensors of model.safetensors or pytorch_model.bin, checked against `config`.

    The file is untrusted: its size is bounded by the config's parameter count, and the names,
    shapes and dtypes in its header are checked (`check_hf_tensors`) before any tensor is read.
    """
    safetensors_file = directory / "model.safetensors"
    torch_file = directory / "pytorch_model.bin"
    limit = checkpoint_byte_limit(config.num_parameters())
    if safetensors_file.exists():
        check = lambda specs: check_hf_tensors(config, specs, safetensors_file)
        return read_safetensors(safetensors_file, max_bytes=limit, check=check)
    if torch_file.exists():
        from bert_jax.convert.torch_pickle import load_torch_state_dict

        check = lambda specs: check_hf_tensors(config, specs, torch_file)
        return load_torch_state_dict(torch_file, max_bytes=limit, check=check)
    raise UserError(
        f"{directory}: no model.safetensors or pytorch_model.bin; "
        "point to a Hugging Face BERT directory saved with save_pretrained()"
    )


def read_safetensors(path, *, max_bytes: int, check=None) -> dict[str, np.ndarray]:
    """model.safetensors -> {name: array}; the safetensors library bounds-checks every offset.

    The file may hold at most max_bytes; check, when given, is called with {name: (shape, dtype
    name)} from the header before any tensor is read, and may raise a UserError.
    """
    from safetensors import safe_open

    check_file_size(path, max_bytes, "a safetensors file of this model")
    try:
        with safe_open(str(path), framework="numpy") as f:
            slices = {name: f.get_slice(name) for name in f.keys()}
            specs = {
                name: (tuple(s.get_shape()), _SAFETENSORS_DTYPES.get(s.get_dtype(), s.get_dtype()))
                for name, s in slices.items()
            }
            if check is not None:
                check(specs)
            return {name: f.get_tensor(name) for name in specs}
    except UserError:
        raise
    except Exception as err:  # safetensors raises its own error types
        raise UserError(f"{path}: cannot read safetensors file ({err})") from err


# BertConfig fields that say how bert_jax runs a model, not what the model is. A checkpoint's
# config never sets them: Hugging Face's "dtype" is the storage dtype of its weights, and loading a
# bfloat16-stored checkpoint must not switch the compute dtype.
RUNTIME_FIELDS = (
    "dtype",
    "param_dtype",
    "pre_layer_norm",
    "remat_policy",
    "attention_implementation",
)


def architecture_fields(values: dict) -> dict:
    return {k: v for k, v in values.items() if k not in RUNTIME_FIELDS}


def read_hf_config(directory) -> BertConfig:
    """config.json of a Hugging Face BERT directory -> BertConfig (types and ranges checked)."""
    path = pathlib.Path(directory) / "config.json"
    if not path.exists():
        raise UserError(f"{path} not found: a Hugging Face BERT directory needs config.json")
    values = read_json_object(path, "a Hugging Face config")
    model_type = values.get("model_type", "bert")
    if model_type == "modernbert":
        from bert_jax.convert import modernbert

        return modernbert.config_from_hf(values, path)
    if model_type != "bert":
        raise UserError(f"{path}: model_type is {shown(model_type)}, not 'bert' or 'modernbert'")
    position_embedding_type = values.get("position_embedding_type", "absolute")
    if position_embedding_type != "absolute":
        raise UserError(
            f"{path}: position_embedding_type is {shown(position_embedding_type)}; only "
            "'absolute' position embeddings are supported"
        )
    return BertConfig.from_dict(architecture_fields(values), source=path)


# Tensors a checkpoint may hold that are no parameter of ours: a buffer, and the MLM decoder that
# is tied to the word embeddings (its bias is `cls.predictions.bias`).
_DERIVED_NAMES = ("position_ids", "cls.predictions.decoder.weight", "cls.predictions.decoder.bias")


def _lookup(weights: dict[str, np.ndarray], name: str) -> str | None:
    """The name under which `weights` holds HF parameter `name` (prefix and gamma/beta tolerant)."""
    candidates = [name, name.removeprefix("bert.")]
    if name.endswith("LayerNorm.weight"):
        candidates += [c[: -len("weight")] + "gamma" for c in list(candidates)]
    if name.endswith("LayerNorm.bias"):
        candidates += [c[: -len("bias")] + "beta" for c in list(candidates)]
    return next((c for c in candidates if c in weights), None)


@functools.lru_cache(maxsize=8)
def _model_shapes(config: BertConfig) -> dict[tuple[str, ...], jax.ShapeDtypeStruct]:
    """bert_jax path -> shape and dtype of each BertForPreTraining parameter (none allocated)."""
    return traverse_util.flatten_dict(
        jax.eval_shape(lambda: init_params(config, jax.random.key(0)))
    )


def check_hf_tensors(
    config: BertConfig,
    specs: dict[str, tuple[tuple[int, ...], str]],
    source,
    source_names: dict[str, str] | None = None,
) -> None:
    """Checks {name: (shape, dtype name)} of a checkpoint before its tensors are read.

    Every tensor the model takes must have the shape its config implies (compared in bert_jax's
    layout) and a floating-point dtype; other tensors are left alone (they are reported as
    ignored). `source_names` (HF name -> name in the checkpoint) spells names in messages.
    """
    spelled = lambda name: (source_names or {}).get(name, name)
    shapes = _model_shapes(config)
    for hf_name, ours, transpose in pretraining_mappings(config):
        found = _lookup(specs, hf_name)
        if found is None or ours not in shapes:
            continue
        shape, dtype = specs[found]
        shape = tuple(reversed(shape)) if transpose else tuple(shape)
        expected = shapes[ours].shape
        if is_vocab_param(ours):  # checkpoints hold vocab_size rows; bert_jax pads them
            expected = (config.vocab_size, *expected[1:])
        if shape != expected:
            raise UserError(
                f"{source}: parameter {spelled(found)} (bert_jax {'/'.join(ours)}) has shape "
                f"{shape}, but its config implies {expected}"
            )
        if dtype not in _FLOAT_DTYPES:
            raise UserError(
                f"{source}: parameter {spelled(found)} is stored as {dtype}; BERT weights are "
                f"floating point ({', '.join(sorted(_FLOAT_DTYPES))})"
            )


def params_from_hf_tensors(
    config: BertConfig,
    weights: dict[str, np.ndarray],
    source: str,
    *,
    verbose: bool = True,
    source_names: dict[str, str] | None = None,
    need_mlm_head: bool = False,
) -> dict:
    """Hugging Face named tensors (Linear weights [out, in]) -> BertForPreTraining params.

    The whole encoder must be present; absent heads are initialised freshly (with need_mlm_head,
    an absent masked-LM head is a UserError instead). What was initialised and which tensors were
    ignored are printed when `verbose`. `source` names the checkpoint in messages, and
    `source_names` (HF name -> name in that checkpoint) how it spells parameters.
    """
    check_hf_tensors(
        config,
        {name: (value.shape, str(value.dtype)) for name, value in weights.items()},
        source,
        source_names,
    )
    spelled = lambda name: (source_names or {}).get(name, name)
    flat: dict[tuple[str, ...], np.ndarray] = {}
    names: dict[tuple[str, ...], str] = {}
    missing_encoder = []
    for hf_name, ours, transpose in pretraining_mappings(config):
        found = _lookup(weights, hf_name)
        if found is None:
            # transformers' token-classification and QA models have no pooler: initialised.
            if ours[0] == "bert" and ours[1] != "pooler":
                missing_encoder.append(spelled(hf_name))
            continue
        value = weights[found]
        flat[ours] = np.ascontiguousarray(value.T if transpose else value).astype(np.float32)
        if is_vocab_param(ours) and flat[ours].shape[0] == config.vocab_size:
            flat[ours] = pad_vocab_rows(config, flat[ours])  # bert_jax's zero padding rows
        names[ours] = found
    if missing_encoder:
        raise UserError(
            f"{source}: not a complete BERT encoder; missing {len(missing_encoder)} "
            f"parameters, e.g. {missing_encoder[:3]}"
        )
    shapes = _model_shapes(config)
    initialised = [k for k in shapes if k not in flat]
    if need_mlm_head and any(k[0] in MLM_HEAD_PATHS for k in initialised):
        has_nsp = ("nsp", "dense", "kernel") in flat
        held = "an encoder and a next-sentence head" if has_nsp else "an encoder"
        raise UserError(
            f"{source}: no masked-LM head (the checkpoint holds {held} only); fill-mask needs a "
            "BertForMaskedLM / BertForPreTraining checkpoint or a bert_jax pretraining run "
            "(for sentence vectors use pipeline('sentence-embedding', ...))"
        )
    used = set(names.values())
    ignored = sorted(n for n in weights if n not in used and not n.endswith(_DERIVED_NAMES))
    if initialised:
        fresh = traverse_util.flatten_dict(init_params(config, jax.random.key(0)))
        flat.update({k: np.asarray(fresh[k]) for k in initialised})
        if verbose:
            listed = ", ".join(sorted("/".join(k) for k in initialised))
            print(f"{source}: no {listed} in the checkpoint; initialised fresh")
    if verbose and ignored:
        print(f"{source}: ignored {len(ignored)} tensors that are not BERT pretraining: {ignored}")
    return traverse_util.unflatten_dict(flat)


def load_hf_checkpoint(
    path, *, verbose: bool = True, need_mlm_head: bool = False
) -> tuple[BertConfig, dict]:
    """A Hugging Face BERT directory -> (BertConfig, BertForPreTraining params).

    Names are accepted with or without the `bert.` prefix. Heads absent from the checkpoint (a
    BertModel-only checkpoint has no MLM/NSP heads) are initialised freshly and reported, as are
    tensors that are ignored (e.g. a fine-tuned classifier). Nothing is unpickled: a
    pytorch_model.bin is read by bert_jax's own bounded reader.

    Args:
        path: a directory with config.json and model.safetensors or pytorch_model.bin.
        verbose: print what was initialised freshly or ignored.
        need_mlm_head: refuse a checkpoint without a masked-LM head instead of initialising one.

    Returns:
        (config, params): the model's BertConfig and its BertForPreTraining parameter tree of
        float32 arrays (unsharded).

    Raises:
        UserError: not a directory, or a config or tensor that is missing, malformed or of the
            wrong shape.
    """
    directory = pathlib.Path(path)
    if not directory.is_dir():
        raise UserError(f"{directory}: not a directory; expected a Hugging Face BERT checkpoint")
    config = read_hf_config(directory)
    if config.position_embedding_type == "rope":  # ModernBERT
        from bert_jax.convert import modernbert

        params = modernbert.load_checkpoint(
            directory, config, verbose=verbose, need_mlm_head=need_mlm_head
        )
        return config, params
    weights = read_hf_weights(directory, config)
    return config, params_from_hf_tensors(
        config, weights, str(directory), verbose=verbose, need_mlm_head=need_mlm_head
    )


def init_params(config: BertConfig, rng) -> dict:
    """Unsharded float32 BertForPreTraining parameters (plain arrays, no partitioning boxes)."""
    model = BertForPreTraining(config)
    ids = np.zeros((1, 8), np.int32)
    variables = jax.jit(lambda r: model.init(r, ids, masked_lm_positions=ids[:, :2]))(rng)
    from flax.core import meta

    return meta.unbox(variables["params"])


def iter_hf_tensors(config: BertConfig, params: dict) -> Iterator[tuple[str, np.ndarray]]:
    """BertForPreTraining params -> Hugging Face names and [out, in] arrays."""
    flat = traverse_util.flatten_dict(params)
    for hf_name, ours, transpose in pretraining_mappings(config):
        if ours not in flat:
            raise UserError(f"parameter {'/'.join(ours)} missing from the tree being exported")
        value = np.asarray(jax.device_get(flat[ours]), dtype=np.float32)
        if is_vocab_param(ours):
            value = trim_vocab_rows(config, value)  # drop bert_jax's padding rows
        yield hf_name, np.ascontiguousarray(value.T if transpose else value)


def hf_config_dict(config: BertConfig) -> dict:
    values = architecture_fields(config.to_dict())
    values.update(
        model_type="bert",
        architectures=["BertForPreTraining"],
        pad_token_id=0,
        position_embedding_type="absolute",
        torch_dtype="float32",
    )
    return values


def save_hf_checkpoint(config: BertConfig, params: dict, path) -> pathlib.Path:
    """Writes a checkpoint that transformers.BertForPreTraining loads.

    Args:
        config: the model's BertConfig.
        params: a BertForPreTraining parameter tree (as `load_hf_checkpoint` returns it).
        path: the directory to write (created if missing).

    Returns:
        The directory, now holding config.json and model.safetensors (a rope model: a
        transformers.ModernBertForMaskedLM directory).

    Raises:
        UserError: `params` is not a BertForPreTraining tree (e.g. a fine-tuned task tree: see
            `save_hf_task_model`); nothing is written then.
    """
    if config.position_embedding_type == "rope":
        from bert_jax.convert import modernbert

        return modernbert.save_checkpoint(config, params, path)
    return _write_hf_directory(config, dict(iter_hf_tensors(config, params)), path)


def save_hf_encoder(config: BertConfig, encoder: dict, path) -> pathlib.Path:
    """Writes the encoder alone ('bert' subtree) as a transformers.BertModel directory (a rope
    model: ModernBertModel)."""
    if config.position_embedding_type == "rope":
        from bert_jax.convert import modernbert

        return modernbert.save_encoder(config, encoder, path)
    tensors = _hf_tensors(config, encoder, encoder_mappings(config, prefix=""))
    return _write_hf_directory(config, tensors, path, architecture="BertModel")


def _hf_tensors(config: BertConfig, tree: dict, mappings: list[Mapping]) -> dict[str, np.ndarray]:
    flat = traverse_util.flatten_dict(tree)
    tensors = {}
    for hf_name, ours, transpose in mappings:
        if ours not in flat:
            raise UserError(f"parameter {'/'.join(ours)} missing from the tree being exported")
        value = np.asarray(jax.device_get(flat[ours]), dtype=np.float32)
        if is_vocab_param(ours):
            value = trim_vocab_rows(config, value)
        tensors[hf_name] = np.ascontiguousarray(value.T if transpose else value)
    return tensors


def save_hf_task_model(
    config: BertConfig, params: dict, path, architecture: str, task_config: dict
) -> pathlib.Path:
    """Writes a fine-tuned tree {'bert', head} as a transformers task model.

    architecture: a key of TASK_ARCHITECTURES; task_config: what config.json adds for it
    (num_labels, id2label, label2id, problem_type).
    """
    head, pooler = TASK_ARCHITECTURES[architecture]
    maps = [(f"bert.{n}", ("bert", *p), t) for n, p, t in encoder_mappings(config, prefix="")]
    maps = [m for m in maps if pooler or m[1][1] != "pooler"] + task_head_mappings(head)
    tensors = _hf_tensors(config, params, maps)
    return _write_hf_directory(config, tensors, path, architecture, task_config)


def task_architecture(directory) -> str | None:
    """The transformers task model config.json names (TASK_ARCHITECTURES), else None."""
    values = read_json_object(pathlib.Path(directory) / "config.json", "a Hugging Face config")
    names = values.get("architectures")
    names = names if isinstance(names, list) else []
    return next((n for n in names if n in TASK_ARCHITECTURES), None)


def load_hf_task_model(path, architecture: str, num_labels: int) -> dict:
    """A transformers task model directory -> bert_jax's task tree {'bert', head} (float32)."""
    directory = pathlib.Path(path)
    config = read_hf_config(directory)
    weights = read_hf_weights(directory, config)
    head, _ = TASK_ARCHITECTURES[architecture]
    tree = traverse_util.flatten_dict({"bert": params_from_hf_tensors(
        config, weights, str(directory), verbose=False
    )["bert"]})  # fmt: skip
    width = {"classifier": (config.hidden_size, num_labels), "qa_outputs": (config.hidden_size, 2)}
    for hf_name, ours, transpose in task_head_mappings(head):
        if hf_name not in weights:
            raise UserError(f"{directory}: {architecture} without its head tensor {hf_name}")
        value = np.asarray(weights[hf_name], np.float32)
        value = value.T if transpose else value
        expected = width[head] if transpose else width[head][1:]
        if value.shape != expected:
            raise UserError(
                f"{directory}: {hf_name} has shape {value.T.shape if transpose else value.shape}"
                f", but its config implies {tuple(reversed(expected))}"
            )
        tree[ours] = np.ascontiguousarray(value)
    return traverse_util.unflatten_dict(tree)


@contextlib.contextmanager
def staged_directory(path) -> Iterator[pathlib.Path]:
    """A scratch folder beside `path` to write into; on success its files move into `path`
    (created if missing), on any error it is removed and `path` is left as it was."""
    directory = pathlib.Path(path)
    directory.parent.mkdir(parents=True, exist_ok=True)
    scratch = pathlib.Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        yield scratch
        directory.mkdir(exist_ok=True)
        for item in scratch.iterdir():
            os.replace(item, directory / item.name)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _write_hf_directory(
    config: BertConfig,
    tensors: dict,
    path,
    architecture: str = "BertForPreTraining",
    extra_config: dict | None = None,
) -> pathlib.Path:
    values = {**hf_config_dict(config), "architectures": [architecture], **(extra_config or {})}
    return write_hf_directory(tensors, values, path)


def write_hf_directory(tensors: dict, values: dict, path) -> pathlib.Path:
    """model.safetensors of `tensors` and config.json of `values` in the directory `path`."""
    from safetensors.numpy import save_file

    with staged_directory(path) as scratch:
        weights = scratch / "model.safetensors"
        save_file(tensors, str(weights), metadata={"format": "pt"})
        # safetensors creates the file private (0600); give it the permissions of any new file.
        umask = os.umask(0)
        os.umask(umask)
        weights.chmod(0o666 & ~umask)
        (scratch / "config.json").write_text(json.dumps(values, indent=2) + "\n")
    return pathlib.Path(path)
