"""Seeded fuzzing of every reader of outside files.

Each test mutates a valid tiny file a few hundred times (flipped bytes, truncation, numbers
swapped for hostile ones, huge declared sizes) and reads every result. Each read must end in a
UserError or a correct load: torch and safetensors results are compared byte for byte with the
independent decoders of tests/untrusted_files.py (an array read from outside the file cannot
match), configs and vocabularies with what the file says. Anything else (another exception type,
a hang, a wrong array) fails the test. Run with -s for the tally of outcomes per mutation.
"""

from __future__ import annotations

import collections
import copy
import json
import math
import pathlib
import random
import shutil
import struct
import zipfile

import jax
import numpy as np
import pytest
from untrusted_files import (
    ITEMSIZE,
    NASTY_INTS,
    NASTY_VALUES,
    PARAMS,
    REFERENCE_MAX_ELEMENTS,
    TASK_INFO,
    TINY,
    Call,
    Invalid,
    Storage,
    Tensor,
    abstract_params,
    deadline,
    flip_bytes,
    orbax_step,
    reference_safetensors,
    reference_torch,
    reference_vocab,
    set_declared_size,
    torch_zip,
    truncate,
)

from bert_jax import untrusted
from bert_jax.checkpoints import checkpointing, pretrained
from bert_jax.checkpoints.checkpointing import load_params_for_init
from bert_jax.convert import hf, tf1
from bert_jax.convert.torch_pickle import load_torch_state_dict
from bert_jax.data.tokenization import SPECIAL_TOKENS, WordPieceTokenizer
from bert_jax.errors import UserError
from bert_jax.model.modeling import BertConfig


class Tally:
    """Outcomes per mutation kind; a case that neither loads nor refuses fails the test."""

    def __init__(self, name: str):
        self.name = name
        self.counts = collections.Counter()

    def run(self, case: str, load):
        try:
            with deadline(10):
                result = load()
        except UserError as err:
            assert str(err) and "\n" not in str(err).strip(), f"{case}: not one line: {err}"
            self.counts[case.split(":")[0], "refused"] += 1
            return None
        except Exception as err:
            pytest.fail(f"{self.name} {case}: {type(err).__name__}: {err}")
        self.counts[case.split(":")[0], "loaded"] += 1
        return result

    def report(self, minimum_share: float = 0.05) -> None:
        kinds = sorted({kind for kind, _ in self.counts})
        print(f"\n[{self.name}] loaded/refused per mutation:")
        for kind in kinds:
            print(
                f"  {kind:<14} {self.counts[kind, 'loaded']:>4} {self.counts[kind, 'refused']:>4}"
            )
        total = sum(self.counts.values())
        for outcome in ("loaded", "refused"):
            share = sum(n for (_, o), n in self.counts.items() if o == outcome) / total
            assert share >= minimum_share, f"only {share:.0%} {outcome}: the mutations miss"


def assert_as_decoded(loaded: dict[str, np.ndarray], decode, case: str) -> None:
    """What a loader returned is, byte for byte, what the independent decoder finds in the file;
    an array read from outside the file's buffers cannot pass."""
    try:
        want = decode()
    except Invalid as err:
        pytest.fail(f"{case} loaded, but the file holds no such tensors: {err}")
    assert loaded.keys() == want.keys(), case
    for name, (dtype, shape, data) in want.items():
        got = loaded[name]
        assert (str(got.dtype), got.shape) == (dtype, shape), f"{case} {name}"
        assert np.ascontiguousarray(got).tobytes() == data, f"{case} {name}: other bytes"


def mutate_number(rng, value, near: int = 0):
    return rng.choice((*NASTY_INTS, near - 1, near, near + 1, rng.randrange(2 * near + 2), value))


# -- torch pickle ------------------------------------------------------------------------------


