"""Files from outside (downloaded checkpoints, configs, vocabularies): the bounds and readers.

Every number read from such a file is checked before it sizes an allocation or indexes a buffer.
The bounds below are far above any released BERT (BERT-large: 30522 tokens, 1024 wide, 24 layers,
340M parameters) and far below what would exhaust a machine; docs/faq.md lists them. A file
that breaks one is refused with a `UserError` naming the file, the field and the bound.
"""

from __future__ import annotations

import json
import math

from etils import epath

from bert_jax.errors import UserError

# BertConfig fields (enforced by BertConfig itself, whatever built it).
MAX_VOCAB_SIZE = 1 << 22  # 4,194,304 tokens
MAX_HIDDEN_SIZE = 1 << 15
MAX_INTERMEDIATE_SIZE = 1 << 17
MAX_LAYERS = 1024
MAX_POSITIONS = 1 << 20
MAX_TOKEN_TYPES = 1 << 16
MAX_PARAMETERS = 1 << 35  # about 34 billion: a hundred times BERT-large
# Integer BertConfig fields and their upper bounds; each must be at least 1.
CONFIG_SIZE_BOUNDS = {
    "vocab_size": MAX_VOCAB_SIZE,
    "hidden_size": MAX_HIDDEN_SIZE,
    "num_hidden_layers": MAX_LAYERS,
    "num_attention_heads": MAX_HIDDEN_SIZE,
    "intermediate_size": MAX_INTERMEDIATE_SIZE,
    "max_position_embeddings": MAX_POSITIONS,
    "type_vocab_size": MAX_TOKEN_TYPES,
}
# Real BertConfig fields: (low, high, whether high itself is allowed).
CONFIG_REAL_RANGES = {
    "hidden_dropout_prob": (0.0, 1.0, False),
    "attention_probs_dropout_prob": (0.0, 1.0, False),
    "initializer_range": (0.0, 1.0, True),
}

# Files.
MAX_JSON_BYTES = 16 << 20  # config.json, bert_config.json, task_info.json, ...
MAX_VOCAB_BYTES = 256 << 20
MAX_VOCAB_LINE_CHARS = 4096
# A weights file may hold the parameters in float64, a second (tied) word-embedding table and a
# fine-tuned head or buffers besides: 16 bytes per parameter of its config, plus this much.
CHECKPOINT_SLACK_BYTES = 256 << 20


def checkpoint_byte_limit(num_parameters: int) -> int:
    """The most bytes a weights file for a model of `num_parameters` may hold or decode to."""
    return 16 * num_parameters + CHECKPOINT_SLACK_BYTES


def is_int(value) -> bool:
    """A JSON integer (bool is a subclass of int in Python, but `true` is no size)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_real(value) -> bool:
    """A finite JSON number."""
    return (is_int(value) or isinstance(value, float)) and math.isfinite(value)


def shown(value) -> str:
    """repr, cut short: a value read from a file may be a megabyte-long list."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def check_file_size(path, limit: int, what: str) -> int:
    """The size of regular file `path`; a UserError when it is larger than `limit`."""
    try:
        size = epath.Path(path).stat().length
    except OSError as err:
        raise UserError(f"{path}: cannot read {what} ({err})") from err
    if size > limit:
        raise UserError(
            f"{path}: {size} bytes is too large for {what} (at most {limit}); is it the right file?"
        )
    return size


def read_json_object(path, what: str = "a JSON config") -> dict:
    """A JSON file holding one object -> dict; bounded in size, one-line UserError otherwise."""
    check_file_size(path, MAX_JSON_BYTES, what)
    try:
        with epath.Path(path).open("rb") as f:
            data = f.read(MAX_JSON_BYTES + 1)
        values = json.loads(data.decode("utf-8"))
    except OSError as err:
        raise UserError(f"{path}: cannot read {what} ({err})") from err
    except UnicodeDecodeError as err:
        raise UserError(f"{path}: not UTF-8 text ({err})") from err
    except (ValueError, RecursionError) as err:  # JSONDecodeError, a too-long integer, nesting
        raise UserError(f"{path}: not valid JSON ({str(err)[:200]})") from err
    if not isinstance(values, dict):
        raise UserError(f"{path}: expected a JSON object, found {type(values).__name__}")
    return values
