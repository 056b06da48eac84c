"""Pretraining evaluation in microbatches of eval_batch_size rows (by default
the training microbatch of gradient accumulation), each process building only its rows."""

import jax
import pytest
from conftest import demo_config

from bert_jax.data import input_pipeline
from bert_jax.errors import UserError
from bert_jax.pretraining.config import validate_pretraining_config
from bert_jax.pretraining.step import build_pretrainer
from bert_jax.pretraining.train import evaluate
from bert_jax.training import sharding


def _config(data_dir):
    config = demo_config("test")
    config.data.data_dir = str(data_dir)
    config.data.show_progress = False
    config.mesh.data = 2
    return config


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    config = _config(tmp_path_factory.mktemp("data"))
    input_pipeline.prepare_data(config.data)
    mesh = sharding.make_mesh(config.mesh, jax.devices()[:2])
    with jax.set_mesh(mesh):
        pretrainer = build_pretrainer(config, mesh)
        params = pretrainer.init(jax.random.key(0)).params
    return config, pretrainer, params


def _evaluate(setup, **overrides):
    config, pretrainer, params = setup
    config = config.copy_and_resolve_references()
    config.update(overrides)
    shapes = []
    step = pretrainer.eval_step

    def recording(params, batch):
        shapes.append(batch["input_ids"].shape)
        return step(params, batch)

    pretrainer.eval_step = recording
    try:
        with jax.set_mesh(pretrainer.mesh):
            return evaluate(pretrainer, params, config), shapes
    finally:
        pretrainer.eval_step = step


def test_eval_runs_microbatches_of_the_training_microbatch(setup):
    # batch 8 as 4 accumulated microbatches of 2: evaluation steps through 2 rows at a time.
    metrics, shapes = _evaluate(setup, grad_accum_steps=4, eval_steps=8)
    assert shapes == [(2, 64)] * 8 and metrics["eval_batches"] == 8
    # The same 16 held-out examples give the same metrics in any eval batch size.
    bigger, shapes = _evaluate(setup, grad_accum_steps=4, eval_batch_size=8, eval_steps=2)
    assert shapes == [(8, 64)] * 2
    for key in ("eval_loss", "eval_mlm_loss", "eval_mlm_accuracy", "eval_nsp_accuracy"):
        assert metrics[key] == pytest.approx(bigger[key], rel=1e-5), key


def test_eval_batch_size_must_split_over_the_data_parallel_devices(setup):
    config = setup[0].copy_and_resolve_references()
    config.eval_batch_size = 3
    with pytest.raises(UserError, match="eval_batch_size 3 must be a positive multiple of the"):
        validate_pretraining_config(config, 2, check_files=False)


def test_a_validation_share_without_documents_yields_no_batches(setup):
    """More data shares than held-out documents: the empty share reads nothing (no 0 // 0), and
    the processes' agreement in `evaluate` stops evaluation with its one line."""
    import warnings

    config = setup[0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        empty = input_pipeline.make_example_chunks(
            config.data, split="validation", seed=0, process_index=9_999, process_count=10_000
        )
        assert len(empty) == 0
        batches = input_pipeline.make_pretraining_iterator(
            config.data,
            split="validation",
            global_batch_size=10_000,
            seed=0,
            process_index=9_999,
            process_count=10_000,
        )
        assert next(batches, None) is None


def test_eval_reports_its_size(setup):
    metrics, _ = _evaluate(setup, grad_accum_steps=4, eval_steps=3)
    assert (metrics["eval_batches"], metrics["eval_rows"]) == (3, 6)
