"""The linear-chain CRF (bert_jax.model.crf): its loss is the exact negative log-likelihood of the
gold tags, over the positions and sentences a row holds, with the cut of a long sentence open."""

import itertools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax.core import meta

from bert_jax.data import packing
from bert_jax.data.tokenization import SPECIAL_TOKENS, WordPieceTokenizer
from bert_jax.finetuning import batches as task_batches
from bert_jax.finetuning import tasks as task_kinds
from bert_jax.finetuning.tasks import features as tasks
from bert_jax.model.crf import TagTransitions, sequence_nll


def _chain_nll(scores, gold, crf, start: bool = True, end: bool = True) -> float:
    """log(sum over every tag sequence of exp(score)) - score(gold) for one chain; start / end:
    whether its first / last tag takes the start / end score."""

    def score(path):
        total = sum(scores[np.arange(len(path)), path])
        total += start * crf["start"][path[0]] + end * crf["end"][path[-1]]
        return total + sum(crf["transitions"][a, b] for a, b in zip(path, path[1:], strict=False))

    paths = itertools.product(range(scores.shape[-1]), repeat=len(gold))
    return np.logaddexp.reduce([score(np.array(p)) for p in paths]) - score(np.asarray(gold))


def _brute_force_nll(emissions, labels, valid, segments, crf, starts=None, ends=None):
    """Per row: the sum over its chains (one per segment, over its valid positions) of
    _chain_nll, with the start / end scores where starts / ends [B, L] say (default all)."""
    starts = np.ones(valid.shape, bool) if starts is None else starts
    ends = np.ones(valid.shape, bool) if ends is None else ends
    rows = []
    for b in range(emissions.shape[0]):
        total = 0.0
        for segment in np.unique(segments[b][valid[b]]):
            positions = np.flatnonzero(valid[b] & (segments[b] == segment))
            first = positions[0]
            total += _chain_nll(emissions[b, positions], labels[b, positions], crf,
                                starts[b, first], ends[b, first])  # fmt: skip
        rows.append(total)
    return np.array(rows)


def test_sequence_nll_is_exact_over_packed_rows_and_skipped_pieces():
    rng = np.random.default_rng(0)
    batch, length, tags = 4, 8, 3
    emissions = rng.normal(size=(batch, length, tags)).astype(np.float32)
    crf = {
        "transitions": rng.normal(size=(tags, tags)).astype(np.float32),
        "start": rng.normal(size=tags).astype(np.float32),
        "end": rng.normal(size=tags).astype(np.float32),
    }
    labels = rng.integers(0, tags, size=(batch, length))
    valid = rng.random((batch, length)) < 0.7  # continuation pieces and padding are skipped
    valid[3] = False  # a row with nothing to score
    segments = np.sort(rng.integers(0, 3, size=(batch, length)), axis=1)  # packed sentences
    got = sequence_nll(emissions, np.where(valid, labels, -1), valid, crf, segments)
    want = _brute_force_nll(emissions, labels, valid, segments, crf)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)
    assert want[3] == 0.0 and (want[:3] > 0).all()
    # Unpacked rows are one chain each.
    got = sequence_nll(emissions, labels, valid, crf)
    want = _brute_force_nll(emissions, labels, valid, np.zeros_like(segments), crf)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)
    # Chains of features cut from a long sentence: no start score after the cut, no end score
    # before it (flags constant over a chain, as task_sums spreads them).
    flags = rng.random((2, batch, 3)) < 0.5  # per row and segment
    starts, ends = (np.take_along_axis(f, segments, axis=1) for f in flags)
    got = sequence_nll(emissions, labels, valid, crf, segments, starts, ends)
    want = _brute_force_nll(emissions, labels, valid, segments, crf, starts, ends)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)


def test_a_fresh_crf_is_the_per_word_softmax():
    """Zero transition scores: the sequence likelihood factorises into per-word softmaxes, so
    training starts where the plain classifier does."""
    crf = meta.unbox(TagTransitions(4).init(jax.random.key(0))["params"])
    assert all(not np.asarray(v).any() for v in crf.values())
    rng = np.random.default_rng(1)
    emissions = rng.normal(size=(2, 5, 4)).astype(np.float32)
    labels = rng.integers(0, 4, size=(2, 5))
    valid = np.ones((2, 5), bool)
    softmax = -jnp.take_along_axis(jax.nn.log_softmax(emissions), labels[..., None], -1)[..., 0]
    np.testing.assert_allclose(
        np.asarray(sequence_nll(emissions, labels, valid, crf)), np.asarray(softmax.sum(1)),
        rtol=1e-5,
    )  # fmt: skip


@pytest.mark.parametrize("packed", [False, True], ids=["one_per_row", "packed"])
def test_the_loss_of_a_split_sentence_leaves_the_cut_open(tmp_path, packed):
    """A sentence of 9 words, 6 per feature, beside one of 1 word: the training loss
    (task_sums, from the batches fine-tuning builds) gives the first feature the start score
    but not the end score, the second the end score but not the start score."""
    words = "the lord god of israel and moses said unto".split()
    tokenizer = WordPieceTokenizer([*SPECIAL_TOKENS, *words], lowercase=True)
    tags = ["O", "B-PER", "I-PER", "I-PER", "I-PER", "I-PER", "O", "O", "B-PER"]
    lines = [f"{w}\t{t}" for w, t in zip(words, tags, strict=True)] + ["", "said\tO", ""]
    (tmp_path / "train.conll").write_text("\n".join(lines))
    config = ml_collections.ConfigDict({"max_seq_length": 8})
    config.task = {"kind": "token_classification", "train_file": str(tmp_path / "train.conll")}
    data = tasks.load_task(config, "train", tokenizer)
    assert data.num_features == 3
    np.testing.assert_array_equal(data.arrays["starts_sentence"], [1, 0, 1])
    np.testing.assert_array_equal(data.arrays["ends_sentence"], [0, 1, 1])
    slots = packing.pack(data.lengths, 8, 2) if packed else np.arange(3)[:, None]
    assert len(slots) == (2 if packed else 3)  # packed: the 1-word sentence beside a feature
    batch = task_batches.build_batch(
        "token_classification", data, task_batches.Batch(slots, 8, packed)
    )
    rng = np.random.default_rng(0)
    num_labels = len(data.label_list)
    crf = {
        "transitions": rng.normal(size=(num_labels,) * 2).astype(np.float32),
        "start": rng.normal(size=num_labels).astype(np.float32),
        "end": rng.normal(size=num_labels).astype(np.float32),
    }
    emissions = rng.normal(size=(len(slots), 8, num_labels)).astype(np.float32)
    sums = task_kinds.get("token_classification").loss_sums((emissions, crf), batch)
    if packed:  # each feature's emissions as one feature per row
        per_feature = np.zeros((3, 8, num_labels), np.float32)
        packing.unpack_tokens(emissions, data.lengths, slots, per_feature)
    else:
        per_feature = emissions
    labels = data.arrays["labels"]
    chains = [(f, labels[f] >= 0) for f in range(3)]
    want = sum(
        _chain_nll(per_feature[f, scored], labels[f, scored], crf,
                   data.arrays["starts_sentence"][f], data.arrays["ends_sentence"][f])
        for f, scored in chains
    )  # fmt: skip
    np.testing.assert_allclose(float(sums["loss_sum"]), want, rtol=1e-5)
    assert float(sums["count"]) == 10
    whole = sum(_chain_nll(per_feature[f, s], labels[f, s], crf) for f, s in chains)
    assert abs(whole - want) > 0.1  # the cut's start and end scores matter here
