"""Hugging Face hub names as checkpoint paths, read from a hub cache the tests build (laid out as
huggingface_hub lays it out: blobs, snapshot links, refs/main) with HF_HUB_OFFLINE=1: pipelines,
fine-tuning's and pretraining's init_checkpoint and the export CLI; offline and not cached, one
line naming the download command."""

import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest
from conftest import REPO_ROOT
from tiny_models import save_tiny_hf_bert

import bert_jax
from bert_jax.checkpoints import checkpointing, pretrained
from bert_jax.convert import hub
from bert_jax.data.tokenization import WordPieceTokenizer
from bert_jax.errors import UserError
from bert_jax.finetuning import train as finetune_lib
from bert_jax.finetuning.config import finetuning_config, use_test_mode, validate_finetuning_config

TASKS = REPO_ROOT / "tests" / "data" / "tasks"
REVISION = "86b5e0934494bd15c9632b12f734a8a67f723594"


def cache_model(cache: pathlib.Path, repo_id: str, model_dir: pathlib.Path) -> pathlib.Path:
    """model_dir's files as huggingface_hub caches them: blobs/<hash>, snapshots/<rev>/<name> a
    relative link to the blob, refs/main naming the revision. Returns the snapshot dir."""
    folder = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = folder / "snapshots" / REVISION
    (folder / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for i, source in enumerate(sorted(model_dir.iterdir())):
        blob = folder / "blobs" / f"{i:040x}"
        blob.write_bytes(source.read_bytes())
        (snapshot / source.name).symlink_to(os.path.relpath(blob, snapshot))
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text(REVISION)
    return snapshot


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    root = tmp_path_factory.mktemp("hub_model")
    tokenizer = WordPieceTokenizer.train(sorted(TASKS.glob("*/train.tsv")), vocab_size=300)
    model_dir, config, params = save_tiny_hf_bert(root / "hf", tokenizer, seed=5)
    return model_dir, config, params


@pytest.fixture
def offline_cache(tmp_path, monkeypatch):
    cache = tmp_path / "hf_cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.chdir(tmp_path)  # no relative path of a test's name exists here
    return cache


def test_names_resolve_to_the_cached_snapshot(tiny_model, offline_cache):
    model_dir, config, params = tiny_model
    snapshot = cache_model(offline_cache, "google-bert/bert-base-uncased", model_dir)
    for name in ("google-bert/bert-base-uncased", "bert-base-uncased"):
        info = pretrained.inspect_checkpoint(name)
        assert (info.format, str(info.path)) == (pretrained.HUGGINGFACE, str(snapshot))
        assert info.bert_config == config
    texts = ["the flight was [MASK] again"]
    by_name = bert_jax.pipeline("fill-mask", "bert-base-uncased", top_k=3)(texts)
    by_path = bert_jax.pipeline("fill-mask", model_dir, top_k=3)(texts)
    assert [c["token"] for c in by_name[0]] == [c["token"] for c in by_path[0]]
    np.testing.assert_allclose([c["score"] for c in by_name[0]], [c["score"] for c in by_path[0]])
    # Pretraining's init_checkpoint: the whole tree, as the directory holds it.
    abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), params)
    loaded = checkpointing.load_params_for_init("google-bert/bert-base-uncased", abstract)
    for got, want in zip(jax.tree.leaves(loaded), jax.tree.leaves(params), strict=True):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_a_legacy_cache_folder_and_a_local_path_of_the_same_name(tiny_model, offline_cache):
    """Older transformers cached `bert-base-uncased` under its bare name; a local directory
    that exists always wins over a name."""
    model_dir, _, _ = tiny_model
    legacy = cache_model(offline_cache, "bert-base-uncased", model_dir)
    assert hub.resolve("google-bert/bert-base-uncased") == legacy
    assert hub.resolve("bert-base-uncased") == legacy
    local = pathlib.Path("google-bert/bert-base-uncased")
    local.mkdir(parents=True)
    (local / "config.json").write_bytes((model_dir / "config.json").read_bytes())
    assert hub.resolve("google-bert/bert-base-uncased") == "google-bert/bert-base-uncased"
    assert pretrained.inspect_checkpoint("google-bert/bert-base-uncased").vocab_file is None


