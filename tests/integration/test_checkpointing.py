"""Orbax checkpoints: exact round trip, integrity manifest and fallback, interrupted
saves, restore onto another mesh, and `load_params_for_init` from bert_jax and HF directories.
Sealing that scales (array fingerprints, no file read back; damage markers instead of
renames; a damaged step can be saved again; only what is read is verified)."""

import importlib.util
import json
import os
import pickle
import re
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import REPO_ROOT
from flax import traverse_util

from bert_jax.checkpoints import checkpointing, sealing
from bert_jax.checkpoints.checkpointing import (
    Checkpointer,
    checkpoint_problem,
    load_params_for_init,
)
from bert_jax.errors import SaveFailed, UserError
from bert_jax.pretraining.step import build_pretrainer
from bert_jax.training import sharding


def _test_config(fsdp: int):
    spec = importlib.util.spec_from_file_location("demo_config", REPO_ROOT / "configs" / "demo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config("test")
    config.mesh.data, config.mesh.fsdp = 1, fsdp
    return config


@pytest.fixture(scope="module")
def run():
    """A tiny pretrainer on 8 devices with fsdp=8 and a state that differs from its init."""
    config = _test_config(fsdp=8)
    mesh = sharding.make_mesh(config.mesh)
    with jax.set_mesh(mesh):
        pretrainer = build_pretrainer(config, mesh)
        state = pretrainer.init(jax.random.key(0))
        # Distinct values everywhere (Adam moments start at zero), so a mix-up would show.
        leaves, treedef = jax.tree.flatten(state)
        keys = jax.random.split(jax.random.key(1), len(leaves))
        leaves = [
            x + jax.random.normal(k, x.shape, x.dtype)
            if jnp.issubdtype(x.dtype, jnp.floating)
            else x + 3
            for x, k in zip(leaves, keys, strict=True)
        ]
        state = jax.device_put(jax.tree.unflatten(treedef, leaves), pretrainer.state_shardings)
    return config, mesh, pretrainer, state


def _assert_trees_equal(a, b):
    flat_a, flat_b = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(flat_a) == len(flat_b)
    for x, y in zip(flat_a, flat_b, strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.fixture
def no_pickle(monkeypatch):
    """Any unpickling during the test fails it."""

    def refuse(*args, **kwargs):
        raise AssertionError("pickle used while loading a checkpoint")

    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, refuse)


def _save(checkpointer, run, step, data_state=None, pending=None):
    config, mesh, pretrainer, state = run
    with jax.set_mesh(mesh):
        saved = checkpointer.save(
            step, state, data_state, rng=jax.random.key(7), pending_metrics=pending
        )
    checkpointer.wait()
    return saved


def _restore(checkpointer, run):
    with jax.set_mesh(run[1]):
        return checkpointer.restore(run[2].abstract_state)


def test_round_trip_is_exact(tmp_path, run, no_pickle):
    pending = [
        {"mlm_loss_sum": jnp.float32(1.2345678), "mlm_weight": jnp.float32(7.0)},
        {"mlm_loss_sum": jnp.float32(2.5e-8), "mlm_weight": jnp.float32(3.0)},
    ]
    checkpointer = Checkpointer(tmp_path, every_steps=3, keep=2, config=run[0])
    assert _save(checkpointer, run, 3, data_state=b"\x00\xffiterator", pending=pending)
    assert not _save(checkpointer, run, 3)  # an existing step is never overwritten
    checkpointer.close()

    restored = _restore(Checkpointer(tmp_path, 3, 2, run[0]), run)
    assert restored.step == 3
    _assert_trees_equal(restored.state, run[3])
    for got, want in zip(
        jax.tree.leaves(restored.state), jax.tree.leaves(run[2].abstract_state), strict=True
    ):
        assert got.sharding == want.sharding
    assert restored.data_state == b"\x00\xffiterator"
    np.testing.assert_array_equal(
        jax.random.key_data(restored.rng), jax.random.key_data(jax.random.key(7))
    )
    assert len(restored.pending_metrics) == 2
    for got, want in zip(restored.pending_metrics, pending, strict=True):
        for key in want:
            assert got[key].dtype == np.float32 and got[key] == np.asarray(want[key])
    saved_config = json.loads((tmp_path / "checkpoints" / "3" / "config" / "metadata").read_text())
    assert saved_config["model"]["hidden_size"] == run[0].model.hidden_size
    assert checkpoint_problem(tmp_path / "checkpoints" / "3") is None


def test_finetuning_layout_and_best(tmp_path, run, no_pickle):
    """layout="finetuning": checkpoints/<step> holds state/ and pending_metrics/ only; best/ keeps
    the highest-scoring evaluation's parameters, a lower score is not saved there at all."""
    config, mesh, pretrainer, state = run
    pending = [{"loss_sum": jnp.float32(0.75), "count": jnp.float32(4.0)}]
    params = state.params
    checkpointer = Checkpointer(tmp_path, 2, 1, layout="finetuning", best_metric="accuracy")
    with jax.set_mesh(mesh):
        assert checkpointer.save(2, state, pending_metrics=pending)
        assert checkpointer.save_best(2, params, {"accuracy": 0.5, "loss": 1.25})
        assert not checkpointer.save_best(4, params, {"accuracy": 0.25, "loss": 2.0})
        assert checkpointer.save_best(6, params, {"accuracy": 0.5, "loss": 1.0})  # newer of equal
    checkpointer.close()
    step_dir = tmp_path / "checkpoints" / "2"
    assert sorted(p.name for p in step_dir.iterdir() if p.is_dir()) == ["pending_metrics", "state"]
    assert sorted(p.name for p in (tmp_path / "best").iterdir()) == ["6"]

    reopened = Checkpointer(tmp_path, 2, 1, layout="finetuning", best_metric="accuracy")
    restored = _restore(reopened, run)
    assert restored.step == 2 and restored.data_state is None and restored.rng is None
    assert restored.pending_metrics == [{"loss_sum": 0.75, "count": 4.0}]
    _assert_trees_equal(restored.state, state)
    assert reopened.best_step() == (6, {"accuracy": 0.5, "loss": 1.0})
    with jax.set_mesh(mesh):
        assert not reopened.save_best(8, params, {"accuracy": 0.4, "loss": 0.5})
        best_step, best_params = reopened.restore_best(pretrainer.abstract_state.params)
    assert best_step == 6
    _assert_trees_equal(best_params, params)
    reopened.close()


def _largest_file(step_dir):
    files = [p for p in step_dir.rglob("*") if p.is_file() and "ocdbt.process" in str(p)]
    return max(files, key=lambda p: p.stat().st_size)


def _flip_byte(step_dir):
    path = _largest_file(step_dir)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def _truncate(step_dir):
    path = _largest_file(step_dir)  # its tail may be a B-tree node Orbax no longer reads
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _remove_array_file(step_dir):
    _largest_file(step_dir).unlink()


def _remove_manifest(step_dir):
    (step_dir / checkpointing.MANIFEST_NAME).unlink()


def _corrupt_json_item(step_dir):
    path = step_dir / "data_iterator" / "metadata"
    path.write_text(path.read_text().replace("4", "5"))


def _truncate_array_files(step_dir):
    """Every array data file cut short after its first 64 bytes: wherever the asynchronous writes
    put the parameters (a data file holds several arrays), the large ones are hit; cut to half,
    a file could keep every parameter in its first half and lose only optimizer state."""
    for path in step_dir.rglob("*"):
        if path.is_file() and "ocdbt.process" in str(path) and path.parent.name == "d":
            path.write_bytes(path.read_bytes()[:64])


def _flip_array_bytes(step_dir):
    """One byte in every 4 KiB of every array data file: a data file holds several arrays (which
    ones depends on how the asynchronous writes were batched), so one byte each could miss
    the parameters."""
    for path in step_dir.rglob("*"):
        if path.is_file() and "ocdbt.process" in str(path) and path.stat().st_size > 4096:
            data = bytearray(path.read_bytes())
            for offset in range(2048, len(data), 4096):
                data[offset] ^= 0x01
            path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "damage, reason",
    [
        (_flip_byte, r"array state/\S+ is corrupted \(fingerprint"),
        (_truncate, "could not be read"),
        (_remove_array_file, "could not be read"),
        (_remove_manifest, "the save never completed"),
        (_corrupt_json_item, "data_iterator/metadata is corrupted"),
    ],
    ids=["flipped_byte", "truncated", "missing_file", "no_manifest", "json_item"],
)
def test_damaged_checkpoint_is_never_loaded(tmp_path, run, capsys, damage, reason):
    checkpointer = Checkpointer(tmp_path, every_steps=2, keep=3, config=run[0])
    _save(checkpointer, run, 2, data_state={"position": 2})
    _save(checkpointer, run, 4, data_state={"position": 4})
    checkpointer.close()
    damage(tmp_path / "checkpoints" / "4")
    capsys.readouterr()

    checkpointer = Checkpointer(tmp_path, every_steps=2, keep=3, config=run[0])
    restored = _restore(checkpointer, run)
    lines = capsys.readouterr().out.strip().splitlines()
    assert restored.step == 2 and restored.data_state == {"position": 2}
    _assert_trees_equal(restored.state, run[3])
    assert len(lines) == 1 and "checkpoints/4 not loaded: " in lines[0], lines
    assert re.search(reason, lines[0]), lines[0]
    # Marked with one object (no rename, which gs:// cannot do atomically), kept for inspection.
    step_dir = tmp_path / "checkpoints" / "4"
    assert checkpoint_problem(step_dir).startswith("marked damaged")
    assert checkpointer.all_steps() == [2, 4]
    capsys.readouterr()
    assert _restore(checkpointer, run).step == 2  # skipped at once from now on
    assert "marked damaged" in capsys.readouterr().out
    # The run can write step 4 again, and that one is loaded next time.
    assert _save(checkpointer, run, 4, data_state={"position": 4})
    assert checkpoint_problem(step_dir) is None
    restored = _restore(checkpointer, run)
    assert restored.step == 4 and restored.data_state == {"position": 4}
    checkpointer.close()


