"""Hugging Face ModernBERT checkpoints (model_type "modernbert") <-> bert_jax parameter trees.

ModernBertModel / ModernBertForMaskedLM / ModernBertForSequenceClassification are a BertConfig
with the modern options (rotary, GeGLU, pre-LN with embedding norm, local windows, no token
types). HF's fused Wqkv [3H, H] and Wi [2F, H] are split into query/key/value and
intermediate/gate kernels; `convert/hf.py` dispatches here on config.json's model_type.
"""

from __future__ import annotations

import pathlib

import jax
import numpy as np
from flax import traverse_util

from bert_jax.errors import UserError
from bert_jax.model.modeling import BertConfig, is_vocab_param, pad_vocab_rows, trim_vocab_rows
from bert_jax.untrusted import checkpoint_byte_limit, shown

# (Hugging Face name, the bert_jax paths its rows split into, in order)
Mapping = tuple[str, tuple[tuple[str, ...], ...]]

_GELUS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "gelu_fast")


def _linear(hf: str, paths: list[tuple[str, ...]], bias: bool) -> list[Mapping]:
    maps = [(f"{hf}.weight", tuple((*p, "dense", "kernel") for p in paths))]
    if bias:
        maps.append((f"{hf}.bias", tuple((*p, "dense", "bias") for p in paths)))
    return maps


def _norm(hf: str, path: tuple[str, ...], bias: bool) -> list[Mapping]:
    maps = [(f"{hf}.weight", ((*path, "norm", "scale"),))]
    if bias:
        maps.append((f"{hf}.bias", ((*path, "norm", "bias"),)))
    return maps


def encoder_mappings(config: BertConfig, prefix: str = "model.") -> list[Mapping]:
    """ModernBertModel's parameters; bert_jax paths relative to the 'bert' subtree."""
    b = config.use_bias
    emb = ("embeddings",)
    maps: list[Mapping] = [
        (f"{prefix}embeddings.tok_embeddings.weight", ((*emb, "word_embeddings", "embedding"),)),
        *_norm(f"{prefix}embeddings.norm", (*emb, "LayerNorm"), b),
    ]
    for i in range(config.num_hidden_layers):
        hf, ours = f"{prefix}layers.{i}.", ("encoder", f"layer_{i}")
        if i:
            maps += _norm(f"{hf}attn_norm", (*ours, "attention_layer_norm"), b)
        qkv = [(*ours, "attention", name) for name in ("query", "key", "value")]
        maps += _linear(f"{hf}attn.Wqkv", qkv, b)
        maps += _linear(f"{hf}attn.Wo", [(*ours, "attention", "output")], b)
        maps += _norm(f"{hf}mlp_norm", (*ours, "output_layer_norm"), b)
        maps += _linear(f"{hf}mlp.Wi", [(*ours, "intermediate"), (*ours, "gate")], b)
        maps += _linear(f"{hf}mlp.Wo", [(*ours, "output")], b)
    maps += _norm(f"{prefix}final_norm", ("encoder", "final_layer_norm"), b)
    return maps


def masked_lm_mappings(config: BertConfig) -> list[Mapping]:
    """ModernBertForMaskedLM: the encoder under 'bert', the head and the decoder's bias."""
    maps = [(hf, tuple(("bert", *p) for p in paths)) for hf, paths in encoder_mappings(config)]
    maps += _linear("head.dense", [("mlm_transform",)], config.use_bias)
    maps += _norm("head.norm", ("mlm_layer_norm",), config.use_bias)
    maps.append(("decoder.bias", (("mlm_output_bias",),)))
    return maps


def classifier_mappings(config: BertConfig) -> list[Mapping]:
    """ModernBertForSequenceClassification: the encoder, the head (our pooler) and classifier."""
    maps = [(hf, tuple(("bert", *p) for p in paths)) for hf, paths in encoder_mappings(config)]
    maps += _linear("head.dense", [("bert", "pooler")], config.use_bias)
    maps += _norm("head.norm", ("bert", "pooler_norm"), config.use_bias)
    maps += _linear("classifier", [("classifier",)], True)
    return maps


