"""The masking variants (docs/chinese.md): n-gram spans, words masked in part, the rate
schedule, similar-token replacement. Exact counts on small rows; the schedule and its resume
through the Grain pipeline on the bundled corpus.
"""

import dataclasses
import json

import numpy as np
import pytest
from conftest import prepared_data_config

from bert_jax.data import examples as pretraining
from bert_jax.data import input_pipeline, masking, similar_tokens
from bert_jax.errors import UserError
from bert_jax.pretraining.config import (
    pretraining_config,
    validate_pretraining_config,
)

VOCAB = pretraining.Vocabulary(size=200, pad_id=0, cls_id=1, sep_id=2, mask_id=3)


def _rows(a_length, b_length, length, word_size=1):
    """[CLS] A [SEP] B [SEP] rows of distinct ids 10.. and words of `word_size` tokens in each
    segment (the segment's first token always starts one)."""
    a_length, b_length = np.asarray(a_length), np.asarray(b_length)
    j = np.arange(length)[None, :]
    a, end = a_length[:, None], (a_length + b_length + 2)[:, None]
    in_a, in_b = (j >= 1) & (j <= a), (j >= a + 2) & (j < end)
    ids = np.where(in_a | in_b, 10 + j, 0)
    ids = np.where((j == 0), 1, np.where((j == a + 1) | (j == end), 2, ids))
    inside = np.where(in_a, j - 1, j - a - 2)
    starts = (in_a | in_b) & (inside % word_size == 0)
    return ids.astype(np.int32), a_length, b_length, starts


def _mask(ids, a, b, starts, seed=0, **options):
    options = pretraining.ExampleOptions(max_seq_length=ids.shape[1], **options)
    return masking.mask_tokens(ids, a, b, np.random.default_rng(seed), options, VOCAB, starts)


def _masked(out, length):
    masked = np.zeros((len(out["masked_lm_weights"]), length), bool)
    rows, cols = np.nonzero(out["masked_lm_weights"])
    masked[rows, out["masked_lm_positions"][rows, cols]] = True
    return masked


def _runs(row):
    """(start, stop) of each run of consecutive True."""
    edges = np.diff(np.concatenate([[0], row.astype(int), [0]]))
    return list(zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1), strict=True))


def test_token_spans_fill_the_budget_exactly_and_stay_in_their_segment():
    rng = np.random.default_rng(1)
    a, b = rng.integers(1, 40, 300), rng.integers(1, 40, 300)
    ids, a, b, starts = _rows(a, b, 96)
    options = dict(max_predictions_per_seq=20, span_length_weights="0.4,0.3,0.2,0.1")
    options = pretraining.ExampleOptions(max_seq_length=96, **options)
    chosen, draw, unit_of = masking._choose_spans(
        np.ones_like(starts),
        starts,
        np.minimum(np.rint((a + b + 3) * 0.15), 20).astype(int),
        np.random.default_rng(0),
        options,
    )
    budget = np.minimum(np.maximum(1, np.rint((a + b + 3) * 0.15)), 20)
    np.testing.assert_array_equal(chosen.sum(1), budget)  # exact: token spans shrink to fit
    lengths = []
    for row in range(len(a)):
        spans = {}  # a span's units share its one 80/10/10 draw
        for position in np.flatnonzero(chosen[row]):
            spans.setdefault(draw[row, unit_of[row, position]], []).append(position)
        for positions in spans.values():
            assert positions == list(range(positions[0], positions[-1] + 1))  # consecutive
            assert len(positions) <= 4
            in_a = np.array(positions) <= a[row]
            assert in_a.all() or not in_a.any()  # never across [SEP]
            lengths.append(len(positions))
    counts = np.bincount(lengths, minlength=5)[1:]
    assert counts[3] > 0 and counts.sum() < chosen.sum()  # 4-grams, fewer spans than tokens


def test_span_masking_through_mask_tokens_keeps_the_budget_and_specials():
    ids, a, b, starts = _rows(np.full(50, 20), np.full(50, 20), 48)
    out = _mask(ids, a, b, starts, span_length_weights="0,0,1", max_predictions_per_seq=8)
    masked = _masked(out, 48)
    np.testing.assert_array_equal(masked.sum(1), 6)  # rint(43 x 0.15)
    assert not masked[:, [0, 21, 42]].any()  # [CLS], [SEP]s
    labels = np.take_along_axis(ids, out["masked_lm_positions"], 1)
    np.testing.assert_array_equal(
        np.where(out["masked_lm_weights"] > 0, labels, 0), out["masked_lm_ids"]
    )


