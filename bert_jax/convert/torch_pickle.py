"""Reads a PyTorch `pytorch_model.bin` (zip format) into numpy without torch and without running
pickled code: the unpickler only accepts the handful of names a state dict uses."""

from __future__ import annotations

import collections
import pickle
import zipfile

import numpy as np

from bert_jax.errors import UserError

_STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "BFloat16Storage": "bfloat16",
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class _StorageType:
    def __init__(self, name: str):
        self.dtype = _STORAGE_DTYPES[name]


def _rebuild_tensor(storage, offset, size, stride, *unused):
    array = np.lib.stride_tricks.as_strided(
        storage[offset:],
        shape=tuple(size),
        strides=tuple(s * storage.itemsize for s in stride),
    )
    return np.array(array)


def _rebuild_parameter(data, *unused):
    return data


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, archive: zipfile.ZipFile, prefix: str):
        super().__init__(file)
        self._archive = archive
        self._prefix = prefix

    def find_class(self, module: str, name: str):
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor
        if module == "torch._utils" and name == "_rebuild_parameter":
            return _rebuild_parameter
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        raise pickle.UnpicklingError(
            f"refusing to load {module}.{name}: a BERT state dict holds only tensors"
        )

    def persistent_load(self, pid):
        _, storage_type, key, _location, _numel = pid
        raw = self._archive.read(f"{self._prefix}/data/{key}")
        dtype = storage_type.dtype
        if dtype == "bfloat16":
            import ml_dtypes

            dtype = ml_dtypes.bfloat16
        return np.frombuffer(raw, dtype=dtype)


def load_torch_state_dict(path) -> dict[str, np.ndarray]:
    """pytorch_model.bin -> {name: numpy array}, never executing pickled code."""
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile as err:
        raise UserError(
            f"{path}: not a zip-format PyTorch checkpoint (legacy torch.save files are not "
            "supported; re-save it with a current torch or convert it to model.safetensors)"
        ) from err
    with archive:
        pickles = [n for n in archive.namelist() if n.endswith("/data.pkl")]
        if not pickles:
            raise UserError(f"{path}: no data.pkl inside; is this a PyTorch checkpoint?")
        prefix = pickles[0][: -len("/data.pkl")]
        with archive.open(pickles[0]) as f:
            state = _RestrictedUnpickler(f, archive, prefix).load()
    return {k: np.asarray(v) for k, v in state.items()}