def torch_spec():
    storages = {  # key: [type name, numel, raw bytes, module]
        "0": ["FloatStorage", 24, (np.arange(24, dtype=np.float32) * 1.5).tobytes(), "torch"],
        "1": ["HalfStorage", 6, np.arange(6, dtype=np.float16).tobytes(), "torch"],
        "2": ["LongStorage", 8, np.arange(8, dtype=np.int64).tobytes(), "torch"],
        "3": ["BFloat16Storage", 4, bytes(range(1, 9)), "torch"],
        "4": ["BoolStorage", 3, b"\x00\x01\x01", "torch"],
    }
    tensors = {  # name: [storage key, offset, size, stride, is a Parameter]
        "w": ["0", 0, [4, 6], [6, 1], False],
        "w_t": ["0", 0, [6, 4], [1, 6], True],
        "tail": ["0", 20, [4], [1], False],
        "tied": ["0", 0, [2, 3], [0, 1], False],
        "scalar": ["0", 5, [], [], False],
        "empty": ["0", 24, [0, 3], [3, 1], False],
        "half": ["1", 0, [2, 3], [3, 1], False],
        "ids": ["2", 0, [1, 8], [8, 1], False],
        "bf": ["3", 0, [4], [1], True],
        "mask": ["4", 0, [3], [1], False],
    }
    return storages, tensors


def write_torch_spec(path, storages, tensors, **kwargs):
    made = {k: Storage(k, t, n, module) for k, (t, n, _, module) in storages.items()}
    state = collections.OrderedDict()
    for name, record in tensors.items():
        if not isinstance(record, list):
            state[name] = record
            continue
        key, offset, size, stride, parameter = record
        storage = made.get(key, Storage(key, "FloatStorage", 4))
        as_tuple = lambda v: tuple(v) if isinstance(v, list) else v
        state[name] = Tensor(storage, offset, as_tuple(size), as_tuple(stride), parameter)
    raws = {k: raw for k, (_, _, raw, _) in storages.items()}
    return torch_zip(path, state, raws, **kwargs)


def mutate_torch(rng, path: pathlib.Path) -> str:
    storages, tensors = torch_spec()
    kind = rng.choice(
        ("bytes", "truncate", "declared", "pickle", "view", "view", "storage", "raw", "object")
    )
    if kind in ("bytes", "truncate", "declared"):
        data = write_torch_spec(path, storages, tensors).read_bytes()
        if kind == "bytes":
            data = flip_bytes(rng, data)
        elif kind == "truncate":
            data = truncate(rng, data)
        else:
            entry = rng.choice(["archive/data.pkl", *(f"archive/data/{k}" for k in storages)])
            data = set_declared_size(
                data, entry, rng.choice((0, 1, 2**31, 2**32 - 2, 2**32 - 1, rng.randrange(2**32)))
            )
        path.write_bytes(data)
        return kind
    if kind == "pickle":  # a valid zip around a damaged pickle
        with zipfile.ZipFile(write_torch_spec(path, storages, tensors)) as archive:
            pickled = archive.read("archive/data.pkl")
        write_torch_spec(path, storages, tensors, pickled=flip_bytes(rng, pickled))
        return kind
    name = rng.choice(sorted(tensors))
    record = tensors[name]
    if kind == "view":
        numel = storages.get(record[0], [None, 24])[1]
        field = rng.choice(("offset", "size", "stride", "swap", "key", "dims"))
        if field == "offset":
            record[1] = mutate_number(rng, record[1], numel)
        elif field in ("size", "stride") and record[2]:
            values = record[2 if field == "size" else 3]
            values[rng.randrange(len(values))] = mutate_number(rng, 0, numel)
        elif field == "swap":
            record[2], record[3] = record[3], record[2]
        elif field == "key":
            record[0] = rng.choice(("0", "1", "2", "3", "4", "9", "../0"))
        else:
            record[rng.choice((2, 3))] = rng.choice(
                ([1] * 9, [], [2, 2, 2], 7, None, "12", {"a": 1})
            )
    elif kind == "storage":
        storage = storages[record[0]]
        field = rng.choice(("type", "numel", "module"))
        if field == "type":
            storage[0] = rng.choice((*ITEMSIZE, "EvilStorage", "Storage"))
        elif field == "numel":
            storage[1] = mutate_number(rng, storage[1], storage[1])
        else:
            storage[3] = rng.choice(("os", "builtins", "torch.storage"))
    elif kind == "raw":
        raw = storages[record[0]][2]
        storages[record[0]][2] = (
            raw[: rng.randrange(len(raw))]
            if rng.random() < 0.5
            else raw + bytes(rng.randrange(1, 9))
        )
    else:
        tensors[name] = rng.choice(
            (
                3,
                1.5,
                "x",
                None,
                (1, 2),
                Call("builtins", "len", "abc"),
                Call("collections", "OrderedDict"),
            )
        )
    write_torch_spec(path, storages, tensors)
    return kind