def test_interrupted_save_never_costs_the_last_good_checkpoint(tmp_path, run, monkeypatch):
    checkpointer = Checkpointer(tmp_path, every_steps=2, keep=1, config=run[0])
    _save(checkpointer, run, 2, data_state={"position": 2})

    def crash(*args):  # the process dies after writing arrays, before sealing
        raise OSError("simulated crash while sealing")

    monkeypatch.setattr(sealing, "write_manifest", crash)
    monkeypatch.setattr(sealing, "_RETRY_DELAYS", (0.0,))  # each attempt fails the same way
    with pytest.raises(SaveFailed, match=r"checkpoints/4 could not be saved \(4 attempts; .*simul"):
        _save(checkpointer, run, 4, data_state={"position": 4})
    monkeypatch.undo()
    # The half-written step is deleted before the failure is raised, never in the background
    # afterwards (where it raced with whatever came next).
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["2"]
    assert checkpoint_problem(tmp_path / "checkpoints" / "2") is None  # keep=1, still there

    restarted = Checkpointer(tmp_path, every_steps=2, keep=1, config=run[0])
    assert restarted.all_steps() == [2]
    assert _restore(restarted, run).step == 2
    # A sealed newer step is what makes the old one go (keep=1).
    _save(restarted, run, 4)
    restarted.close()
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["4"]