def config_from_hf(values: dict, source) -> BertConfig:
    """A ModernBERT config.json dict -> BertConfig (what bert_jax cannot express is an error)."""
    biases = {k: values.get(k, False) for k in ("attention_bias", "mlp_bias", "norm_bias")}
    biases["classifier_bias"] = values.get("classifier_bias", False)
    if len(set(biases.values())) != 1:
        raise UserError(
            f"{source}: biases on for some layers only ({biases}); bert_jax's use_bias is one "
            "switch for all"
        )
    if values.get("rope_scaling") not in (None, {}):
        raise UserError(f"{source}: rope_scaling {shown(values['rope_scaling'])} is not supported")
    act = values.get("hidden_activation", "gelu")
    head_act = values.get("classifier_activation", "gelu")
    if act in ("silu", "swish"):
        ffn_type, hidden_act = "swiglu", head_act
    elif act == head_act and act in _GELUS:
        ffn_type, hidden_act = "geglu", act
    else:
        raise UserError(
            f"{source}: hidden_activation {shown(act)} with classifier_activation "
            f"{shown(head_act)}: bert_jax takes a GELU for both, or silu (SwiGLU) with any"
        )
    pooling = values.get("classifier_pooling", "cls")
    if pooling not in ("cls", "mean"):
        raise UserError(f"{source}: classifier_pooling {shown(pooling)} is not cls or mean")
    fields = dict(
        vocab_size=values.get("vocab_size"),
        hidden_size=values.get("hidden_size"),
        num_hidden_layers=values.get("num_hidden_layers"),
        num_attention_heads=values.get("num_attention_heads"),
        intermediate_size=values.get("intermediate_size"),
        hidden_act=hidden_act,
        hidden_dropout_prob=max(
            values.get("embedding_dropout", 0.0), values.get("mlp_dropout", 0.0)
        ),
        attention_probs_dropout_prob=values.get("attention_dropout", 0.0),
        max_position_embeddings=values.get("max_position_embeddings"),
        type_vocab_size=0,
        initializer_range=values.get("initializer_range", 0.02),
        layer_norm_eps=values.get("norm_eps", 1e-5),
        pre_layer_norm=True,
        position_embedding_type="rope",
        rope_theta=values.get("global_rope_theta", 160000.0),
        local_rope_theta=values.get("local_rope_theta") or values.get("global_rope_theta", 1e4),
        ffn_type=ffn_type,
        norm_type="layernorm",
        use_bias=biases["norm_bias"],
        embedding_norm=True,
        local_attention_window=values.get("local_attention", 128),
        global_attn_every_n_layers=values.get("global_attn_every_n_layers", 3),
        pooler=f"{pooling}_head",
    )
    return BertConfig.from_dict(fields, source=source)


def check_exportable(config: BertConfig) -> None:
    """A UserError naming what transformers' ModernBERT cannot express in `config`."""
    wanted = dict(
        position_embedding_type="rope",
        pre_layer_norm=True,
        embedding_norm=True,
        norm_type="layernorm",
        type_vocab_size=0,
    )
    wrong = [
        f"{k}={shown(getattr(config, k))}" for k, v in wanted.items() if getattr(config, k) != v
    ]
    if config.ffn_type == "mlp":
        wrong.append("ffn_type='mlp'")
    if config.ffn_type == "geglu" and config.hidden_act not in _GELUS:
        wrong.append(f"geglu with hidden_act={shown(config.hidden_act)}")
    if wrong:
        raise UserError(
            "transformers' ModernBERT has no equivalent of " + ", ".join(wrong) + " (it is "
            "rope, pre-LN with embedding_norm, layernorm, geglu/swiglu, type_vocab_size 0)"
        )


def hf_config_dict(config: BertConfig, architecture: str, num_labels: int = 0) -> dict:
    check_exportable(config)
    silu = config.ffn_type == "swiglu"
    values = dict(
        model_type="modernbert",
        architectures=[architecture],
        vocab_size=config.vocab_size,
        hidden_size=config.hidden_size,
        num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads,
        intermediate_size=config.intermediate_size,
        hidden_activation="silu" if silu else config.hidden_act,
        classifier_activation=config.hidden_act,
        max_position_embeddings=config.max_position_embeddings,
        initializer_range=config.initializer_range,
        norm_eps=config.layer_norm_eps,
        global_rope_theta=config.rope_theta,
        local_rope_theta=config.local_rope_theta,
        # Without a window every layer is global (HF's local_attention must be set all the same).
        local_attention=config.local_attention_window or 128,
        global_attn_every_n_layers=(
            config.global_attn_every_n_layers if config.local_attention_window else 1
        ),
        classifier_pooling="mean" if config.pooler == "mean_head" else "cls",
        embedding_dropout=config.hidden_dropout_prob,
        mlp_dropout=config.hidden_dropout_prob,
        attention_dropout=config.attention_probs_dropout_prob,
        decoder_bias=True,
        # The padding row of torch's Embedding (its gradient only): ModernBERT's id if it fits.
        pad_token_id=50283 if config.vocab_size > 50283 else 0,
        tie_word_embeddings=True,
        torch_dtype="float32",
        **{k: config.use_bias for k in ("attention_bias", "mlp_bias", "norm_bias")},
        classifier_bias=config.use_bias,
    )
    if num_labels:
        values["id2label"] = {str(i): f"LABEL_{i}" for i in range(num_labels)}
    return values


