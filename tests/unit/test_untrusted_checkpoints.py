"""A checkpoint, config or vocabulary from the internet is read safely.

First hand-crafted hostile files (tensor views outside their storage, a missing storage,
a zip bomb, absurd configs, a 1 GB line, a hostile init_checkpoint), then seeded fuzzing of every
reader: each mutated file must end in a UserError or a correct load, never in another exception,
a hang, or an array read from outside the file (torch and safetensors results are compared byte
for byte with the independent decoders of tests/untrusted_files.py).
"""

from __future__ import annotations

import json
import pathlib
import shutil
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from untrusted_files import (
    PARAMS,
    TASK_INFO,
    TINY,
    Call,
    Storage,
    Tensor,
    abstract_params,
    deadline,
    orbax_step,
    set_declared_size,
    tiny_hf_dir,
    torch_zip,
)

from bert_jax import untrusted
from bert_jax.checkpoints import checkpointing, pretrained
from bert_jax.checkpoints.checkpointing import load_params_for_init
from bert_jax.convert import hf
from bert_jax.convert.torch_pickle import load_torch_state_dict
from bert_jax.data import tokenization
from bert_jax.data.tokenization import SPECIAL_TOKENS, WordPieceTokenizer
from bert_jax.errors import UserError


def float_storage(key: str, numel: int) -> tuple[Storage, bytes]:
    return Storage(key, "FloatStorage", numel), np.arange(numel, dtype=np.float32).tobytes()


# -- torch pickle: crafted views ---------------------------------------------------------------


@pytest.mark.parametrize(
    "offset, size, stride, reached",
    [
        (0, (100, 100), (100, 1), "reaches element 9999 of storage 0, which holds 12"),  # too big
        (10**9, (2,), (1,), "reaches element 1000000001"),  # offset far past the end
        (11, (3,), (-1,), "stride (-1,)"),  # a negative stride (walks backwards)
        (0, (3,), (6,), "reaches element 12 of storage 0, which holds 12"),  # strides past the end
        (-4, (2,), (1,), "storage offset -4"),
        (13, (0, 2), (2, 1), "reaches element 12"),  # empty, but starts beyond the storage
    ],
)
def test_torch_views_outside_their_storage_are_refused(tmp_path, offset, size, stride, reached):
    storage, raw = float_storage("0", 12)
    path = torch_zip(
        tmp_path / "x.bin", {"bad.weight": Tensor(storage, offset, size, stride)}, {"0": raw}
    )
    with pytest.raises(UserError) as error:
        load_torch_state_dict(path)
    message = str(error.value)
    assert str(path) in message and "'bad.weight'" in message and reached in message


def test_torch_in_bounds_overlapping_views_load_as_torch_loads_them(tmp_path):
    torch = pytest.importorskip("torch")
    storage, raw = float_storage("0", 12)
    state = {
        "matrix": Tensor(storage, 2, (2, 3), (3, 1)),
        "transposed": Tensor(storage, 0, (4, 3), (1, 4)),
        "tied": Tensor(storage, 1, (3, 4), (0, 1), parameter=True),  # expand: overlapping rows
        "last": Tensor(storage, 11, (), ()),
        "empty": Tensor(storage, 12, (0, 5), (5, 1)),
    }
    path = torch_zip(tmp_path / "ok.bin", state, {"0": raw})
    ours = load_torch_state_dict(path)
    theirs = torch.load(path, weights_only=True)
    assert ours.keys() == theirs.keys()
    for name, value in theirs.items():
        np.testing.assert_array_equal(ours[name], value.numpy(), name)
        assert ours[name].dtype == np.float32


def test_torch_missing_or_inconsistent_storage_is_a_user_error(tmp_path):
    storage, raw = float_storage("0", 12)
    path = torch_zip(tmp_path / "missing.bin", {"w": Tensor(storage, 0, (3,), (1,))}, {})
    with pytest.raises(UserError, match="storage 0 is missing: no entry archive/data/0"):
        load_torch_state_dict(path)
    # The record says 100 floats; the zip entry holds 12.
    path = torch_zip(
        tmp_path / "short.bin",
        {"w": Tensor(Storage("0", "FloatStorage", 100), 0, (50,), (1,))},
        {"0": raw},
    )
    with pytest.raises(UserError, match="should hold 100 float32 values .* has 48 bytes"):
        load_torch_state_dict(path)
    # One storage described as two dtypes.
    state = {
        "a": Tensor(storage, 0, (2,), (1,)),
        "b": Tensor(Storage("0", "IntStorage", 12), 0, (2,), (1,)),
    }
    with pytest.raises(UserError, match="storage 0 is described twice"):
        load_torch_state_dict(torch_zip(tmp_path / "twice.bin", state, {"0": raw}))


