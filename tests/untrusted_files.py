"""Hand-made checkpoint files for the untrusted-file tests, and the tests' own decoders.

`torch_zip` writes a `pytorch_model.bin` whose pickle says exactly what it is told (any offset,
size, stride, storage type or global), as a hostile file would. `reference_torch` and
`reference_safetensors` decode such files independently of bert_jax, in pure Python with every
index checked, so a loader's output can be compared byte for byte with what the file holds.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import io
import itertools
import json
import math
import pathlib
import pickle
import signal
import struct
import zipfile

import jax
import numpy as np
import orbax.checkpoint as ocp

from bert_jax.checkpoints import checkpointing, sealing
from bert_jax.model.modeling import BertConfig

# Written out here rather than imported, so that the reference decoding shares nothing with
# bert_jax.convert.torch_pickle.
DTYPE_NAME = {
    "FloatStorage": "float32",
    "DoubleStorage": "float64",
    "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16",
    "LongStorage": "int64",
    "IntStorage": "int32",
    "ShortStorage": "int16",
    "CharStorage": "int8",
    "ByteStorage": "uint8",
    "BoolStorage": "bool",
}
ITEMSIZE = {k: 2 if v == "bfloat16" else np.dtype(v).itemsize for k, v in DTYPE_NAME.items()}
# Reference decoding gives up (and expects a refusal) beyond this many elements per tensor.
REFERENCE_MAX_ELEMENTS = 1 << 16


# -- valid tiny files to start from --------------------------------------------------------

TINY = BertConfig(
    vocab_size=40,
    hidden_size=8,
    num_hidden_layers=1,
    num_attention_heads=2,
    intermediate_size=12,
    max_position_embeddings=16,
)


TASK_INFO = {
    "kind": "classification",
    "label_list": ["neg", "pos"],
    "num_labels": 2,
    "head": "classifier",
    "lowercase": True,
    "max_seq_length": 32,
    "main_metric": "accuracy",
}


PARAMS = {
    "bert": {
        "dense": {
            "kernel": np.arange(12, dtype=np.float32).reshape(3, 4),
            "bias": np.full(4, 0.5, np.float32),
        },
        "norm": {"scale": np.linspace(-1, 1, 6, dtype=np.float32)},
    }
}


@functools.cache
def tiny_params() -> dict:
    """BertForPreTraining parameters of TINY (host arrays); built once, the init compiles."""
    from bert_jax.convert.hf import init_params

    return jax.tree.map(np.asarray, init_params(TINY, jax.random.key(0)))


def tiny_hf_dir(directory: pathlib.Path, **overrides) -> pathlib.Path:
    """A Hugging Face directory of TINY (config.json + model.safetensors); overrides go into
    config.json only."""
    from bert_jax.convert.hf import save_hf_checkpoint

    save_hf_checkpoint(TINY, tiny_params(), directory)
    if overrides:
        values = json.loads((directory / "config.json").read_text())
        (directory / "config.json").write_text(json.dumps(dict(values, **overrides)))
    return directory


def abstract_params(params=PARAMS):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)


def orbax_step(step_dir: pathlib.Path, params=PARAMS) -> pathlib.Path:
    """A bert_jax step directory: state/ (step, params, optimizer state) and its manifest."""
    state = {"step": np.int32(3), "params": params, "opt_state": {"mu": np.zeros(4, np.float32)}}
    ocp.PyTreeCheckpointer().save(step_dir / "state", state)
    arrays = sealing.fingerprints(state, prefix="state")
    checkpointing.write_manifest(step_dir, 3, arrays, array_items=("state",))
    return step_dir


# -- writing torch zips ----------------------------------------------------------------------


class Global:
    """`module.name` as a pickle GLOBAL, whatever it is (torch need not be importable)."""

    def __init__(self, module: str, name: str):
        self.module, self.name = module, name

    def __call__(self, *args):  # only so that pickle accepts it as a reduce function
        raise TypeError("a stand-in")


class Storage:
    def __init__(self, key, type_name="FloatStorage", numel=0, module="torch"):
        self.key, self.type_name, self.numel, self.module = key, type_name, numel, module


class Tensor:
    def __init__(self, storage, offset, size, stride, parameter=False):
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride
        self.parameter = parameter

    def __reduce__(self):
        args = (self.storage, self.offset, self.size, self.stride, False, collections.OrderedDict())
        if not self.parameter:
            return Global("torch._utils", "_rebuild_tensor_v2"), args
        inner = Tensor(self.storage, self.offset, self.size, self.stride)
        return Global("torch._utils", "_rebuild_parameter"), (
            inner,
            False,
            collections.OrderedDict(),
        )


class Call:
    """A pickled call of any global: what a malicious pickle does."""

    def __init__(self, module, name, *args):
        self.function, self.args = Global(module, name), args

    def __reduce__(self):
        return self.function, self.args


class _Pickler(pickle._Pickler):
    def save(self, obj, save_persistent_id=True):
        if isinstance(obj, Global):
            self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())
            return
        super().save(obj, save_persistent_id)

    def persistent_id(self, obj):
        if isinstance(obj, Storage):
            return ("storage", Global(obj.module, obj.type_name), obj.key, "cpu", obj.numel)
        return None


def state_pickle(state) -> bytes:
    buffer = io.BytesIO()
    _Pickler(buffer, protocol=2).dump(state)
    return buffer.getvalue()


def torch_zip(
    path,
    state,
    storages: dict[str, bytes],
    *,
    pickled: bytes | None = None,
    byteorder=b"little",
    compression=zipfile.ZIP_STORED,
):
    """Writes a zip-format torch checkpoint: archive/data.pkl, archive/data/<key>, ..."""
    with zipfile.ZipFile(path, "w", compression) as archive:
        archive.writestr("archive/data.pkl", state_pickle(state) if pickled is None else pickled)
        for key, raw in storages.items():
            archive.writestr(f"archive/data/{key}", raw)
        if byteorder is not None:
            archive.writestr("archive/byteorder", byteorder)
        archive.writestr("archive/version", "3\n")
    return path


def set_declared_size(data: bytes, name: str, size: int) -> bytes:
    """The zip with entry `name`'s uncompressed size, in its central directory, set to size."""
    data = bytearray(data)
    encoded = name.encode()
    start = 0
    while (start := data.find(b"PK\x01\x02", start)) >= 0:
        name_length = struct.unpack_from("<H", data, start + 28)[0]
        if data[start + 46 : start + 46 + name_length] == encoded:
            struct.pack_into("<I", data, start + 24, size)
            return bytes(data)
        start += 4
    raise ValueError(f"no entry {name}")


