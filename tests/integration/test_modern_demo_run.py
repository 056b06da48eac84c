"""configs/modern_demo.py:test end to end: a tiny pretraining run (held-out accuracy at 15%
masking), fine-tuning classification from its workdir (ModernBERT's [CLS] head), and
`python -m bert_jax.export` of the workdir to a ModernBertForMaskedLM transformers loads, whose
logits equal ours."""

import importlib.util
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO_ROOT
from flax import traverse_util
from test_finetune import _config
from tiny_models import synthetic_tasks

from bert_jax.checkpoints import pretrained
from bert_jax.finetuning import train as finetune_lib
from bert_jax.model.modeling import BertForPreTraining
from bert_jax.pretraining.train import train_and_evaluate
from bert_jax.training.metrics import read_metrics

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


def modern_demo(mode: str):
    spec = importlib.util.spec_from_file_location(
        "modern_demo", REPO_ROOT / "configs" / "modern_demo.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(mode)


def test_modern_demo_pretrains_finetunes_and_exports(tmp_path):
    config = modern_demo("test")
    config.data.data_dir = str(tmp_path / "data")
    config.data.show_progress = False
    config.mesh.data = -1  # the test session's 8 host devices
    workdir = tmp_path / "run"
    train_and_evaluate(config, workdir)
    evals = [r for r in read_metrics(workdir) if "eval_mlm_accuracy" in r]
    assert [r["eval_rows"] for r in evals] == [16, 16] and np.isfinite(evals[-1]["eval_mlm_loss"])

    (tmp_path / "tasks").mkdir()
    files = synthetic_tasks(tmp_path / "tasks")
    tune = _config("classification", workdir, files["pairs_train"], files["pairs_dev"])
    result = finetune_lib.train_and_evaluate(tune, tmp_path / "tuned")
    assert result.label_list == ["no", "yes"]
    assert "pooler_norm" in result.params["bert"]  # ModernBERT's head of [CLS] (cls_head)
    info = pretrained.inspect_checkpoint(workdir)
    params = pretrained.load_pretraining_params(info)
    start = traverse_util.flatten_dict(params["bert"])  # the encoder fine-tuning started from
    tuned = traverse_util.flatten_dict(result.params["bert"])
    layers = [k for k in start if k[0] != "pooler" and k in tuned]
    assert len(layers) > 10
    for key in layers:  # a few small steps away from the pretrained values, not a fresh init
        a, b = np.asarray(start[key]).ravel(), np.asarray(tuned[key]).ravel()
        assert np.abs(a - b).max() < 0.1 * np.abs(a).max() + 0.05, key

    out = tmp_path / "hf"
    done = subprocess.run(
        [sys.executable, "-m", "bert_jax.export", str(workdir), "--out", str(out)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    model = transformers.AutoModelForMaskedLM.from_pretrained(
        out, attn_implementation="eager", reference_compile=False
    ).eval()
    assert type(model).__name__ == "ModernBertForMaskedLM"
    ids = np.random.RandomState(0).randint(5, info.bert_config.vocab_size, (2, 48))
    ours = BertForPreTraining(info.bert_config).apply({"params": params}, ids)
    with torch.no_grad():
        theirs = model(torch.tensor(ids)).logits.numpy()
    vocab = info.bert_config.vocab_size
    np.testing.assert_allclose(
        np.asarray(ours.mlm_logits)[..., :vocab], theirs[..., :vocab], atol=1e-4
    )