def test_torch_pickle_never_calls_other_code(tmp_path):
    marker = tmp_path / "ran"
    storage, raw = float_storage("0", 4)
    for call in (Call("os", "system", f"touch {marker}"), Call("builtins", "eval", "1+1")):
        path = torch_zip(
            tmp_path / "evil.bin", {"w": Tensor(storage, 0, (4,), (1,)), "x": call}, {"0": raw}
        )
        with pytest.raises(UserError, match="refusing to load"):
            load_torch_state_dict(path)
    assert not marker.exists()
    # Allowed names used as something else still end in a UserError.
    path = torch_zip(tmp_path / "odd.bin", {"w": Call("torch", "FloatStorage", 1)}, {})
    with pytest.raises(UserError):
        load_torch_state_dict(path)


def test_torch_zip_bomb_is_refused_before_anything_is_unpacked(tmp_path, monkeypatch):
    directory = tiny_hf_dir(tmp_path / "bomb")
    (directory / "model.safetensors").unlink()
    storage, raw = float_storage("0", 8)
    path = torch_zip(
        directory / "pytorch_model.bin", {"w": Tensor(storage, 0, (8,), (1,))}, {"0": raw}
    )
    # The entry now claims 4 GB uncompressed: far more than a 40-token, 8-wide BERT holds.
    path.write_bytes(set_declared_size(path.read_bytes(), "archive/data/0", 2**32 - 2))
    opened = []
    original_open = zipfile.ZipFile.open
    monkeypatch.setattr(
        zipfile.ZipFile,
        "open",
        lambda self, name, *a, **k: opened.append(name) or original_open(self, name, *a, **k),
    )
    with pytest.raises(UserError) as error:
        hf.load_hf_checkpoint(directory)
    assert "archive/data/0: 4294967294" in str(error.value) and "refusing to unpack" in str(
        error.value
    )
    assert opened == []


# -- safetensors and Hugging Face directories -------------------------------------------------


def test_safetensors_shapes_are_checked_against_the_config_before_reading(tmp_path, monkeypatch):
    directory = tiny_hf_dir(tmp_path / "hf", intermediate_size=13)
    import safetensors

    read = []
    original = safetensors.safe_open

    class Recording:
        def __init__(self, *args, **kwargs):
            self._inner = original(*args, **kwargs)

        def __enter__(self):
            self._file = self._inner.__enter__()
            return self

        def __exit__(self, *exc):
            return self._inner.__exit__(*exc)

        def __getattr__(self, name):
            if name in ("get_tensor", "get_tensors"):  # every way to read tensor data
                read.append(name)
            return getattr(self._file, name)

    monkeypatch.setattr(safetensors, "safe_open", Recording)
    monkeypatch.setattr("safetensors.numpy.safe_open", Recording)
    with pytest.raises(UserError) as error:
        hf.load_hf_checkpoint(directory)
    assert "bert.encoder.layer.0.intermediate.dense." in str(error.value) and "13" in str(
        error.value
    )
    assert read == []


def test_weights_must_be_floating_point(tmp_path):
    from safetensors.numpy import load_file, save_file

    directory = tiny_hf_dir(tmp_path / "hf")
    tensors = load_file(str(directory / "model.safetensors"))
    tensors["bert.pooler.dense.bias"] = tensors["bert.pooler.dense.bias"].astype(np.int32)
    save_file(tensors, str(directory / "model.safetensors"))
    with pytest.raises(UserError, match="bert.pooler.dense.bias is stored as int32"):
        hf.load_hf_checkpoint(directory)


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("vocab_size", 10**12, f"vocab_size 1000000000000 is more than {untrusted.MAX_VOCAB_SIZE}"),
        (
            "num_hidden_layers",
            10**6,
            f"num_hidden_layers 1000000 is more than {untrusted.MAX_LAYERS}",
        ),
        ("hidden_size", True, "hidden_size must be a positive integer, got True"),
        ("hidden_size", 768.0, "hidden_size must be a positive integer, got 768.0"),
        ("hidden_dropout_prob", "0.1", "hidden_dropout_prob must be in [0, 1), got '0.1'"),
        ("layer_norm_eps", float("nan"), "layer_norm_eps must be in (0, 1], got nan"),
        ("hidden_act", ["gelu"], "hidden_act ['gelu'] is not one of"),
        ("intermediate_size", 1 << 17, "parameters are more than"),  # each field fine, the sum not
    ],
)
def test_absurd_or_mistyped_config_values_are_refused(tmp_path, field, value, message):
    values = hf.hf_config_dict(TINY)
    values[field] = value
    if field == "intermediate_size":
        values.update(hidden_size=1 << 15, num_attention_heads=1, num_hidden_layers=1024)
    (tmp_path / "config.json").write_text(json.dumps(values))
    with pytest.raises(UserError) as error:
        hf.read_hf_config(tmp_path)
    assert str(tmp_path / "config.json") in str(error.value) and message in str(error.value)


