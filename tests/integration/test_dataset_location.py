"""Once prepared, pretraining reads only the prepared dataset. It finds it from
the workdir's record, data.dataset_dir or the inputs' names/sizes/mtimes (never their bytes),
survives the raw text being deleted, and says in one line what is missing or ambiguous. The
cloud path (gs:// text, gs:// data_dir) runs against the suite's fake-gcs-server on 127.0.0.1."""

import gzip
import importlib.util
import json
import os
import subprocess
import sys

import pytest
from conftest import REPO_ROOT

from bert_jax.data import corpus, input_pipeline
from bert_jax.data.corpus import dataset
from bert_jax.errors import UserError
from bert_jax.pretraining import train as train_lib
from bert_jax.pretraining.config import data_config_dict, validate_pretraining_config
from bert_jax.training.metrics import read_metrics


def _chapters(first: int, count: int) -> bytes:
    with gzip.open(input_pipeline.BUNDLED_CORPUS, "rb") as f:
        return b"\n\n".join(f.read().split(b"\n\n")[first : first + count]) + b"\n"


def _demo_test_config():
    spec = importlib.util.spec_from_file_location("demo_config", REPO_ROOT / "configs" / "demo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config("test")


def _data_config(input_files, data_dir, **overrides):
    config = data_config_dict()
    config.update(input_files=str(input_files), data_dir=str(data_dir), show_progress=False)
    config.update(overrides)
    return config


def test_pretraining_after_the_raw_text_is_deleted(tmp_path, monkeypatch):
    text = tmp_path / "corpus" / "genesis.txt"
    text.parent.mkdir()
    text.write_bytes(_chapters(0, 120))
    data_dir = tmp_path / "data"
    prepared = input_pipeline.prepare_data(_data_config(text, data_dir))
    text.unlink()  # from here on only the prepared dataset exists

    lookups = []
    resolve = dataset.resolve_input_files
    monkeypatch.setattr(dataset, "resolve_input_files", lambda f: lookups.append(f) or resolve(f))
    config = _demo_test_config()
    config.data.update(input_files=str(text), data_dir=str(data_dir), show_progress=False)
    config.mesh.data = -1  # the 8 test devices, one row each
    config.update(
        num_train_steps=4, log_every_steps=2, eval_every_steps=2, checkpoint_every_steps=4
    )
    workdir = tmp_path / "run"
    train_lib.train_and_evaluate(config, workdir)
    evals = [r for r in read_metrics(workdir) if "eval_loss" in r]
    assert [r["step"] for r in evals] == [2, 4] and all(r["eval_batches"] == 2 for r in evals)
    assert lookups == [str(text)]  # one look at start-up, none per evaluation
    record = json.loads((workdir / "dataset.json").read_text())
    assert record["dataset_dir"] == prepared["dataset_dir"]

    # Resuming reads the recorded dataset; other data for the same workdir is an error.
    assert input_pipeline.prepare_data(config.data, workdir)["dataset_dir"] == record["dataset_dir"]
    text.write_bytes(_chapters(120, 30))
    with pytest.raises(UserError, match="was trained on .*, but the config now names other data"):
        input_pipeline.prepare_data(config.data, workdir)
    text.unlink()
    os.rename(record["dataset_dir"], record["dataset_dir"] + ".moved")
    with pytest.raises(UserError, match="was trained on .*, which is gone or incomplete"):
        input_pipeline.prepare_data(config.data, workdir)


def test_finding_a_dataset_is_explicit_or_one_clear_error(tmp_path):
    data_dir = tmp_path / "data"
    first, second = tmp_path / "a.txt", tmp_path / "b.txt"
    first.write_bytes(_chapters(0, 20))
    second.write_bytes(_chapters(20, 20))
    a = input_pipeline.prepare_data(_data_config(first, data_dir))["dataset_dir"]
    with pytest.raises(UserError, match="data.input_files: .*nope.txt matches no file, and"):
        input_pipeline.open_dataset(_data_config(tmp_path / "nope.txt", data_dir))
    assert input_pipeline.open_dataset(_data_config("", data_dir)).directory == a  # the only one
    b = input_pipeline.prepare_data(_data_config(second, data_dir))["dataset_dir"]
    with pytest.raises(UserError, match="holds 2 datasets prepared: set data.dataset_dir to one"):
        input_pipeline.open_dataset(_data_config("", data_dir))
    explicit = _data_config("/gone/*.txt", tmp_path / "elsewhere", dataset_dir=b)
    assert (
        input_pipeline.open_dataset(explicit).directory == b
    )  # neither input_files nor data_dir read
    with pytest.raises(UserError, match="no prepared dataset in .*missing"):
        input_pipeline.open_dataset(
            _data_config("", data_dir, dataset_dir=str(tmp_path / "missing"))
        )

    # The same paths prepared twice (the text changed in between), then the text deleted.
    first.write_bytes(_chapters(40, 20))
    input_pipeline.prepare_data(_data_config(first, data_dir))
    first.unlink()
    with pytest.raises(
        UserError, match="holds 2 datasets prepared from these paths with these settings: set"
    ):
        input_pipeline.open_dataset(_data_config(first, data_dir))

    vocab = tmp_path / "other_vocab.txt"
    vocab.write_text(open(input_pipeline.BUNDLED_VOCAB).read() + "extra\n")
    with pytest.raises(UserError, match="is not the vocabulary .* was tokenized with"):
        input_pipeline.open_dataset(
            _data_config("", data_dir, dataset_dir=a, vocab_file=str(vocab))
        )


# -- the cloud path ----------------------------------------------------------------------------


@pytest.fixture
def gcs_dir(gcs, monkeypatch, tmp_path):
    """A folder of its own in the suite's GCS bucket (tests/conftest.py `gcs`), gcsfs/epath
    pointed at it, and a local data cache for this test."""
    gcsfs = pytest.importorskip("gcsfs")
    bucket, _ = gcs
    monkeypatch.setenv("BERT_JAX_DATA_CACHE", str(tmp_path / "mirror"))
    gcsfs.GCSFileSystem.clear_instance_cache()
    try:
        yield f"gs://{bucket}/{tmp_path.name}"
    finally:
        gcsfs.GCSFileSystem.clear_instance_cache()


def test_prepare_and_read_on_gcs(gcs_dir, tmp_path):
    from etils import epath

    for name, chapters in (("a.txt", _chapters(0, 15)), ("b.txt", _chapters(15, 15))):
        (epath.Path(gcs_dir) / "corpus" / name).write_bytes(chapters)
    result = subprocess.run(
        [sys.executable, "-m", "bert_jax.data.prepare", f"--input_files={gcs_dir}/corpus/*.txt",
         f"--vocab_file={input_pipeline.BUNDLED_VOCAB}", f"--data_dir={gcs_dir}/data",
         "--num_workers=2"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "documents               30" in result.stdout

    config = _demo_test_config()
    config.data.update(input_files=f"{gcs_dir}/corpus/*.txt", data_dir=f"{gcs_dir}/data")
    validate_pretraining_config(config, num_devices=1)  # gs:// input_files are fine
    prepared = input_pipeline.open_dataset(config.data)  # found by name, size and mtime
    assert prepared.directory.startswith(f"{gcs_dir}/data/pretraining_corpus/a_")
    assert not prepared.built_now and prepared.report["documents"] == 30
    local = corpus.list_prepared(f"{gcs_dir}/data")[0]
    assert local.directory == prepared.directory
    batch = next(
        input_pipeline.make_pretraining_iterator(
            config.data, split="train", global_batch_size=4, seed=0
        )
    )  # read from a local mirror: ArrayRecord reads local files only
    assert batch["input_ids"].shape == (4, 64)
    assert (tmp_path / "mirror" / "gs" / gcs_dir.removeprefix("gs://") / "data").is_dir()