def test_fuzz_torch_pickle(tmp_path):
    rng = random.Random(20)
    tally = Tally("pytorch_model.bin")
    for i in range(400):
        path = tmp_path / f"{i}.bin"
        kind = mutate_torch(rng, path)
        loaded = tally.run(
            f"{kind}: case {i}",
            lambda p=path: load_torch_state_dict(p, max_bytes=REFERENCE_MAX_ELEMENTS),
        )
        if loaded is None:
            continue
        assert_as_decoded(loaded, lambda p=path: reference_torch(p), f"case {i} ({kind})")
    tally.report()


# -- safetensors ------------------------------------------------------------------------------


def safetensors_base(path: pathlib.Path) -> bytes:
    import ml_dtypes
    from safetensors.numpy import save_file

    tensors = {
        "a": np.arange(12, dtype=np.float32).reshape(3, 4),
        "b": np.arange(5, dtype=np.float16),
        "c": np.arange(4, dtype=np.int64).reshape(2, 2),
        "d": np.arange(3).astype(ml_dtypes.bfloat16),
        "e": np.array([True, False]),
    }
    save_file(tensors, str(path), metadata={"format": "pt"})
    return path.read_bytes()


def mutate_safetensors(rng, base: bytes) -> tuple[str, bytes]:
    (length,) = struct.unpack_from("<Q", base)
    header, body = json.loads(base[8 : 8 + length]), base[8 + length :]
    kind = rng.choice(
        ("bytes", "header-bytes", "data-bytes", "truncate", "length", "field", "field", "entries")
    )
    if kind == "bytes":
        return kind, flip_bytes(rng, base)
    if kind == "header-bytes":
        return kind, flip_bytes(rng, base, start=8, stop=8 + length)
    if kind == "data-bytes":  # still valid: the values must come from where the header says
        return kind, flip_bytes(rng, base, start=8 + length)
    if kind == "truncate":
        return kind, truncate(rng, base)
    if kind == "length":
        return kind, struct.pack("<Q", rng.choice(NASTY_INTS) % 2**64) + base[8:]
    names = sorted(n for n in header if n != "__metadata__")
    if kind == "field":
        entry = header[rng.choice(names)]
        field = rng.choice(("dtype", "shape", "data_offsets"))
        if field == "dtype":
            entry["dtype"] = rng.choice(
                ("F64", "F32", "F16", "BF16", "I64", "I8", "BOOL", "X9", 3, None)
            )
        elif entry[field] and rng.random() < 0.8:
            entry[field][rng.randrange(len(entry[field]))] = rng.choice(NASTY_VALUES)
        else:
            entry[field] = rng.choice(([], [1] * 9, [2**40, 2**40], "3", None))
    else:
        action = rng.choice(("drop", "alias", "metadata"))
        if action == "drop":
            del header[rng.choice(names)]
        elif action == "alias":  # a second name over the same bytes
            header["alias"] = copy.deepcopy(header[rng.choice(names)])
        else:
            header["__metadata__"] = rng.choice(NASTY_VALUES)
    text = json.dumps(header).encode()
    return kind, struct.pack("<Q", len(text)) + text + body


def test_fuzz_safetensors(tmp_path):
    rng = random.Random(21)
    base = safetensors_base(tmp_path / "base.safetensors")
    tally = Tally("model.safetensors")
    path = tmp_path / "model.safetensors"
    for i in range(300):
        kind, data = mutate_safetensors(rng, base)
        path.write_bytes(data)
        loaded = tally.run(
            f"{kind}: case {i}", lambda p=path: hf.read_safetensors(p, max_bytes=1 << 16)
        )
        if loaded is None:
            continue
        assert_as_decoded(loaded, lambda d=data: reference_safetensors(d), f"case {i} ({kind})")
    tally.report()


# -- configs -----------------------------------------------------------------------------------

_LIMITS = {
    "vocab_size": untrusted.MAX_VOCAB_SIZE,
    "hidden_size": untrusted.MAX_HIDDEN_SIZE,
    "num_hidden_layers": untrusted.MAX_LAYERS,
    "num_attention_heads": untrusted.MAX_HIDDEN_SIZE,
    "intermediate_size": untrusted.MAX_INTERMEDIATE_SIZE,
    "max_position_embeddings": untrusted.MAX_POSITIONS,
    "type_vocab_size": untrusted.MAX_TOKEN_TYPES,
}