def test_config_files_that_are_no_json_objects_are_refused(tmp_path):
    path = tmp_path / "config.json"
    for text, message in [
        ("[1, 2]", "expected a JSON object, found list"),
        ("[" * 100000 + "]" * 100000, "not valid JSON"),
        ('{"vocab_size": ' + "9" * 5000 + "}", "not valid JSON"),
        ("{'a': 1}", "not valid JSON"),
    ]:
        path.write_text(text)
        with pytest.raises(UserError, match=message):
            hf.read_hf_config(tmp_path)
    path.write_bytes(b'{"model_type": "\xff"}')
    with pytest.raises(UserError, match="not UTF-8"):
        hf.read_hf_config(tmp_path)
    with open(path, "wb") as f:  # sparse: takes no disk space
        f.truncate(untrusted.MAX_JSON_BYTES + 1)
    with pytest.raises(UserError, match="too large for a Hugging Face config"):
        hf.read_hf_config(tmp_path)


# -- vocabularies ------------------------------------------------------------------------------


def test_vocab_with_a_huge_line_or_size_is_refused(tmp_path):
    path = tmp_path / "long.txt"
    path.write_text(
        "\n".join([*SPECIAL_TOKENS, "x" * (untrusted.MAX_VOCAB_LINE_CHARS + 1), "y"]) + "\n"
    )
    with pytest.raises(UserError, match=f"line 6 is longer than {untrusted.MAX_VOCAB_LINE_CHARS}"):
        WordPieceTokenizer.from_vocab(path)
    # 300 MB with one line of NULs after the special tokens, sparse on disk; nothing is read.
    path = tmp_path / "huge.txt"
    path.write_text("\n".join(SPECIAL_TOKENS) + "\n")
    with open(path, "ab") as f:
        f.truncate(untrusted.MAX_VOCAB_BYTES + 1)
    with pytest.raises(UserError, match="too large for a vocabulary file"):
        WordPieceTokenizer.from_vocab(path)


def test_vocab_with_more_lines_than_any_vocabulary_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(tokenization, "MAX_VOCAB_SIZE", 8)
    path = tmp_path / "many.txt"
    path.write_text("\n".join([*SPECIAL_TOKENS, "a", "b", "c", "d"]) + "\n")
    with pytest.raises(UserError, match="more than 8 lines"):
        WordPieceTokenizer.from_vocab(path)


# -- fine-tuned and pretraining workdirs -------------------------------------------------------


def finetuned_dir(directory: pathlib.Path, task_info=TASK_INFO, model=None) -> pathlib.Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "task_info.json").write_text(json.dumps(task_info))
    (directory / "model_config.json").write_text(
        json.dumps(TINY.to_dict() if model is None else model)
    )
    return directory


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(kind=["classification"]), "kind ['classification'] is not one of"),
        (dict(num_labels=3), "num_labels is 3; a classification task with label_list"),
        (dict(label_list="neg pos"), "label_list must be a list"),
        (dict(head="../x"), "head '../x' is not a parameter name"),
        (dict(max_seq_length=10**12), "max_seq_length 1000000000000 is not in"),
        (dict(lowercase="yes"), "lowercase must be a bool"),
    ],
)
def test_task_info_is_checked(tmp_path, changes, message):
    directory = finetuned_dir(tmp_path / "ft", dict(TASK_INFO, **changes))
    with pytest.raises(UserError, match="task_info.json") as error:
        pretrained.inspect_checkpoint(directory)
    assert message in str(error.value)


