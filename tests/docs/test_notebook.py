"""notebooks/quickstart.ipynb runs end to end (a handful of steps) and shows what it promises."""

import json
import os
import pathlib

import pytest

nbclient = pytest.importorskip("nbclient", reason="nbclient is in the dev extra")
nbformat = pytest.importorskip("nbformat", reason="nbformat is in the dev extra")

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
NOTEBOOK = REPO_ROOT / "notebooks" / "quickstart.ipynb"
RESULTS_MARKER = "QUICKSTART_RESULTS "
NUM_STEPS = 12
FINETUNE_STEPS = 10


def inject_parameters(notebook, **values) -> None:
    """Papermill's convention: a cell tagged "injected-parameters" right after "parameters"."""
    index = next(
        i for i, cell in enumerate(notebook.cells) if "parameters" in cell.metadata.get("tags", [])
    )
    source = "\n".join(f"{name} = {value!r}" for name, value in values.items())
    cell = nbformat.v4.new_code_cell(source, metadata={"tags": ["injected-parameters"]})
    notebook.cells.insert(index + 1, cell)


def kernel_env() -> dict[str, str]:
    """The test process's environment minus what would change the notebook's behaviour."""
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)  # conftest's 8 fake devices; the notebook runs on one, as a user's
    env.pop("MPLBACKEND", None)  # the kernel's inline backend renders the figures
    env["JAX_PLATFORMS"] = "cpu"
    # The kernel's `python` is this interpreter (jupyter_client swaps it in), so the venv's
    # packages and this checkout's bert_jax are the ones it imports.
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")]).rstrip(
        os.pathsep
    )
    return env


def outputs_of(notebook, output_type=None):
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            if output_type is None or output["output_type"] == output_type:
                yield cell, output


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    workdir = tmp_path_factory.mktemp("quickstart")
    inject_parameters(
        notebook,
        NUM_STEPS=NUM_STEPS,
        FINETUNE_STEPS=FINETUNE_STEPS,
        WORKDIR=str(workdir),
        LIVE_PLOT_SECONDS=1.0,
    )
    client = nbclient.NotebookClient(
        notebook,
        timeout=600,
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOK.parent)}},
    )
    client.execute(env=kernel_env())
    return notebook, workdir


def test_notebook_has_a_papermill_parameters_cell():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    tagged = [c for c in notebook.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1
    assert "NUM_STEPS = 300" in tagged[0].source
    stored = [o for _, o in outputs_of(notebook, "error")]
    assert not stored, "the committed notebook must not carry error outputs"


def test_quickstart_runs_end_to_end(executed):
    notebook, workdir = executed
    assert not list(outputs_of(notebook, "error"))
    lines = [
        line
        for _, output in outputs_of(notebook, "stream")
        for line in output["text"].splitlines()
        if line.startswith(RESULTS_MARKER)
    ]
    assert len(lines) == 1
    results = json.loads(lines[0][len(RESULTS_MARKER) :])

    pretrain = results["pretrain"]
    assert pretrain["steps"] == NUM_STEPS
    assert pretrain["last_loss"] < pretrain["first_loss"] - 0.3  # learning, not noise
    assert 0.0 <= pretrain["eval_mlm_accuracy"] <= 1.0
    assert (workdir / "pretrain" / "metrics.jsonl").is_file()

    fill_mask = results["fill_mask"]
    assert len(fill_mask) == 4 and all(len(tokens) == 5 for tokens in fill_mask.values())

    finetune = results["finetune"]
    assert finetune["init"] in ("MiniLM", "tiny pretrained")
    assert 0.0 <= finetune["accuracy"] <= 1.0 and finetune["best_step"] >= 1
    predictions = results["predictions"]
    assert predictions["dev_examples"] == 100
    # The pipeline loads the best checkpoint: it must score the dev slice as fine-tuning did.
    assert abs(predictions["dev_accuracy"] - finetune["best_accuracy"]) <= 0.01 + 1e-9

    if finetune["init"] == "MiniLM":
        minilm = results["minilm"]  # the real weights separate paraphrases from unrelated text
        assert minilm["paraphrase_similarity"] > 0.5
        assert minilm["paraphrase_similarity"] - minilm["unrelated_similarity"] > 0.3
    if "export_max_abs_logit_difference" in results:
        assert results["export_max_abs_logit_difference"] < 1e-4
    if "task_export_max_abs_score_difference" in results:  # the fine-tuned run, exported
        assert results["task_export_max_abs_score_difference"] < 1e-4
    assert (workdir / "sentiment_hf" / "config.json").is_file()
    from bert_jax.convert import export

    assert sorted(p.name for p in (workdir / "hf_export").iterdir()) == sorted(export.HF_FILES)

    # Similarity heatmap, the live/final pretraining plot, fine-tuning curves, confusion matrix.
    images = [o for _, o in outputs_of(notebook) if "image/png" in o.get("data", {})]
    assert len(images) >= (4 if finetune["init"] == "MiniLM" else 3)


def test_the_exported_files_listed_are_those_the_export_writes():
    import re

    from bert_jax.convert import export

    cells = nbformat.read(NOTEBOOK, as_version=4).cells
    text = next(c.source for c in cells if "`bert_jax.convert.export.export` writes" in c.source)
    listed = re.search(r"export` writes (.*?):", text).group(1)
    assert re.findall(r"`([^`]+)`", listed) == list(export.HF_FILES)