def test_word_spans_cover_whole_words_of_at_most_n_words():
    ids, a, b, starts = _rows(np.full(40, 30), np.full(40, 30), 64, word_size=3)
    out = _mask(
        ids,
        a,
        b,
        starts,
        whole_word_masking=True,
        span_length_weights="0,1",
        max_predictions_per_seq=20,
    )
    masked = _masked(out, 64)
    np.testing.assert_array_equal(masked.sum(1), 9)  # rint(63 x 0.15): whole 3-token words
    for row in masked:
        for start, stop in _runs(row):
            assert (start - 1) % 3 == 0 or (start - 32) % 3 == 0  # starts a word (A or B)
            assert (stop - start) % 3 == 0


def test_one_character_per_word_with_word_char_mask_prob_one():
    ids, a, b, starts = _rows(np.full(40, 30), np.full(40, 30), 64, word_size=3)
    out = _mask(ids, a, b, starts, whole_word_masking=True, word_char_mask_prob=1.0)
    masked = _masked(out, 64)
    np.testing.assert_array_equal(masked.sum(1), 9)  # each word costs one token: exact
    word = np.where(np.arange(64) <= 30, (np.arange(64) - 1) // 3, 100 + (np.arange(64) - 32) // 3)
    for row in masked:
        assert len(set(word[row])) == 9  # never two characters of one word
    assert len(np.unique(np.flatnonzero(masked.any(0)) % 3)) == 3  # any of its 3 characters


def test_long_words_are_masked_in_part():
    ids, a, b, starts = _rows(np.full(30, 28), np.full(30, 28), 64, word_size=4)
    out = _mask(ids, a, b, starts, whole_word_masking=True, max_masked_word_length=2)
    masked = _masked(out, 64)
    # rint(59 x 0.15) = 9; each 4-token word costs 2, so 4 words: 8 tokens, 2 per word.
    np.testing.assert_array_equal(masked.sum(1), 8)
    for row in masked:
        runs = _runs(row)
        assert all(stop - start in (2, 4) for start, stop in runs)  # adjacent words may touch
        word = np.where(
            np.arange(64) <= 28, (np.arange(64) - 1) // 4, 100 + (np.arange(64) - 30) // 4
        )
        assert np.all(np.unique(word[row], return_counts=True)[1] == 2)


def test_similar_tokens_replace_mask():
    ids, a, b, starts = _rows(np.full(200, 30), np.full(200, 30), 64)
    table = np.full((VOCAB.size, 2), -1, np.int32)
    table[10:80, 0] = np.arange(10, 80) + 100  # one similar token each: id + 100
    vocab = dataclasses.replace(VOCAB, similar_ids=table)
    options = pretraining.ExampleOptions(max_seq_length=64, similar_token_prob=1.0)
    out = masking.mask_tokens(ids, a, b, np.random.default_rng(0), options, vocab)
    rows, cols = np.nonzero(out["masked_lm_weights"])
    labels = out["masked_lm_ids"][rows, cols]
    got = out["input_ids"][rows, out["masked_lm_positions"][rows, cols]]
    similar, mask = got == labels + 100, got == VOCAB.mask_id
    # Half the table is empty (column 1 = -1): half the masked draws stay [MASK].
    share = similar.mean() / (similar.mean() + mask.mean())
    assert 0.45 < share < 0.55 and 0.75 < (similar | mask).mean() < 0.85


def test_similarity_table_finds_tokens_of_the_same_contexts():
    rng = np.random.default_rng(0)
    vocab = ["[PAD]", "[MASK]"] + [f"t{i}" for i in range(30)]
    docs = []
    for _ in range(200):  # t0 and t1 both follow t2..t5 and precede t6..t9; t10.. elsewhere
        left, right = rng.integers(4, 8), rng.integers(8, 12)
        middle = rng.integers(2, 4)
        docs.append({"tokens": np.array([left, middle, right, *rng.integers(12, 32, 4)])})
    table = similar_tokens.build_table(docs, vocab)
    assert table.shape == (32, similar_tokens.NEIGHBOURS)
    assert table[2, 0] == 3 and table[3, 0] == 2
    assert np.all(table[:2] == -1)  # specials have none and are none's


def test_schedule_rate_at_given_epochs():
    options = pretraining.ExampleOptions(
        masked_lm_prob=0.15, masked_lm_prob_start=0.3, masked_lm_prob_schedule_epochs=2.0
    )
    rates = [masking.scheduled_masked_lm_prob(options, e) for e in (0, 0.5, 1, 2, 7)]
    np.testing.assert_allclose(rates, [0.3, 0.2625, 0.225, 0.15, 0.15])
    assert masking.scheduled_masked_lm_prob(pretraining.ExampleOptions(), 3.0) == 0.15


@pytest.fixture(scope="module")
def data_config(tmp_path_factory):
    return prepared_data_config(
        tmp_path_factory.mktemp("datasets"), documents_per_window=256, max_seq_length=64,
        max_predictions_per_seq=20, masked_lm_prob_start=0.3, masked_lm_prob_schedule_epochs=1.0,
    )  # fmt: skip


def test_pipeline_follows_the_schedule_and_resumes_mid_schedule(data_config):
    chunks = input_pipeline.make_example_chunks(data_config, split="train", seed=0)
    per_epoch = len(
        input_pipeline.make_example_chunks(data_config, split="train", seed=0, num_epochs=1)
    )
    for index in (0, per_epoch // 2, per_epoch, per_epoch + 1):
        rate = 0.3 - 0.15 * min(1.0, index / per_epoch)
        chunk = chunks[index]
        tokens = chunk["attention_mask"].sum(1)
        budget = np.minimum(np.maximum(1, np.rint(tokens * rate)), 20)
        np.testing.assert_array_equal(chunk["masked_lm_weights"].sum(1), budget)
    make = lambda: input_pipeline.make_pretraining_iterator(  # noqa: E731
        data_config, split="train", global_batch_size=24, seed=1
    )
    iterator = make()
    [next(iterator) for _ in range(9)]  # mid chunk, mid schedule
    state = json.loads(json.dumps(iterator.get_state()))
    expected = [next(iterator) for _ in range(5)]
    resumed = make()
    resumed.set_state(state)
    for batch, other in zip(expected, [next(resumed) for _ in range(5)], strict=True):
        for name in input_pipeline.BATCH_FIELDS:
            np.testing.assert_array_equal(batch[name], other[name])
    validation = next(
        input_pipeline.make_pretraining_iterator(
            data_config, split="validation", global_batch_size=8, seed=0
        )
    )
    tokens = validation["attention_mask"].sum(1)  # validation: the final rate, no schedule
    np.testing.assert_array_equal(
        validation["masked_lm_weights"].sum(1),
        np.minimum(np.maximum(1, np.rint(tokens * 0.15)), 20),
    )


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"span_length_weights": "0.5,x"}, "comma-separated numbers"),
        ({"word_char_mask_prob": 0.2}, "need data.whole_word_masking=True"),
        ({"max_masked_word_length": 2}, "need data.whole_word_masking=True"),
        ({"masked_lm_prob_start": 0.1}, "must be higher"),
        ({"masked_lm_prob_start": 0.3}, "masked_lm_prob_schedule_epochs"),
        ({"similar_token_prob": 1.5}, "similar_token_prob must be in"),
    ],
)
def test_bad_variant_settings_are_one_line_errors(overrides, message):
    config = pretraining_config("tiny")
    config.data.max_predictions_per_seq = 40
    config.data.update(overrides)
    with pytest.raises(UserError, match=message):
        validate_pretraining_config(config, num_devices=1, check_files=False)


def test_pipeline_builds_the_similarity_table_beside_the_dataset(data_config):
    config = data_config.copy_and_resolve_references()
    config.masked_lm_prob_start = 0.0
    config.similar_token_prob = 1.0
    chunk = input_pipeline.make_example_chunks(config, split="train", seed=0)[0]
    prepared = input_pipeline.open_dataset(config)
    table = np.load(f"{prepared.directory}/{similar_tokens.FILE}")
    assert table.shape == (prepared.tokenizer().vocab_size, similar_tokens.NEIGHBOURS)
    rows, cols = np.nonzero(chunk["masked_lm_weights"])
    labels = chunk["masked_lm_ids"][rows, cols]
    got = chunk["input_ids"][rows, chunk["masked_lm_positions"][rows, cols]]
    similar = np.any(table[labels] == got[:, None], axis=1)
    mask = got == prepared.tokenizer().mask_id
    assert np.all(mask <= (table[labels, 0] < 0))  # [MASK] only where no similar token exists
    assert 0.7 < (similar | mask).mean() < 0.9  # the 80%
