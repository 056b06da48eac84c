"""Reads a PyTorch `pytorch_model.bin` (zip format) into numpy without torch and without running
pickled code.

The file is untrusted. The unpickler accepts only the handful of names a state dict uses and
builds records, not arrays; then every number is checked before anything is allocated: the zip
entries' declared sizes, each storage's element count against its entry, and each tensor view
(offset, sizes, strides) against its storage. Only then are the storages read and the views
copied out of them. Every failure is a `UserError` naming the file, the tensor and the problem.
"""

from __future__ import annotations

import collections
import dataclasses
import io
import math
import pickle
import zipfile

import numpy as np

from bert_jax.errors import UserError
from bert_jax.untrusted import check_file_size, checkpoint_byte_limit, is_int, shown

_STORAGE_DTYPES = {
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
# Defaults for a caller that knows no config: the largest model BertConfig accepts.
DEFAULT_MAX_BYTES = checkpoint_byte_limit(1 << 35)
_MAX_PICKLE_BYTES = 64 << 20  # BERT-large's data.pkl is ~40 kB
_MAX_DIMS = 8


def _numpy_dtype(name: str) -> np.dtype:
    if name == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


@dataclasses.dataclass(frozen=True)
class _StorageType:
    dtype: str


@dataclasses.dataclass(frozen=True)
class _Storage:
    key: str
    dtype: str
    numel: int


@dataclasses.dataclass(frozen=True)
class _View:
    """A tensor as the pickle describes it; checked by `_check_view` before it is built."""

    storage: object
    offset: object
    size: object
    stride: object


def _rebuild_tensor(storage, offset, size, stride, *unused) -> _View:
    return _View(storage, offset, size, stride)


def _rebuild_parameter(data, *unused):
    return data


class _RestrictedUnpickler(pickle.Unpickler):
    """Knows tensors, storages and OrderedDict; records storages without reading them."""

    def __init__(self, file, entries: dict[str, zipfile.ZipInfo], prefix: str):
        super().__init__(file)
        self._entries = entries
        self._prefix = prefix
        self.storages: dict[str, _Storage] = {}

    def find_class(self, module: str, name: str):
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor
        if module == "torch._utils" and name == "_rebuild_parameter":
            return _rebuild_parameter
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        raise pickle.UnpicklingError(
            f"refusing to load {module}.{name}: a BERT state dict holds only tensors"
        )

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise UserError(f"a storage reference {shown(pid)} is not ('storage', type, key, ...)")
        _, storage_type, key, _location, numel = pid
        if not isinstance(storage_type, _StorageType):
            raise UserError(f"storage {shown(key)} has no storage type ({shown(storage_type)})")
        if not isinstance(key, str) or not key.isalnum():
            raise UserError(f"storage key {shown(key)} is not a plain name")
        if not is_int(numel) or numel < 0:
            raise UserError(f"storage {key} has element count {shown(numel)}")
        storage = _Storage(key, storage_type.dtype, numel)
        if self.storages.setdefault(key, storage) != storage:
            raise UserError(
                f"storage {key} is described twice, as {self.storages[key]} and as {storage}"
            )
        entry = self._entries.get(f"{self._prefix}/data/{key}")
        if entry is None:
            raise UserError(f"storage {key} is missing: no entry {self._prefix}/data/{key}")
        itemsize = _numpy_dtype(storage.dtype).itemsize
        if entry.file_size != numel * itemsize:
            raise UserError(
                f"storage {key} should hold {numel} {storage.dtype} values ({numel * itemsize} "
                f"bytes), but its zip entry has {entry.file_size} bytes"
            )
        return storage


def _check_view(view: _View, name: str) -> tuple[_Storage, int, tuple[int, ...], tuple[int, ...]]:
    """(storage, offset, shape, strides in elements) once every one is known to be in bounds."""
    storage, offset, size, stride = view.storage, view.offset, view.size, view.stride
    if not isinstance(storage, _Storage):
        raise UserError(f"tensor {name!r} is built on {shown(storage)}, not a storage")
    for what, values in (("size", size), ("stride", stride)):
        if not (isinstance(values, tuple) and len(values) <= _MAX_DIMS):
            raise UserError(f"tensor {name!r} has {what} {shown(values)}, not a short tuple")
        if not all(is_int(v) and v >= 0 for v in values):
            raise UserError(f"tensor {name!r} has {what} {shown(values)}: not non-negative ints")
    if len(size) != len(stride):
        raise UserError(f"tensor {name!r} has size {size} but stride {stride}")
    if not is_int(offset) or offset < 0:
        raise UserError(f"tensor {name!r} has storage offset {shown(offset)}")
    # The last element the view reaches must lie inside the storage (an empty view reaches none).
    if math.prod(size) == 0:
        end = offset
    else:
        end = offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True)) + 1
    if end > storage.numel:
        raise UserError(
            f"tensor {name!r} (offset {offset}, size {size}, stride {stride}) reaches element "
            f"{end - 1} of storage {storage.key}, which holds {storage.numel}"
        )
    return storage, offset, size, stride


