"""Untrusted google-research/bert TF1 checkpoints: names, shapes and dtypes are checked
against bert_config.json before any variable is read, and a fuzzed checkpoint ends in a UserError
or in exactly the saved parameters.

Needs TensorFlow (`make test-tf` runs this file in .venv-tf); the main suite skips it visibly.
"""

from __future__ import annotations

import collections
import json
import random

import jax
import numpy as np
import pytest
from untrusted_files import TINY, deadline, flip_bytes, tiny_params, truncate

from bert_jax.convert import tf1
from bert_jax.errors import UserError


@pytest.fixture(scope="module")
def saved(tf, tmp_path_factory):
    return tf1.save_tf1_checkpoint(TINY, tiny_params(), tmp_path_factory.mktemp("tf1") / "ckpt")


def _copy(saved, directory):
    directory.mkdir()
    for path in saved.iterdir():
        (directory / path.name).write_bytes(path.read_bytes())
    return directory


def _recording_reader(tf, monkeypatch) -> list[str]:
    """Makes tf.train.load_checkpoint return readers that log every get_tensor call."""
    read = []
    original = tf.train.load_checkpoint

    class Reader:
        def __init__(self, inner):
            self._inner = inner

        def get_tensor(self, name):
            read.append(name)
            return self._inner.get_tensor(name)

        def __getattr__(self, name):
            return getattr(self._inner, name)

    monkeypatch.setattr(tf.train, "load_checkpoint", lambda prefix: Reader(original(prefix)))
    return read


def test_tf1_shapes_are_checked_before_any_variable_is_read(tf, saved, tmp_path, monkeypatch):
    directory = _copy(saved, tmp_path / "c")
    values = json.loads((directory / "bert_config.json").read_text())
    (directory / "bert_config.json").write_text(json.dumps(dict(values, intermediate_size=13)))
    read = _recording_reader(tf, monkeypatch)
    with pytest.raises(UserError) as error:
        tf1.load_tf1_checkpoint(directory, verbose=False)
    assert "bert/encoder/layer_0/intermediate/dense/" in str(error.value)
    assert "13" in str(error.value)
    assert read == []


def test_tf1_integer_variables_are_refused(tf, tmp_path):
    variables = {}
    reader = tf.train.load_checkpoint(
        str(tf1.find_tf1_checkpoint(tf1.save_tf1_checkpoint(TINY, tiny_params(), tmp_path / "ok")))
    )
    for name in reader.get_variable_to_shape_map():
        variables[name] = reader.get_tensor(name)
    variables["bert/pooler/dense/bias"] = variables["bert/pooler/dense/bias"].astype(np.int32)
    prefix = tmp_path / "ok" / tf1.CHECKPOINT_PREFIX
    names = sorted(variables)
    tf.raw_ops.SaveV2(
        prefix=str(prefix),
        tensor_names=names,
        shape_and_slices=[""] * len(names),
        tensors=[tf.constant(variables[n]) for n in names],
    )
    with pytest.raises(UserError, match="bert/pooler/dense/bias is stored as int32"):
        tf1.load_tf1_checkpoint(tmp_path / "ok", verbose=False)


def test_fuzz_tf1_checkpoint(tf, saved, tmp_path):
    rng = random.Random(25)
    want = jax.tree.leaves(tiny_params())
    files = sorted(p.name for p in saved.iterdir() if p.name.startswith(tf1.CHECKPOINT_PREFIX))
    counts = collections.Counter()
    for i in range(150):
        directory = _copy(saved, tmp_path / str(i))
        target = directory / rng.choice(files)
        kind = rng.choice(("bytes", "bytes", "truncate", "delete"))
        if kind == "bytes":
            target.write_bytes(flip_bytes(rng, target.read_bytes()))
        elif kind == "truncate":
            target.write_bytes(truncate(rng, target.read_bytes()))
        else:
            target.unlink()
        case = f"case {i} ({kind} {target.name})"
        try:
            with deadline(20):
                _, params = tf1.load_tf1_checkpoint(directory, verbose=False)
        except UserError:
            counts[kind, "refused"] += 1
            continue
        except Exception as err:
            pytest.fail(f"{case}: {type(err).__name__}: {err}")
        counts[kind, "loaded"] += 1
        # TensorFlow checksums every variable: what loads is exactly what was saved.
        for got, expected in zip(jax.tree.leaves(params), want, strict=True):
            np.testing.assert_array_equal(got, expected, case)
    print(f"\n[TF1 checkpoint] {dict(counts)}")
    assert sum(n for (_, outcome), n in counts.items() if outcome == "refused") > 50