def test_incompatible_model_is_a_clear_error(tmp_path, run):
    checkpointer = Checkpointer(tmp_path, every_steps=2, keep=1, config=run[0])
    _save(checkpointer, run, 2)
    config = _test_config(fsdp=8)
    config.model.intermediate_size = 128
    with jax.set_mesh(run[1]):
        other = build_pretrainer(config, run[1])
        with pytest.raises(UserError, match=r"does not fit .*intermediate/dense/kernel"):
            checkpointer.restore(other.abstract_state)
    checkpointer.close()


_RESTORE_ON_TWO_DEVICES = textwrap.dedent(
    """
    import importlib.util, json, sys
    import jax, numpy as np
    from bert_jax.training import sharding
    from bert_jax.checkpoints.checkpointing import Checkpointer
    from bert_jax.pretraining.step import build_pretrainer

    spec = importlib.util.spec_from_file_location("demo", "configs/demo.py")
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    config = demo.get_config("test")
    config.mesh.data, config.mesh.fsdp = 2, 1
    batch = {k: np.asarray(v) for k, v in np.load(sys.argv[2]).items()}
    mesh = sharding.make_mesh(config.mesh)
    with jax.set_mesh(mesh):
        pretrainer = build_pretrainer(config, mesh)
        restored = Checkpointer(sys.argv[1], 2, 1, config).restore(pretrainer.abstract_state)
        params = restored.state.params
        kernel = params["bert"]["encoder"]["layer_0"]["intermediate"]["dense"]["kernel"]
        leaves = jax.tree.leaves(params)
        report = {
            "devices": jax.device_count(),
            "kernel_mesh": dict(kernel.sharding.mesh.shape),
            "param_sum": sum(float(np.asarray(x, np.float64).sum()) for x in leaves),
        }
        state, metrics = pretrainer.train_step(  # consumes restored.state (donated)
            restored.state, pretrainer.shard_batch(batch), restored.rng
        )
        report.update(mlm_loss_sum=float(metrics["mlm_loss_sum"]), step=int(state.step))
        print(json.dumps(report))
    """
)


