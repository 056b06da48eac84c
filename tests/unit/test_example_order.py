"""Examples mixed across a window of documents, random-next B never from A's
own document, exact resume anywhere.

A tagged corpus makes every row's documents readable: each token of document d is the word
"d<d>" (benchmarks/studies/data_order.py). 321 documents = 5 x 64 + 1: examples built and
shuffled per 64-document chunk (the old pipeline) leave one document alone in a chunk every
epoch.
"""

import json
import random

import numpy as np
import pytest

from benchmarks.studies.data_order import order_statistics, row_documents, write_tagged_corpus
from bert_jax.data import examples as pretraining
from bert_jax.data import input_pipeline
from bert_jax.errors import UserError
from bert_jax.pretraining.config import data_config_dict

NUM_DOCUMENTS = 321
BATCH = 128


@pytest.fixture(scope="module")
def tagged(tmp_path_factory):
    rng = np.random.default_rng(0)
    shape = [rng.integers(3, 26, rng.integers(1, 31)) for _ in range(NUM_DOCUMENTS)]
    directory = tmp_path_factory.mktemp("tagged")
    text, vocab = write_tagged_corpus(directory, shape)
    config = data_config_dict()
    config.update(
        input_files=text,
        vocab_file=vocab,
        data_dir=str(directory),
        validation_fraction=0.0,
        show_progress=False,
        max_seq_length=64,
        max_predictions_per_seq=10,
    )
    assert input_pipeline.prepare_data(config)["documents"] == NUM_DOCUMENTS
    return config


def _batches(config, num_epochs=3, global_batch_size=BATCH, **kwargs):
    return input_pipeline.make_pretraining_iterator(
        config,
        split="train",
        global_batch_size=global_batch_size,
        seed=0,
        num_epochs=num_epochs,
        **kwargs,
    )


def test_a_batch_mixes_more_documents_than_a_chunk_holds(tagged):
    stats = order_statistics(_batches(tagged))
    assert stats["batches"] >= 20
    # A window of all 321 documents: ~105 distinct documents per batch of 128 rows.
    assert min(stats["documents_per_batch"]) > tagged.documents_per_chunk
    assert np.mean(stats["documents_per_batch"]) > 90


def test_random_next_b_never_comes_from_a_own_document(tagged):
    batches = list(_batches(tagged))
    stats = order_statistics(batches)
    assert stats["same_document_random_next"] == 0
    assert abs(stats["random_next_fraction"] - 0.5) < 0.03
    for batch in batches:  # and an actual-next B always does
        a_doc, b_doc = row_documents(batch)
        actual = batch["next_sentence_labels"] == 0
        np.testing.assert_array_equal(a_doc[actual], b_doc[actual])


def test_a_lone_document_makes_no_random_next_pairs(tagged, caplog):
    """A process whose share is one document: all pairs actual-next, and a warning says why."""
    iterator = _batches(
        tagged,
        num_epochs=4,
        global_batch_size=NUM_DOCUMENTS,  # one row per batch
        process_index=5,
        process_count=NUM_DOCUMENTS,
    )
    batches = list(iterator)
    assert len(batches) >= 4
    for batch in batches:
        a_doc, b_doc = row_documents(batch)
        assert a_doc.tolist() == b_doc.tolist() == [5]
        assert batch["next_sentence_labels"].tolist() == [0]
    assert "1 of the 1 windows of process 5's train documents hold a single document" in (
        caplog.text
    )


def test_plan_without_another_document_counts_what_it_cannot_make():
    options = pretraining.ExampleOptions(max_seq_length=32)
    for balanced in (True, False):
        options = pretraining.ExampleOptions(max_seq_length=32, balanced_nsp=balanced)
        plan = pretraining.plan_segments([10] * 20, [20], random.Random(0), options)
        assert len(plan) > 5 and not plan.is_random_next.any()
        assert plan.random_next_unavailable > 0
        assert np.all(plan.a_end <= plan.b_start)  # A then B, both from the one document
    plan = pretraining.plan_segments([7], [1], random.Random(0), options)
    assert len(plan) == 0 and plan.random_next_unavailable == 1  # nothing pairs with it
    plan = pretraining.plan_segments([10] * 40, [20, 20], random.Random(0), options)
    assert plan.random_next_unavailable == 0 and plan.is_random_next.any()


def test_resume_at_any_batch_across_windows_and_epochs(tagged):
    config = tagged.copy_and_resolve_references()
    config.update(documents_per_window=100, documents_per_chunk=16)  # 4 windows, 28 chunks
    iterator = _batches(config, num_epochs=None)
    states, batches = [], []
    for _ in range(30):  # ~3 epochs of ~10 batches
        states.append(json.loads(json.dumps(iterator.get_state())))
        batches.append(next(iterator))
    for position in (1, 4, 9, 10, 17, 26):
        resumed = _batches(config, num_epochs=None)
        resumed.set_state(states[position])
        for expected in batches[position : position + 3]:
            got = next(resumed)
            for name in input_pipeline.BATCH_FIELDS:
                np.testing.assert_array_equal(got[name], expected[name])


def test_window_settings_are_checked(tagged):
    config = tagged.copy_and_resolve_references()
    config.documents_per_window = 1
    with pytest.raises(UserError, match="documents_per_window is 1: use at least 2"):
        _batches(config)