def _lookup(weights: dict, name: str) -> str | None:
    """`name` as `weights` holds it: with or without the task class's "model." prefix."""
    candidates = [name, name.removeprefix("model."), f"model.{name}"]
    return next((c for c in candidates if c in weights), None)


def _hf_shape(shapes: dict, config: BertConfig, paths) -> tuple[int, ...]:
    """The shape of the HF tensor whose rows split into `paths` (kernels are [out, in] there)."""
    parts = []
    for path in paths:
        shape = tuple(shapes[path].shape)
        if is_vocab_param(path):
            shape = (config.vocab_size, *shape[1:])
        parts.append(tuple(reversed(shape)) if path[-1] == "kernel" else shape)
    return (sum(p[0] for p in parts), *parts[0][1:])


def params_from_hf_tensors(
    config: BertConfig, weights: dict, source: str, *, task: str = "masked_lm", verbose=True
) -> dict:
    """HF ModernBERT tensors -> BertForPreTraining params (task "masked_lm"; absent heads are
    initialised fresh, reported) or BertForSequenceClassification params ("classifier")."""
    from bert_jax.convert import hf

    mappings = masked_lm_mappings(config) if task == "masked_lm" else classifier_mappings(config)
    if task == "masked_lm":
        shapes = hf._model_shapes(config)
        fresh_tree = lambda: hf.init_params(config, jax.random.key(0))  # noqa: E731
    else:
        num_labels = weights[_lookup(weights, "classifier.weight")].shape[0]
        tree = classifier_params(config, num_labels)
        shapes = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in tree.items()}
        fresh_tree = lambda: traverse_util.unflatten_dict(tree)  # noqa: E731
    flat, used, missing = {}, set(), []
    for hf_name, paths in mappings:
        found = _lookup(weights, hf_name)
        if found is None:
            if paths[0][0] == "bert":
                missing.append(hf_name)
            continue
        value = np.asarray(weights[found])
        expected = _hf_shape(shapes, config, paths)
        if tuple(value.shape) != expected:
            raise UserError(
                f"{source}: parameter {found} has shape {tuple(value.shape)}, but its config "
                f"implies {expected}"
            )
        used.add(found)
        for path, piece in zip(paths, np.split(value, len(paths), axis=0), strict=True):
            piece = piece.T if path[-1] == "kernel" else piece
            piece = np.ascontiguousarray(piece).astype(np.float32)
            flat[path] = pad_vocab_rows(config, piece) if is_vocab_param(path) else piece
    if missing:
        raise UserError(
            f"{source}: not a complete ModernBERT encoder; missing {len(missing)} parameters, "
            f"e.g. {missing[:3]}"
        )
    if (
        task == "masked_lm"
        and config.pooler != "cls_tanh"
        and ("mlm_transform",) in {p[:1] for p in flat}
    ):
        # transformers' task classes share the MLM's head names: they start from its weights.
        for ours in ("pooler", "pooler_norm"):
            mlm = "mlm_transform" if ours == "pooler" else "mlm_layer_norm"
            flat.update({("bert", ours, *k[1:]): v for k, v in flat.items() if k[0] == mlm})
    initialised = [k for k in shapes if k not in flat]
    if initialised:
        fresh = traverse_util.flatten_dict(fresh_tree())
        flat.update({k: np.asarray(fresh[k]) for k in initialised})
        if verbose:
            listed = ", ".join(sorted({"/".join(k[:2]) for k in initialised}))
            print(f"{source}: no {listed} in the checkpoint; initialised fresh")
    ignored = sorted(n for n in weights if n not in used and not n.endswith("decoder.weight"))
    if verbose and ignored:
        print(f"{source}: ignored {len(ignored)} tensors that are not ModernBERT's: {ignored}")
    return traverse_util.unflatten_dict(flat)


def classifier_params(config: BertConfig, num_labels: int) -> dict:
    """Fresh BertForSequenceClassification params, flattened (unboxed, float32)."""
    from flax.core import meta

    from bert_jax.model.modeling import BertForSequenceClassification

    ids = np.zeros((1, 8), np.int32)
    model = BertForSequenceClassification(config, num_labels)
    variables = jax.jit(model.init)(jax.random.key(0), ids)
    return traverse_util.flatten_dict(meta.unbox(variables["params"]))