def assert_sane(config: BertConfig, said: dict, case: str) -> None:
    """A loaded config is what the file said, within the documented bounds."""
    for field, limit in _LIMITS.items():
        value = getattr(config, field)
        assert type(value) is int and 0 < value <= limit, f"{case}: {field}={value!r}"
    assert config.num_parameters() <= untrusted.MAX_PARAMETERS, case
    for field in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
        assert 0 <= getattr(config, field) < 1, case
    assert 0 < config.layer_norm_eps <= 1 and math.isfinite(config.initializer_range), case
    for field, value in said.items():
        if field in _LIMITS:
            assert getattr(config, field) == value, f"{case}: {field}"


def mutate_json(rng, values: dict, fields) -> tuple[str, str]:
    """(kind, JSON text) of a mutated copy of values."""
    values = copy.deepcopy(values)
    kind = rng.choice(
        ("value", "value", "value", "delete", "bytes", "truncate", "document", "digits")
    )
    if kind == "value":
        values[rng.choice(fields)] = rng.choice(
            (*NASTY_VALUES, 1, 2, 4, 8, 16, 64, 0.1, "gelu", "relu")
        )
    elif kind == "delete":
        values.pop(rng.choice(fields), None)
    text = json.dumps(values)
    if kind == "bytes":
        text = flip_bytes(rng, text.encode()).decode("latin-1")
    elif kind == "truncate":
        text = text[: rng.randrange(len(text))]
    elif kind == "document":
        text = rng.choice(("[]", "1", '"x"', "null", "[" * 100000, '{"a": ' * 100000, "NaN", ""))
    elif kind == "digits":
        field = rng.choice(fields)
        text = json.dumps(dict(values, **{field: 0})).replace(
            f'"{field}": 0', f'"{field}": {"9" * rng.choice((20, 5000))}'
        )
    return kind, text


def test_fuzz_configs(tmp_path):
    rng = random.Random(22)
    tally = Tally("config files")
    hf_values = hf.hf_config_dict(TINY)
    tf1_values = tf1.tf1_config_dict(TINY)
    fields = sorted(set(hf_values) | {"layer_norm_eps", "pre_layer_norm", "remat_policy"})
    for i in range(300):
        case_dir = tmp_path / str(i)
        case_dir.mkdir()
        reader = ("hf", "tf1", "model_config", "workdir", "task_info")[i % 5]
        base = {"hf": hf_values, "tf1": tf1_values, "task_info": TASK_INFO}.get(
            reader, TINY.to_dict()
        )
        keys = sorted(TASK_INFO) if reader == "task_info" else fields
        kind, text = mutate_json(rng, base, keys)
        encoded = text.encode("latin-1" if kind == "bytes" else "utf-8")
        said = json.loads(text) if _parses(text) else {}
        if reader == "hf":
            (case_dir / "config.json").write_bytes(encoded)
            load = lambda d=case_dir: hf.read_hf_config(d)
        elif reader == "tf1":
            (case_dir / "bert_config.json").write_bytes(encoded)
            load = lambda d=case_dir: tf1.read_tf1_config(d / "bert_config.json")
        elif reader == "model_config":
            (case_dir / "model_config.json").write_bytes(encoded)
            load = lambda d=case_dir: BertConfig.from_json_file(d / "model_config.json")
        elif reader == "workdir":  # the model part of a pretraining workdir's config.json
            wrapped = f'{{"model": {text}, "data": {{"vocab_file": "vocab.txt"}}}}'
            (case_dir / "config.json").write_bytes(
                wrapped.encode("latin-1" if kind == "bytes" else "utf-8")
            )
            load = lambda d=case_dir: pretrained.inspect_checkpoint(d).bert_config
        else:
            (case_dir / "task_info.json").write_bytes(encoded)
            (case_dir / "model_config.json").write_text(json.dumps(TINY.to_dict()))
            load = lambda d=case_dir: pretrained.inspect_checkpoint(d)
        loaded = tally.run(f"{reader}-{kind}: case {i}", load)
        if loaded is None:
            continue
        if reader == "task_info":
            info = loaded.task_info
            assert info["kind"] in ("classification", "regression", "token_classification", "squad")
            assert type(info["num_labels"]) is int and info["num_labels"] >= 1, f"case {i}"
            continue
        assert_sane(loaded, said if isinstance(said, dict) else {}, f"case {i} ({reader}, {kind})")
    tally.report()


def _parses(text: str) -> bool:
    try:
        json.loads(text)
        return True
    except (ValueError, RecursionError):
        return False


