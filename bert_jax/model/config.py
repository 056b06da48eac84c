"""BertConfig: the architecture's fields (bert_config.json names), presets, and the checks that
every config, whatever built it, passes (bounds from `bert_jax.untrusted`).

The vocabulary is padded to V' (a multiple of VOCAB_PAD_MULTIPLE = 128) inside the model, so that
`mesh.tensor` 2, 4, 8... divide it; the padded rows start at zero, get no gradient and never win
(docs/design/model.md). Exports trim them (`trim_vocab_rows`), imports add them (`pad_vocab_rows`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from bert_jax.errors import UserError
from bert_jax.untrusted import (
    CONFIG_REAL_RANGES,
    CONFIG_SIZE_BOUNDS,
    MAX_PARAMETERS,
    is_int,
    is_real,
    read_json_object,
    shown,
)

Array = jax.Array

# Released sizes of google-research/bert (the 24 smaller models and BERT-Base/Large).
PRESETS: dict[str, dict[str, int]] = {
    "tiny": dict(num_hidden_layers=2, hidden_size=128, num_attention_heads=2),
    "mini": dict(num_hidden_layers=4, hidden_size=256, num_attention_heads=4),
    "small": dict(num_hidden_layers=4, hidden_size=512, num_attention_heads=8),
    "medium": dict(num_hidden_layers=8, hidden_size=512, num_attention_heads=8),
    "base": dict(num_hidden_layers=12, hidden_size=768, num_attention_heads=12),
    "large": dict(num_hidden_layers=24, hidden_size=1024, num_attention_heads=16),
}

ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    # Names as Hugging Face's. "gelu" is the exact erf form (PyTorch's and Hugging Face's "gelu",
    # NVIDIA BERT's). google-research/bert's modeling.py computes its "gelu" with the tanh
    # approximation, which is "gelu_new" here: convert/tf1.py maps a bert_config.json "gelu" to
    # "gelu_new" and writes "gelu_new" (and its aliases below) back as "gelu".
    # XLA's erf is a short polynomial, about twice as fast as the erfc that
    # jax.nn.gelu(approximate=False) uses, forward+backward.
    "gelu": lambda x: 0.5 * x * (1.0 + jax.lax.erf(x * (2.0**-0.5))),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_fast": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
    "tanh": jnp.tanh,
}

# The string-valued modern-encoder fields and their choices (the first is the original BERT's).
CHOICES: dict[str, tuple[str, ...]] = {
    "position_embedding_type": ("absolute", "rope"),
    "ffn_type": ("mlp", "geglu", "swiglu"),
    "norm_type": ("layernorm", "rmsnorm"),
    "pooler": ("cls_tanh", "cls_head", "mean_head"),
}

VOCAB_PAD_MULTIPLE = 128  # the embedding table's rows are padded to a multiple of this

REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


@dataclasses.dataclass(frozen=True)
class BertConfig:
    """Architecture; field names follow bert_config.json / Hugging Face config.json."""

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    dtype: str = "float32"  # compute dtype (e.g. bfloat16); parameters stay param_dtype
    param_dtype: str = "float32"
    pre_layer_norm: bool = False  # the original BERT is post-LN
    remat_policy: str = "none"  # one of REMAT_POLICIES
    attention_implementation: str | None = None  # model/attention.py IMPLEMENTATIONS
    # Modern-encoder options (ModernBERT); the defaults are the original BERT, bit for bit.
    position_embedding_type: str = "absolute"  # "absolute" (learned table) or "rope" (rotary)
    rope_theta: float = 10000.0  # rotary base of global-attention layers
    local_rope_theta: float = 10000.0  # rotary base of local-window layers
    ffn_type: str = "mlp"  # "mlp", "geglu" (hidden_act(x W) * x V) or "swiglu" (silu(x W) * x V)
    norm_type: str = "layernorm"  # or "rmsnorm"
    use_bias: bool = True  # biases of the Dense and LayerNorm layers (task outputs keep theirs)
    embedding_norm: bool = True  # normalise the embeddings (under pre-LN: layer 0 then has none)
    local_attention_window: int = 0  # 0: all layers global; w: local layers see |q - k| <= w // 2
    global_attn_every_n_layers: int = 1  # layer i is global when i % n == 0
    pooler: str = "cls_tanh"  # "cls_tanh" (BERT), "cls_head" or "mean_head" (ModernBERT's)

    def __post_init__(self):
        problems = []
        for name, bound in CONFIG_SIZE_BOUNDS.items():
            value = getattr(self, name)
            if name == "type_vocab_size" and value == 0:
                continue  # a model without token types (ModernBERT)
            if not is_int(value) or value <= 0:
                problems.append(f"{name} must be a positive integer, got {shown(value)}")
            elif value > bound:
                problems.append(f"{name} {value} is more than {bound}")
        if not problems and self.hidden_size % self.num_attention_heads:
            problems.append(
                f"hidden_size {self.hidden_size} is not divisible by num_attention_heads "
                f"{self.num_attention_heads}"
            )
        if not problems and self.num_parameters() > MAX_PARAMETERS:
            problems.append(
                f"{self.num_parameters()} parameters are more than {MAX_PARAMETERS}; "
                "check vocab_size, hidden_size, intermediate_size and num_hidden_layers"
            )
        if not isinstance(self.hidden_act, str) or self.hidden_act not in ACTIVATIONS:
            problems.append(
                f"hidden_act {shown(self.hidden_act)} is not one of {sorted(ACTIVATIONS)}"
            )
        for name, (low, high, high_included) in CONFIG_REAL_RANGES.items():
            value = getattr(self, name)
            inside = (
                is_real(value)
                and low <= value
                and (value <= high if high_included else value < high)
            )
            if not inside:
                interval = f"[{low:g}, {high:g}{']' if high_included else ')'}"
                problems.append(f"{name} must be in {interval}, got {shown(value)}")
        if not is_real(self.layer_norm_eps) or not 0 < self.layer_norm_eps <= 1:
            problems.append(f"layer_norm_eps must be in (0, 1], got {shown(self.layer_norm_eps)}")
        for name in ("dtype", "param_dtype"):
            try:
                jnp.dtype(getattr(self, name))
            except (TypeError, ValueError):
                problems.append(f"{name} {shown(getattr(self, name))} is not a dtype name")
        if not isinstance(self.pre_layer_norm, bool):
            problems.append(
                f"pre_layer_norm must be true or false, got {shown(self.pre_layer_norm)}"
            )
        if not isinstance(self.remat_policy, str) or self.remat_policy not in REMAT_POLICIES:
            problems.append(
                f"remat_policy {shown(self.remat_policy)} is not one of {list(REMAT_POLICIES)}"
            )
        if not isinstance(self.attention_implementation, str | None):
            problems.append(
                "attention_implementation must be a name or None, got "
                f"{shown(self.attention_implementation)}"
            )
        problems += self._modern_problems()
        if problems:
            raise UserError("invalid BertConfig: " + "; ".join(problems))

    def _modern_problems(self) -> list[str]:
        """The modern-encoder fields' checks (see the field comments)."""
        problems = []
        for name, choices in CHOICES.items():
            if not isinstance(getattr(self, name), str) or getattr(self, name) not in choices:
                problems.append(f"{name} {shown(getattr(self, name))} is not one of {choices}")
        for name in ("rope_theta", "local_rope_theta"):
            if not is_real(getattr(self, name)) or not getattr(self, name) > 1:
                problems.append(
                    f"{name} must be a number above 1, got {shown(getattr(self, name))}"
                )
        for name in ("use_bias", "embedding_norm"):
            if not isinstance(getattr(self, name), bool):
                problems.append(f"{name} must be true or false, got {shown(getattr(self, name))}")
        window, every = self.local_attention_window, self.global_attn_every_n_layers
        if not is_int(window) or not 0 <= window <= CONFIG_SIZE_BOUNDS["max_position_embeddings"]:
            problems.append(f"local_attention_window must be an integer >= 0, got {shown(window)}")
        if not is_int(every) or not 1 <= every <= CONFIG_SIZE_BOUNDS["num_hidden_layers"]:
            problems.append(
                f"global_attn_every_n_layers must be an integer >= 1, got {shown(every)}"
            )
        return problems

    def layer_window(self, layer: int) -> int:
        """Layer `layer`'s attention window: 0 (global) every global_attn_every_n_layers-th
        layer from the first, local_attention_window on the others."""
        return 0 if layer % self.global_attn_every_n_layers == 0 else self.local_attention_window

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def padded_vocab_size(self) -> int:
        """V': rows of the word-embedding table and MLM bias as stored (see the module doc)."""
        return -(-self.vocab_size // VOCAB_PAD_MULTIPLE) * VOCAB_PAD_MULTIPLE

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> BertConfig:
        """A released size by name (tiny, mini, small, medium, base, large), with overrides."""
        if name not in PRESETS:
            raise UserError(f"unknown BERT preset {name!r}; choose one of {list(PRESETS)}")
        fields = dict(PRESETS[name])
        fields["intermediate_size"] = 4 * fields["hidden_size"]
        fields.update(overrides)
        return cls(**fields)

    @classmethod
    def from_dict(cls, values: dict[str, Any], source=None) -> BertConfig:
        """Builds from a bert_config.json / config.json dict; unknown keys are ignored.

        Every field is checked for its type and range (`bert_jax.untrusted` holds the
        bounds), so
        a config read from a downloaded file cannot size an absurd model. `source`, the file the
        dict was read from, is named in the error.
        """
        if not isinstance(values, Mapping):
            raise UserError(
                f"{source or 'BertConfig'}: expected an object of config fields, found "
                f"{type(values).__name__}"
            )
        known = {f.name for f in dataclasses.fields(cls)}
        fields = {k: v for k, v in values.items() if k in known}
        if fields.get("pre_layer_norm") is True and "embedding_norm" not in fields:
            # Written before embedding_norm existed: that pre-LN model had no embedding norm
            # (and a layer-0 attention norm), which is embedding_norm=False now.
            fields["embedding_norm"] = False
        try:
            return cls(**fields)
        except UserError as err:
            if source is None:
                raise
            raise UserError(f"{source}: {err}") from err

    @classmethod
    def from_json_file(cls, path) -> BertConfig:
        return cls.from_dict(read_json_object(path, "a BERT config"), source=path)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> BertConfig:
        return dataclasses.replace(self, **changes)

    def num_parameters(self, include_heads: bool = True) -> int:
        """Analytic parameter count (BertModel, plus MLM/NSP heads when include_heads).

        Counts the vocab_size rows the model has; the arrays hold padded_vocab_size rows (the
        zero padding adds (V' - V) * H, and V' - V with the MLM head)."""
        h, f, v = self.hidden_size, self.intermediate_size, self.vocab_size
        bias = 1 if self.use_bias else 0
        norm = h + (bias * h if self.norm_type == "layernorm" else 0)  # scale (and bias)
        positions = (
            self.max_position_embeddings if self.position_embedding_type == "absolute" else 0
        )
        embeddings = (v + positions + self.type_vocab_size) * h + norm * self.embedding_norm
        glu = self.ffn_type != "mlp"
        ffn = (2 + glu) * h * f + bias * ((1 + glu) * f + h)
        layer = 4 * (h * h + bias * h) + ffn + 2 * norm
        total = embeddings + self.num_hidden_layers * layer
        if self.pre_layer_norm:
            total += norm  # final_layer_norm
            if self.embedding_norm:
                total -= norm  # layer 0 has no attention norm
        total += h * h + bias * h + (norm if self.pooler != "cls_tanh" else 0)  # pooler
        if include_heads:
            total += h * h + bias * h + norm + v + 2 * h + 2
        return total


def pad_vocab_rows(config: BertConfig, value):
    """[vocab_size, ...] -> [padded_vocab_size, ...] with zero rows (numpy or jax arrays)."""
    extra = config.padded_vocab_size - value.shape[0]
    return value if extra <= 0 else np.pad(value, ((0, extra), *[(0, 0)] * (value.ndim - 1)))


def trim_vocab_rows(config: BertConfig, value):
    """[padded_vocab_size, ...] -> [vocab_size, ...]: the model's own rows."""
    return value[: config.vocab_size]


def is_vocab_param(path: tuple[str, ...]) -> bool:
    """The parameters whose leading axis is the (padded) vocabulary."""
    return tuple(path[-2:]) == ("word_embeddings", "embedding") or path[-1] == "mlm_output_bias"