# -- the tests' own decoding -------------------------------------------------------------------


class Invalid(Exception):
    """The file does not describe tensors inside its own bytes: a loader must refuse it."""


class _RecordingUnpickler(pickle.Unpickler):
    """Reads what a state-dict pickle says, checking nothing and calling nothing of bert_jax."""

    def find_class(self, module, name):
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return lambda storage, offset, size, stride, *rest: (
                "tensor",
                storage,
                offset,
                size,
                stride,
            )
        if (module, name) == ("torch._utils", "_rebuild_parameter"):
            return lambda data, *rest: data
        if module == "torch" and name in ITEMSIZE:
            return ("type", name)
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        raise Invalid(f"global {module}.{name}")

    def persistent_load(self, pid):
        return ("storage", pid)


def _element_bytes(raw: bytes, itemsize: int, offset, size, stride, big_endian: bool) -> bytes:
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (offset, *size, *stride)):
        raise Invalid("non-integer view numbers")
    if len(size) != len(stride) or math.prod(size) > REFERENCE_MAX_ELEMENTS:
        raise Invalid("view shape")
    if any(n < 0 for n in size) or any(s < 0 for s in stride) or offset < 0:
        raise Invalid("negative view numbers")
    count = len(raw) // itemsize
    out = bytearray()
    for index in itertools.product(*(range(n) for n in size)):
        element = offset + sum(i * s for i, s in zip(index, stride, strict=True))
        if not 0 <= element < count:
            raise Invalid(f"element {element} outside a storage of {count}")
        piece = raw[element * itemsize : (element + 1) * itemsize]
        out += piece[::-1] if big_endian else piece
    return bytes(out)