# -- vocabularies ------------------------------------------------------------------------------


def test_fuzz_vocab(tmp_path):
    rng = random.Random(23)
    tally = Tally("vocab.txt")
    base = (
        "\n".join([*SPECIAL_TOKENS, "the", "##s", "a", "b", "##ing", "日", "über", "x" * 50]) + "\n"
    )
    for i in range(200):
        kind = rng.choice(("bytes", "bytes", "truncate", "long-line", "odd-line", "delete"))
        data = base.encode()
        lines = base.split("\n")
        if kind == "bytes":
            data = flip_bytes(rng, data)
        elif kind == "truncate":
            data = truncate(rng, data)
        else:
            position = rng.randrange(len(lines))
            if kind == "long-line":
                length = rng.choice((4095, 4096, 4097, 5000, 100000))
                lines.insert(position, rng.choice(("x", "é", "日")) * length)
            elif kind == "odd-line":
                lines.insert(
                    position,
                    rng.choice(("\r", "\x00", "\u2028", "\x85", " [PAD] ", "\ufeff", "a\rb")),
                )
            else:
                del lines[position]
            data = "\n".join(lines).encode()
        path = tmp_path / f"vocab{i}.txt"  # one file per case: tokenizers are cached per file
        path.write_bytes(data)
        tokenizer = tally.run(f"{kind}: case {i}", lambda p=path: WordPieceTokenizer.from_vocab(p))
        if tokenizer is not None:
            assert tokenizer.vocab == reference_vocab(data), f"case {i} ({kind})"
            assert max(map(len, tokenizer.vocab)) <= untrusted.MAX_VOCAB_LINE_CHARS
    tally.report()


# -- a bert_jax checkpoint as init_checkpoint --------------------------------------------------


def _mutate_json_file(rng, path: pathlib.Path) -> None:
    """Replaces a random leaf or branch of a JSON file by a hostile value."""
    values = json.loads(path.read_text())
    node = values
    for _ in range(rng.randrange(1, 6)):
        keys = list(node) if isinstance(node, dict) else list(range(len(node)))
        if not keys:
            break
        key = rng.choice(keys)
        if isinstance(node[key], dict | list) and node[key] and rng.random() < 0.7:
            node = node[key]  # go deeper
            continue
        node[key] = rng.choice(NASTY_VALUES)
        break
    path.write_text(json.dumps(values))


# Orbax's event loop complains on stderr after some failed restores; the test judges the results.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_fuzz_orbax_init_checkpoint(tmp_path):
    rng = random.Random(24)
    tally = Tally("init_checkpoint")
    base = orbax_step(tmp_path / "base" / "3")
    files = sorted(
        p.relative_to(base)
        for p in base.rglob("*")
        if p.is_file() and p.name != checkpointing.MANIFEST_NAME
    )
    abstract = abstract_params()
    json_files = [name for name in files if (base / name).read_bytes()[:1] == b"{"]
    for i in range(200):
        step_dir = tmp_path / str(i) / "3"
        shutil.copytree(base, step_dir)
        kind = rng.choice(("bytes", "bytes", "truncate", "json", "delete"))
        name = rng.choice(json_files if kind == "json" else files)
        target = step_dir / name
        if kind == "json":
            _mutate_json_file(rng, target)
        elif kind == "truncate":
            target.write_bytes(truncate(rng, target.read_bytes()))
        elif kind == "delete":
            target.unlink()
        else:
            target.write_bytes(flip_bytes(rng, target.read_bytes()))
        # Resealed as whoever changed the files would: every file's CRC, no array fingerprints
        # (only bert_jax's own save can take those), so the damaged bytes reach the readers.
        checkpointing.write_manifest(step_dir, 3, None)
        loaded = tally.run(
            f"{kind}: case {i} {name}", lambda d=step_dir: load_params_for_init(d, abstract)
        )
        if loaded is None:
            continue
        for got, want in zip(jax.tree.leaves(loaded), jax.tree.leaves(abstract), strict=True):
            assert (got.shape, got.dtype) == (want.shape, want.dtype), f"case {i}"
        if "d" not in name.parts:  # only the OCDBT data files hold the values
            for got, want in zip(jax.tree.leaves(loaded), jax.tree.leaves(PARAMS), strict=True):
                np.testing.assert_array_equal(got, want, f"case {i} ({kind} {name})")
    tally.report()