def read_weights(directory: pathlib.Path, config: BertConfig) -> dict[str, np.ndarray]:
    """model.safetensors or pytorch_model.bin, bounded by the config's parameter count."""
    from bert_jax.convert.hf import read_safetensors

    limit = checkpoint_byte_limit(config.num_parameters())
    if (directory / "model.safetensors").exists():
        return read_safetensors(directory / "model.safetensors", max_bytes=limit)
    if (directory / "pytorch_model.bin").exists():
        from bert_jax.convert.torch_pickle import load_torch_state_dict

        return load_torch_state_dict(directory / "pytorch_model.bin", max_bytes=limit)
    raise UserError(f"{directory}: no model.safetensors or pytorch_model.bin")


def load_checkpoint(
    directory: pathlib.Path, config: BertConfig, *, verbose=True, need_mlm_head=False
) -> dict:
    """A ModernBertModel / ForMaskedLM directory -> BertForPreTraining params."""
    weights = read_weights(directory, config)
    if need_mlm_head and _lookup(weights, "head.dense.weight") is None:
        raise UserError(
            f"{directory}: no masked-LM head (a ModernBertModel checkpoint); fill-mask needs "
            "ModernBertForMaskedLM"
        )
    return params_from_hf_tensors(config, weights, str(directory), verbose=verbose)


def load_classifier(path, *, verbose=True) -> tuple[BertConfig, dict]:
    """A ModernBertForSequenceClassification directory -> (config, BertForSequenceClassification
    params); num_labels is the classifier's rows."""
    from bert_jax.convert.hf import read_hf_config

    directory = pathlib.Path(path)
    config = read_hf_config(directory)
    weights = read_weights(directory, config)
    if _lookup(weights, "classifier.weight") is None:
        raise UserError(f"{directory}: no classifier; not a ModernBertForSequenceClassification")
    params = params_from_hf_tensors(config, weights, str(directory), task="classifier")
    return config, params


def hf_tensors(config: BertConfig, params: dict, mappings: list[Mapping]) -> dict:
    """bert_jax params -> HF names and [out, in] arrays (split rows joined back)."""
    flat = traverse_util.flatten_dict(params)
    tensors = {}
    for hf_name, paths in mappings:
        pieces = []
        for path in paths:
            if path not in flat:
                raise UserError(f"parameter {'/'.join(path)} missing from the tree being exported")
            value = np.asarray(jax.device_get(flat[path]), dtype=np.float32)
            value = trim_vocab_rows(config, value) if is_vocab_param(path) else value
            pieces.append(value.T if path[-1] == "kernel" else value)
        tensors[hf_name] = np.ascontiguousarray(np.concatenate(pieces, axis=0))
    return tensors


def save_checkpoint(config: BertConfig, params: dict, path) -> pathlib.Path:
    """BertForPreTraining params -> a transformers ModernBertForMaskedLM directory (the NSP
    head and pooler, which it has no place for, are left out)."""
    from bert_jax.convert.hf import write_hf_directory

    check_exportable(config)
    tensors = hf_tensors(config, params, masked_lm_mappings(config))
    values = hf_config_dict(config, "ModernBertForMaskedLM")
    return write_hf_directory(tensors, values, path)


def save_encoder(config: BertConfig, encoder: dict, path) -> pathlib.Path:
    """The encoder ('bert' subtree) as a transformers ModernBertModel directory."""
    from bert_jax.convert.hf import write_hf_directory

    check_exportable(config)
    tensors = hf_tensors(config, encoder, encoder_mappings(config, prefix=""))
    return write_hf_directory(tensors, hf_config_dict(config, "ModernBertModel"), path)


def save_classifier(
    config: BertConfig, params: dict, path, task_config: dict | None = None
) -> pathlib.Path:
    """BertForSequenceClassification params -> a ModernBertForSequenceClassification
    directory; task_config: what config.json adds (id2label, label2id, problem_type)."""
    from bert_jax.convert.hf import write_hf_directory

    check_exportable(config)
    if config.pooler == "cls_tanh":
        raise UserError("ModernBERT's classifier has no tanh pooler; use pooler cls_head/mean_head")
    tensors = hf_tensors(config, params, classifier_mappings(config))
    num_labels = tensors["classifier.weight"].shape[0]
    values = hf_config_dict(config, "ModernBertForSequenceClassification", num_labels)
    return write_hf_directory(tensors, {**values, **(task_config or {})}, path)
