"""Hugging Face BERT checkpoints <-> bert_jax parameter trees.

Hugging Face stores `nn.Linear` weights as [out, in]; Flax kernels are [in, out], so kernels are
transposed both ways. Older checkpoints name LayerNorm parameters gamma/beta; both are read.
"""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Iterator

import jax
import numpy as np
from flax import traverse_util

from bert_jax.errors import UserError
from bert_jax.modeling import BertConfig, BertForPreTraining

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


def _read_weights(directory: pathlib.Path) -> dict[str, np.ndarray]:
    safetensors_file = directory / "model.safetensors"
    torch_file = directory / "pytorch_model.bin"
    if safetensors_file.exists():
        from safetensors.numpy import load_file

        try:
            return load_file(str(safetensors_file))
        except Exception as err:  # safetensors raises its own error types
            raise UserError(f"{safetensors_file}: cannot read safetensors file ({err})") from err
    if torch_file.exists():
        from bert_jax.convert.torch_pickle import load_torch_state_dict

        return load_torch_state_dict(torch_file)
    raise UserError(
        f"{directory}: no model.safetensors or pytorch_model.bin; "
        "point to a Hugging Face BERT directory saved with save_pretrained()"
    )


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
    """config.json of a Hugging Face BERT directory -> BertConfig."""
    path = pathlib.Path(directory) / "config.json"
    if not path.exists():
        raise UserError(f"{path} not found: a Hugging Face BERT directory needs config.json")
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise UserError(f"{path}: not valid JSON ({err})") from err
    model_type = values.get("model_type", "bert")
    if model_type != "bert":
        raise UserError(f"{path}: model_type is {model_type!r}, not 'bert'")
    if values.get("position_embedding_type", "absolute") != "absolute":
        raise UserError(f"{path}: only absolute position embeddings are supported")
    return BertConfig.from_dict(architecture_fields(values))


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


def params_from_hf_tensors(
    config: BertConfig,
    weights: dict[str, np.ndarray],
    source: str,
    *,
    verbose: bool = True,
    source_names: dict[str, str] | None = None,
) -> dict:
    """Hugging Face named tensors (Linear weights [out, in]) -> BertForPreTraining params.

    The whole encoder must be present; absent heads are initialised freshly. What was initialised
    and which tensors were ignored are printed when `verbose`. `source` names the checkpoint in
    messages, and `source_names` (HF name -> name in that checkpoint) how it spells parameters.
    """
    spelled = lambda name: (source_names or {}).get(name, name)
    flat: dict[tuple[str, ...], np.ndarray] = {}
    names: dict[tuple[str, ...], str] = {}
    missing_encoder = []
    for hf_name, ours, transpose in pretraining_mappings(config):
        found = _lookup(weights, hf_name)
        if found is None:
            if ours[0] == "bert":
                missing_encoder.append(spelled(hf_name))
            continue
        value = weights[found]
        flat[ours] = np.ascontiguousarray(value.T if transpose else value).astype(np.float32)
        names[ours] = found
    if missing_encoder:
        raise UserError(
            f"{source}: not a complete BERT encoder; missing {len(missing_encoder)} "
            f"parameters, e.g. {missing_encoder[:3]}"
        )
    shapes = traverse_util.flatten_dict(
        jax.eval_shape(lambda: init_params(config, jax.random.key(0)))
    )
    for key, expected in shapes.items():
        if key in flat and flat[key].shape != expected.shape:
            raise UserError(
                f"{source}: parameter {spelled(names[key])} (bert_jax {'/'.join(key)}) has shape "
                f"{flat[key].shape}, but its config implies {expected.shape}"
            )
    initialised = [k for k in shapes if k not in flat]
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


def load_hf_checkpoint(path, *, verbose: bool = True) -> tuple[BertConfig, dict]:
    """A Hugging Face BERT directory -> (BertConfig, BertForPreTraining params).

    Names are accepted with or without the `bert.` prefix. Heads absent from the checkpoint (a
    BertModel-only checkpoint has no MLM/NSP heads) are initialised freshly and reported, as are
    tensors that are ignored (e.g. a fine-tuned classifier).
    """
    directory = pathlib.Path(path)
    if not directory.is_dir():
        raise UserError(f"{directory}: not a directory; expected a Hugging Face BERT checkpoint")
    config = read_hf_config(directory)
    return config, params_from_hf_tensors(
        config, _read_weights(directory), str(directory), verbose=verbose
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
    """Writes config.json + model.safetensors loadable by transformers.BertForPreTraining."""
    from safetensors.numpy import save_file

    directory = pathlib.Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = dict(iter_hf_tensors(config, params))
    weights = directory / "model.safetensors"
    save_file(tensors, str(weights), metadata={"format": "pt"})
    # safetensors creates the file private (0600); give it the permissions of any new file.
    umask = os.umask(0)
    os.umask(umask)
    weights.chmod(0o666 & ~umask)
    (directory / "config.json").write_text(json.dumps(hf_config_dict(config), indent=2) + "\n")
    return directory