def test_fine_tuning_reads_init_checkpoint_by_name(tiny_model, offline_cache):
    model_dir, _, params = tiny_model
    cache_model(offline_cache, "google-bert/bert-base-uncased", model_dir)
    config = finetuning_config("classification")
    use_test_mode(config)
    config.init_checkpoint = "bert-base-uncased"
    config.task.train_file = str(TASKS / "sentiment" / "train.tsv")
    config.task.dev_file = str(TASKS / "sentiment" / "dev.tsv")
    validate_finetuning_config(config, jax.device_count())
    encoder = finetune_lib.load_pretrained_encoder(config)
    got, want = jax.tree.leaves(encoder.params), jax.tree.leaves(params["bert"])
    assert len(got) == len(want) > 10
    for a, b in zip(got, want, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_offline_and_not_cached_names_the_download_command(offline_cache):
    with pytest.raises(UserError) as raised:
        bert_jax.pipeline("fill-mask", "bert-large-cased")
    assert str(raised.value) == (
        f"bert-large-cased not found: no such local path, and the Hugging Face cache "
        f"{offline_cache} lacks it (HF_HUB_OFFLINE is set); download it: hf download "
        "google-bert/bert-large-cased config.json vocab.txt tokenizer_config.json "
        "model.safetensors"
    )
    # Neither an existing path nor a hub id: the plain "not found" of before.
    for missing in ("runs/a/b", "/no/such/dir", "no_such_dir"):
        with pytest.raises(UserError, match=f"^{missing} not found: expected a Hugging Face BERT"):
            pretrained.inspect_checkpoint(missing)
    with pytest.raises(UserError, match=r"^init_checkpoint \S*/no_such_dir not found$"):
        checkpointing.load_params_for_init("no_such_dir", {})


def test_export_cli_takes_a_name_and_says_how_to_download_one(tiny_model, offline_cache):
    model_dir, _, _ = tiny_model
    cache_model(offline_cache, "google-bert/bert-base-uncased", model_dir)
    env = dict(os.environ, JAX_PLATFORMS="cpu")

    def export(name, out):
        command = [sys.executable, "-m", "bert_jax.export", name, "--out", str(out)]
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)

    done = export("bert-base-uncased", offline_cache.parent / "out")
    assert done.returncode == 0, done.stderr[-2000:]
    exported = offline_cache.parent / "out"
    assert (exported / "vocab.txt").read_bytes() == (model_dir / "vocab.txt").read_bytes()
    assert (
        pretrained.inspect_checkpoint(exported).bert_config
        == pretrained.inspect_checkpoint(model_dir).bert_config
    )
    done = export("google-bert/bert-base-cased", offline_cache.parent / "out2")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"error: google-bert/bert-base-cased not found: no such local path, and the Hugging Face "
        f"cache {offline_cache} lacks it (HF_HUB_OFFLINE is set); download it: hf download "
        "google-bert/bert-base-cased config.json vocab.txt tokenizer_config.json model.safetensors"
    ]


def test_a_task_model_by_name_predicts_with_its_head(tiny_model, offline_cache, tmp_path):
    """A cached transformers BertForSequenceClassification named as on the hub: its head and
    label names, as from its folder and as transformers computes them."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    model_dir, config, _ = tiny_model
    labels = ["negative", "positive"]
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(transformers.BertConfig(
        **{k: getattr(config, k) for k in ("vocab_size", "hidden_size", "num_hidden_layers",
           "num_attention_heads", "intermediate_size", "max_position_embeddings")},
        id2label=dict(enumerate(labels)), label2id={x: i for i, x in enumerate(labels)},
    )).eval()  # fmt: skip
    folder = tmp_path / "sst2"
    model.save_pretrained(folder)
    (folder / "vocab.txt").write_bytes((model_dir / "vocab.txt").read_bytes())
    cache_model(offline_cache, "someone/tiny-sst2", folder)
    texts = ["the flight was delayed again", "great service"]
    by_name = bert_jax.pipeline("text-classification", "someone/tiny-sst2", top_k=None)(texts)
    tokenizer = transformers.BertTokenizerFast(str(folder / "vocab.txt"))
    with torch.no_grad():
        logits = model(**tokenizer(texts, padding=True, return_tensors="pt")).logits
    expected = torch.softmax(logits, -1).numpy()
    for row, scores in zip(by_name, expected, strict=True):
        assert {r["label"]: r["score"] for r in row} == pytest.approx(
            dict(zip(labels, scores.tolist(), strict=True)), abs=1e-4
        )