def reference_torch(path) -> dict[str, tuple[str, tuple, bytes]]:
    """{name: (dtype name, shape, little-endian bytes)} of a torch zip; Invalid if none exist."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            pickles = sorted(n for n in names if n.endswith("/data.pkl"))
            prefix = pickles[0][: -len("/data.pkl")]
            order = (
                archive.read(f"{prefix}/byteorder") if f"{prefix}/byteorder" in names else b"little"
            )
            if order not in (b"little", b"big"):
                raise Invalid("byte order")
            state = _RecordingUnpickler(io.BytesIO(archive.read(pickles[0]))).load()
            result = {}
            for name, record in state.items():
                tag, storage, offset, size, stride = record
                assert tag == "tensor"
                _, (marker, (type_tag, type_name), key, _location, _numel) = storage
                assert marker == "storage" and type_tag == "type"
                raw = archive.read(f"{prefix}/data/{key}")
                data = _element_bytes(
                    raw, ITEMSIZE[type_name], offset, tuple(size), tuple(stride), order == b"big"
                )
                result[name] = (DTYPE_NAME[type_name], tuple(size), data)
            return result
    except Invalid:
        raise
    except Exception as err:  # whatever the file is, it does not describe readable tensors
        raise Invalid(f"{type(err).__name__}: {err}") from err


_SAFETENSORS_ITEMSIZE = {
    "F64": 8,
    "F32": 4,
    "F16": 2,
    "BF16": 2,
    "I64": 8,
    "I32": 4,
    "I16": 2,
    "I8": 1,
    "U8": 1,
    "BOOL": 1,
}
_SAFETENSORS_NAMES = {
    "F64": "float64",
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U8": "uint8",
    "BOOL": "bool",
}


def reference_safetensors(data: bytes) -> dict[str, tuple[str, tuple, bytes]]:
    """{name: (dtype name, shape, bytes)} of a safetensors file; Invalid if it is none."""
    try:
        (length,) = struct.unpack_from("<Q", data, 0)
        header = json.loads(data[8 : 8 + length])
        body = data[8 + length :]
        if 8 + length > len(data):
            raise Invalid("header longer than the file")
        result = {}
        for name, entry in header.items():
            if name == "__metadata__":
                continue
            begin, end = entry["data_offsets"]
            shape = tuple(entry["shape"])
            itemsize = _SAFETENSORS_ITEMSIZE[entry["dtype"]]
            numbers = (begin, end, *shape)
            if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in numbers):
                raise Invalid("numbers")
            if not begin <= end <= len(body) or end - begin != math.prod(shape) * itemsize:
                raise Invalid("offsets")
            result[name] = (_SAFETENSORS_NAMES[entry["dtype"]], shape, body[begin:end])
        return result
    except Invalid:
        raise
    except Exception as err:
        raise Invalid(f"{type(err).__name__}: {err}") from err


def reference_vocab(data: bytes) -> list[str]:
    """vocab.txt lines as google-research/bert and Hugging Face read them (universal newlines)."""
    text = data.decode("utf-8", errors="replace").replace("\r\n", "\n").replace("\r", "\n")
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    return [line.strip() for line in lines]


def array_bytes(array: np.ndarray) -> bytes:
    return np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<")).tobytes()


# -- mutations ---------------------------------------------------------------------------------

# Numbers a hostile file would try: edges, negatives, sizes that overflow 32 and 64 bits.
NASTY_INTS = (
    -(2**63),
    -(2**31),
    -1,
    0,
    1,
    2,
    3,
    7,
    2**31 - 1,
    2**31,
    2**32,
    10**9,
    2**62,
    2**63,
    2**64 + 1,
    10**12,
)
NASTY_VALUES = (
    *NASTY_INTS,
    0.5,
    -0.0,
    1e308,
    float("nan"),
    float("inf"),
    "12",
    "",
    None,
    True,
    False,
    [],
    [1, 2],
    {},
    {"a": 1},
)


def flip_bytes(
    rng, data: bytes, count: int | None = None, start: int = 0, stop: int | None = None
) -> bytes:
    data = bytearray(data)
    stop = len(data) if stop is None else min(stop, len(data))
    for _ in range(count or rng.randint(1, 4)):
        if stop > start:
            position = rng.randrange(start, stop)
            data[position] = rng.choice(
                (data[position] ^ (1 << rng.randrange(8)), rng.randrange(256))
            )
    return bytes(data)


def truncate(rng, data: bytes) -> bytes:
    return data[: rng.randrange(len(data))]


# -- a deadline for each fuzz case ------------------------------------------------------------


class Hang(Exception):
    pass


@contextlib.contextmanager
def deadline(seconds: float):
    """Raises Hang in the block after `seconds` (a hang is a failure, not a stuck CI job)."""

    def expire(*_):
        raise Hang(f"no result after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