def test_workdir_model_configs_are_checked(tmp_path):
    directory = finetuned_dir(tmp_path / "ft", model=dict(TINY.to_dict(), num_hidden_layers=10**6))
    with pytest.raises(UserError, match="model_config.json: invalid BertConfig: num_hidden_layers"):
        pretrained.inspect_checkpoint(directory)
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / "config.json").write_text(
        json.dumps({"model": dict(TINY.to_dict(), vocab_size=-3), "data": {}})
    )
    with pytest.raises(UserError, match=r"config.json \(model\): invalid BertConfig: vocab_size"):
        pretrained.inspect_checkpoint(workdir)
    (workdir / "config.json").write_text(
        json.dumps({"model": TINY.to_dict(), "data": {"vocab_file": 7}})
    )
    with pytest.raises(UserError, match="vocab_file must be a str"):
        pretrained.inspect_checkpoint(workdir)


# -- a bert_jax checkpoint as init_checkpoint --------------------------------------------------


def test_init_checkpoint_with_integer_parameters_is_refused(tmp_path):
    params = jax.tree.map(lambda x: x, PARAMS)
    params["bert"]["dense"]["bias"] = np.arange(4, dtype=np.int32)
    step_dir = orbax_step(tmp_path / "3", params)
    with pytest.raises(UserError, match="parameter bert/dense/bias is stored as int32"):
        load_params_for_init(step_dir, abstract_params())


def test_init_checkpoint_of_another_float_precision_is_cast_and_said(tmp_path, capsys):
    step_dir = orbax_step(tmp_path / "3", jax.tree.map(lambda x: x.astype(jnp.bfloat16), PARAMS))
    loaded = load_params_for_init(step_dir, abstract_params())
    assert (
        "3 parameter(s) cast, e.g. bert/dense/bias (bfloat16 -> float32)" in capsys.readouterr().out
    )
    for got, want in zip(jax.tree.leaves(loaded), jax.tree.leaves(PARAMS), strict=True):
        assert got.dtype == jnp.float32
        np.testing.assert_array_equal(got, want.astype(jnp.bfloat16).astype(np.float32))


def test_init_checkpoint_with_links_is_refused(tmp_path):
    step_dir = orbax_step(tmp_path / "3")
    data_file = next((step_dir / "state" / "d").iterdir())
    secret = tmp_path / "secret"
    shutil.copy(data_file, secret)
    data_file.unlink()
    data_file.symlink_to(secret)  # same bytes, so the manifest still matches
    assert checkpointing.checkpoint_problem(step_dir) is None
    with pytest.raises(UserError, match="holds a symbolic link"):
        load_params_for_init(step_dir, abstract_params())


@pytest.mark.parametrize("name", ["/dev/zero", "../../outside", "state/../../x", "state//d"])
def test_init_checkpoint_manifest_cannot_name_files_outside_the_step(tmp_path, name):
    step_dir = orbax_step(tmp_path / "3")
    manifest = json.loads((step_dir / checkpointing.MANIFEST_NAME).read_text())
    manifest["files"][name] = {"size": 10**15, "crc32": "00000000"}
    (step_dir / checkpointing.MANIFEST_NAME).write_text(json.dumps(manifest))
    with deadline(20), pytest.raises(UserError, match="malformed entry"):
        load_params_for_init(step_dir, abstract_params())


def test_init_checkpoint_manifest_reads_no_more_than_it_declares(tmp_path):
    step_dir = orbax_step(tmp_path / "3")
    manifest = json.loads((step_dir / checkpointing.MANIFEST_NAME).read_text())
    (step_dir / "zeros").symlink_to("/dev/zero")  # endless; the manifest says 4 bytes
    manifest["files"]["zeros"] = {"size": 4, "crc32": "2144df1c"}
    (step_dir / checkpointing.MANIFEST_NAME).write_text(json.dumps(manifest))
    with deadline(20), pytest.raises(UserError, match="zeros is not a regular file"):
        load_params_for_init(step_dir, abstract_params())
    manifest["files"] = {"big": {"size": 3, "crc32": "00000000"}}
    (step_dir / "big").write_bytes(b"0" * 10**6)
    (step_dir / checkpointing.MANIFEST_NAME).write_text(json.dumps(manifest))
    assert checkpointing.checkpoint_problem(step_dir) == "big is longer than the 3 bytes recorded"