def _synthetic_batch(config, rng):
    b, t, p = config.batch_size, config.data.max_seq_length, config.data.max_predictions_per_seq
    vocab = config.model.vocab_size
    return {
        "input_ids": rng.integers(5, vocab, (b, t), dtype=np.int32),
        "attention_mask": np.ones((b, t), np.int32),
        "token_type_ids": np.zeros((b, t), np.int32),
        "masked_lm_positions": np.tile(np.arange(1, p + 1, dtype=np.int32), (b, 1)),
        "masked_lm_ids": rng.integers(5, vocab, (b, p), dtype=np.int32),
        "masked_lm_weights": np.ones((b, p), np.float32),
        "next_sentence_labels": rng.integers(0, 2, (b,), dtype=np.int32),
    }


def test_restore_on_another_mesh_and_continue(tmp_path, run):
    """Saved with fsdp=8 on 8 devices; restored with data=2 on 2 devices and trained a step."""
    config, mesh, pretrainer, state = run
    checkpointer = Checkpointer(tmp_path, every_steps=2, keep=1, config=config)
    _save(checkpointer, run, 2)
    checkpointer.close()
    batch = _synthetic_batch(config, np.random.default_rng(0))
    np.savez(tmp_path / "batch.npz", **batch)
    with jax.set_mesh(mesh):
        # donate_argnums consumes the state: step a copy.
        _, metrics = pretrainer.train_step(
            jax.tree.map(jnp.copy, state), pretrainer.shard_batch(batch), jax.random.key(7)
        )
    kernel = state.params["bert"]["encoder"]["layer_0"]["intermediate"]["dense"]["kernel"]
    assert dict(kernel.sharding.mesh.shape)["fsdp"] == 8
    param_sum = sum(float(np.asarray(x, np.float64).sum()) for x in jax.tree.leaves(state.params))

    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2")
    env["JAX_PLATFORMS"] = "cpu"
    result = subprocess.run(
        [sys.executable, "-c", _RESTORE_ON_TWO_DEVICES, str(tmp_path), str(tmp_path / "batch.npz")],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    other = json.loads(result.stdout.strip().splitlines()[-1])
    assert other["devices"] == 2
    assert other["kernel_mesh"] == {"data": 2, "fsdp": 1, "tensor": 1}
    assert other["param_sum"] == param_sum  # every value arrived
    assert other["step"] == int(state.step) + 1
    # Same step on another device layout: equal up to float32 reduction order.
    assert other["mlm_loss_sum"] == pytest.approx(float(metrics["mlm_loss_sum"]), rel=1e-5)


@pytest.fixture(scope="module")
def saved_run(tmp_path_factory, run):
    workdir = tmp_path_factory.mktemp("init_source")
    checkpointer = Checkpointer(workdir, every_steps=2, keep=2, config=run[0])
    _save(checkpointer, run, 2)
    checkpointer.close()
    return workdir


@pytest.mark.parametrize("where", ["workdir", "checkpoints", "step"])
def test_load_params_for_init_from_bert_jax(saved_run, run, where, no_pickle):
    path = {
        "workdir": saved_run,
        "checkpoints": saved_run / "checkpoints",
        "step": saved_run / "checkpoints" / "2",
    }[where]
    abstract = run[2].abstract_state.params
    whole = load_params_for_init(path, abstract)
    _assert_trees_equal(whole, run[3].params)
    for got, want in zip(jax.tree.leaves(whole), jax.tree.leaves(abstract), strict=True):
        assert got.sharding == want.sharding
    encoder = load_params_for_init(path, abstract["bert"], subtree=("bert",))
    _assert_trees_equal(encoder, run[3].params["bert"])
    nested = load_params_for_init(path, {"bert": abstract["bert"]}, subtree=("bert",))
    assert set(nested) == {"bert"}
    _assert_trees_equal(nested["bert"], run[3].params["bert"])


def test_load_params_for_init_from_hugging_face(tmp_path, run, no_pickle):
    from bert_jax.convert.hf import save_hf_checkpoint

    params = jax.device_get(run[3].params)
    save_hf_checkpoint(run[2].model_config, params, tmp_path / "hf")
    abstract = run[2].abstract_state.params
    loaded = load_params_for_init(tmp_path / "hf", abstract)
    _assert_trees_equal(loaded, params)
    assert jax.tree.leaves(loaded)[0].sharding == jax.tree.leaves(abstract)[0].sharding
    encoder = load_params_for_init(tmp_path / "hf", abstract["bert"], subtree=("bert",))
    _assert_trees_equal(encoder, params["bert"])


def test_load_params_for_init_lists_missing_and_unexpected_paths(saved_run, run):
    flat = traverse_util.flatten_dict(dict(run[2].abstract_state.params["bert"]))
    del flat[("pooler", "dense", "bias")]
    flat[("adapter", "kernel")] = jax.ShapeDtypeStruct((4, 4), jnp.float32)
    abstract = traverse_util.unflatten_dict(flat)
    with pytest.raises(UserError) as error:
        load_params_for_init(saved_run, abstract, subtree=("bert",))
    message = str(error.value)
    assert "missing 1 parameter(s): adapter/kernel" in message
    assert "unexpected 1 parameter(s): pooler/dense/bias" in message


def test_load_params_for_init_refuses_damaged_and_unknown_paths(saved_run, tmp_path, run):
    abstract = run[2].abstract_state.params
    with pytest.raises(UserError, match="not found"):
        load_params_for_init(tmp_path / "nowhere", abstract)
    with pytest.raises(UserError, match="neither a bert_jax workdir"):
        load_params_for_init(tmp_path, abstract)
    copy = tmp_path / "copy"
    subprocess.run(["cp", "-r", str(saved_run / "checkpoints" / "2"), str(copy)], check=True)
    _flip_array_bytes(copy)
    damaged = r"cannot be used: (array state/params/\S+ is corrupted|it could not be read)"
    with pytest.raises(UserError, match=damaged):
        load_params_for_init(copy, abstract)


def test_checkpoint_files_hold_no_pickles(saved_run):
    import inspect

    source = inspect.getsource(checkpointing)
    assert not re.search(r"import pickle|pickle\.|torch\.load|allow_pickle", source)
    for path in (saved_run / "checkpoints").rglob("*"):
        if path.is_file():
            head = path.read_bytes()[:2]
            assert not (head[:1] == b"\x80" and head[1:2] in b"\x02\x03\x04\x05"), path


def test_sealing_reads_back_no_array_file(tmp_path, run, monkeypatch):
    """The seal fingerprints the arrays on their devices when the save starts; only
    the small JSON files are read back (by the primary process), and a restore reads only them
    besides the arrays Orbax restores."""
    digested = []
    digest = sealing._digest
    recording = lambda path, **kw: digested.append(path) or digest(path, **kw)  # noqa: E731
    monkeypatch.setattr(sealing, "_digest", recording)
    checkpointer = Checkpointer(tmp_path, every_steps=2, keep=1, config=run[0])
    _save(checkpointer, run, 2, data_state={"position": 2})
    assert _restore(checkpointer, run).step == 2
    checkpointer.close()
    names = {str(p.relative_to(tmp_path / "checkpoints")) for p in digested}
    assert names and not any("/state/" in f"/{n}" for n in names), names
    manifest = json.loads(
        (tmp_path / "checkpoints" / "2" / checkpointing.MANIFEST_NAME).read_text()
    )
    leaves = jax.tree.leaves(run[3])
    assert len(manifest["arrays"]) == len(leaves)


def test_only_the_arrays_read_are_verified(tmp_path, run):
    """A damaged optimizer moment does not stop `load_params_for_init`, which never reads it;
    resuming, which does, falls back."""
    checkpointer = Checkpointer(tmp_path, every_steps=2, keep=2, config=run[0])
    _save(checkpointer, run, 2)
    _save(checkpointer, run, 4)
    checkpointer.close()
    path = tmp_path / "checkpoints" / "4" / checkpointing.MANIFEST_NAME
    manifest = json.loads(path.read_text())
    moment = next(name for name in manifest["arrays"] if name.startswith("state/opt_state/"))
    manifest["arrays"][moment] = "0" * 16  # as if that array's bytes had changed
    path.write_text(json.dumps(manifest))
    abstract = run[2].abstract_state.params
    _assert_trees_equal(load_params_for_init(tmp_path, abstract), run[3].params)
    assert _restore(Checkpointer(tmp_path, 2, 2, run[0]), run).step == 2
    assert "marked damaged" in checkpoint_problem(tmp_path / "checkpoints" / "4")


@pytest.mark.parametrize(
    "manifest, reason",
    [
        ("[1, 2]", "malformed (no 'files' object)"),
        ('{"files": {"../../etc/passwd": {"size": 1, "crc32": "0"}}}', "malformed entry"),
        ('{"files": {}, "arrays": [1]}', "'arrays' is not names"),
        ("{not json", "is unreadable"),
    ],
    ids=["not_an_object", "outside_the_step", "arrays_list", "not_json"],
)
def test_a_malformed_manifest_is_a_damaged_step(saved_run, tmp_path, manifest, reason):
    copy = tmp_path / "copy"
    subprocess.run(["cp", "-r", str(saved_run / "checkpoints" / "2"), str(copy)], check=True)
    (copy / checkpointing.MANIFEST_NAME).write_text(manifest)
    assert reason in checkpoint_problem(copy)


@pytest.mark.parametrize(
    "damage", [_truncate_array_files, _flip_array_bytes], ids=["truncated", "flipped_bytes"]
)
def test_init_checkpoint_falls_back_past_a_damaged_newest_step(tmp_path, run, capsys, damage):
    """A workdir whose newest step has damaged array files: init_checkpoint (pretraining's, and
    fine-tuning's encoder through pretrained.load_encoder) loads the previous intact step with one
    line naming the step skipped and why, as a resumed run does; the source is left as it was. A
    damaged step named explicitly stays an error."""
    checkpointer = Checkpointer(tmp_path, every_steps=2, keep=3, config=run[0])
    _save(checkpointer, run, 2)
    _save(checkpointer, run, 4)
    checkpointer.close()
    damage(tmp_path / "checkpoints" / "4")
    before = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    capsys.readouterr()

    abstract = run[2].abstract_state.params
    encoder = load_params_for_init(tmp_path, abstract["bert"], subtree=("bert",))
    _assert_trees_equal(encoder, run[3].params["bert"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2, lines
    assert lines[0].startswith(f"checkpoint {tmp_path}/checkpoints/4 not loaded: ")
    assert re.search(r"could not be read|is corrupted", lines[0]) and "older" in lines[0]
    assert lines[1] == f"init_checkpoint: parameters from {tmp_path}/checkpoints/2"
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == before
    with pytest.raises(UserError, match=r"checkpoints/4 cannot be used: .*pick another step"):
        load_params_for_init(tmp_path / "checkpoints" / "4", abstract)
    damage(tmp_path / "checkpoints" / "2")
    with pytest.raises(UserError, match=r"no intact checkpoint \(steps found: \[4, 2\]\)"):
        load_params_for_init(tmp_path, abstract)


def test_orbax_save_errors_are_not_printed_as_tracebacks():
    """A failed save is reported by SealedManager in one line; what Orbax logs of it is dropped,
    whether its traceback comes as exc_info or folded into the message (seen on gs:// with 403s)."""
    import logging

    from bert_jax.checkpoints.sealing import _NoTracebacks

    def record(message, exc_info=None, path="/site-packages/orbax/checkpoint/x.py"):
        return logging.LogRecord("absl", logging.ERROR, path, 1, message, None, exc_info)

    folded = "save failed: ValueError: 403\nTraceback (most recent call last):\n  File ..."
    keep = _NoTracebacks().filter
    assert not keep(record(folded))
    assert not keep(record("save failed", exc_info=(ValueError, ValueError("403"), None)))
    assert keep(record("save failed: 403"))  # a line without a traceback stays
    assert keep(record(folded, path="/work/bert_jax/training/loop.py"))  # not Orbax's: stays