def _open_archive(path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(path)
    except zipfile.BadZipFile as err:
        raise UserError(
            f"{path}: not a zip-format PyTorch checkpoint (legacy torch.save files are not "
            "supported; re-save it with a current torch or convert it to model.safetensors)"
        ) from err
    except Exception as err:  # a damaged zip raises OSError, ValueError, EOFError, ...
        raise UserError(f"{path}: damaged zip file ({type(err).__name__}: {err})") from err


def _read_entry(archive: zipfile.ZipFile, entry: zipfile.ZipInfo, path) -> bytes:
    try:
        data = archive.read(entry)
    except Exception as err:  # CRC mismatch, bad headers, unknown compression, truncation, ...
        raise UserError(
            f"{path}: cannot read {entry.filename} ({type(err).__name__}: {err})"
        ) from err
    if len(data) != entry.file_size:
        raise UserError(
            f"{path}: {entry.filename} holds {len(data)} bytes, its header says {entry.file_size}"
        )
    return data


def load_torch_state_dict(
    path, *, max_bytes: int = DEFAULT_MAX_BYTES, check=None
) -> dict[str, np.ndarray]:
    """pytorch_model.bin -> {name: numpy array}, never executing pickled code.

    max_bytes bounds both what the zip may declare and what the tensors may decode to (views may
    overlap, as tied weights do). check, when given, is called with {name: (shape, dtype name)}
    before any tensor data is read, and may raise a UserError.
    """
    check_file_size(path, max_bytes, "a PyTorch checkpoint of this model")
    archive = _open_archive(path)
    with archive:
        entries = {entry.filename: entry for entry in archive.infolist()}
        declared = sum(entry.file_size for entry in entries.values())
        if declared > max_bytes:
            largest = max(entries.values(), key=lambda entry: entry.file_size)
            raise UserError(
                f"{path}: its zip entries declare {declared} bytes uncompressed ({largest.filename}"
                f": {largest.file_size}), more than {max_bytes} for a BERT of this size; "
                "refusing to unpack it"
            )
        pickles = sorted(n for n in entries if n.endswith("/data.pkl"))
        if not pickles:
            raise UserError(f"{path}: no data.pkl inside; is this a PyTorch checkpoint?")
        prefix = pickles[0][: -len("/data.pkl")]
        if entries[pickles[0]].file_size > _MAX_PICKLE_BYTES:
            raise UserError(
                f"{path}: {pickles[0]} declares {entries[pickles[0]].file_size} bytes; a state "
                f"dict's pickle has far less than {_MAX_PICKLE_BYTES}"
            )
        big_endian = False
        if f"{prefix}/byteorder" in entries:
            order = _read_entry(archive, entries[f"{prefix}/byteorder"], path)
            if order not in (b"little", b"big"):
                raise UserError(f"{path}: {prefix}/byteorder is {shown(order)}")
            big_endian = order == b"big"

        unpickler = _RestrictedUnpickler(
            io.BytesIO(_read_entry(archive, entries[pickles[0]], path)), entries, prefix
        )
        try:
            state = unpickler.load()
        except UserError as err:
            raise UserError(f"{path}: {err}") from err
        except Exception as err:  # a damaged pickle may raise almost any exception
            raise UserError(
                f"{path}: {pickles[0]} is no state dict ({type(err).__name__}: {shown(str(err))})"
            ) from err

        if not isinstance(state, dict):
            raise UserError(f"{path}: holds a {type(state).__name__}, not a state dict")
        views = {}
        decoded = 0
        for name, view in state.items():
            if not isinstance(name, str):
                raise UserError(f"{path}: a state dict key is {shown(name)}, not a name")
            if not isinstance(view, _View):
                raise UserError(f"{path}: {name!r} is a {type(view).__name__}, not a tensor")
            try:
                views[name] = _check_view(view, name)
            except UserError as err:
                raise UserError(f"{path}: {err}") from err
            storage, _, size, _ = views[name]
            decoded += math.prod(size) * _numpy_dtype(storage.dtype).itemsize
        if decoded > max_bytes:
            raise UserError(
                f"{path}: its tensors decode to {decoded} bytes, more than {max_bytes} for a "
                "BERT of this size"
            )
        if check is not None:
            check({name: (size, storage.dtype) for name, (storage, _, size, _) in views.items()})

        buffers: dict[str, np.ndarray] = {}
        for storage, *_ in views.values():
            if storage.key not in buffers:
                raw = _read_entry(archive, entries[f"{prefix}/data/{storage.key}"], path)
                buffers[storage.key] = _as_array(raw, storage.dtype, big_endian)
    return {name: _copy_view(buffers[s.key], *rest) for name, (s, *rest) in views.items()}


def _as_array(raw: bytes, dtype_name: str, big_endian: bool) -> np.ndarray:
    dtype = _numpy_dtype(dtype_name)
    if big_endian and dtype.itemsize > 1:
        swapped = np.frombuffer(raw, np.dtype(f">u{dtype.itemsize}")).astype(f"<u{dtype.itemsize}")
        return swapped.view(dtype)
    return np.frombuffer(raw, dtype)


def _copy_view(buffer: np.ndarray, offset: int, size: tuple, stride: tuple) -> np.ndarray:
    """A copy of the (checked) view; re-checked against the buffer's own bounds as it is built."""
    if math.prod(size) == 0:
        return np.zeros(size, buffer.dtype)
    itemsize = buffer.itemsize
    view = np.lib.stride_tricks.as_strided(
        buffer[offset:],
        shape=size,
        strides=tuple(s * itemsize for s in stride),
        writeable=False,
    )
    low, high = np.lib.array_utils.byte_bounds(view)
    start, stop = np.lib.array_utils.byte_bounds(buffer)
    if not start <= low <= high <= stop:  # unreachable after _check_view; never read beyond
        raise AssertionError("tensor view outside its storage")
    return np.array(view)
