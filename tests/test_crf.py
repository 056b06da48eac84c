"""The linear-chain CRF (bert_jax.crf): its loss is the exact negative log-likelihood of the
gold tags, over the positions and sentences a row holds."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
from flax.core import meta

from bert_jax.crf import TagTransitions, sequence_nll


def _brute_force_nll(emissions, labels, valid, segments, crf) -> np.ndarray:
    """Per row: the sum over its chains (one per segment, over its valid positions) of
    log(sum over every tag sequence of exp(score)) - score(gold)."""

    def score(scores, path):
        total = (
            crf["start"][path[0]] + crf["end"][path[-1]] + sum(scores[np.arange(len(path)), path])
        )
        return total + sum(crf["transitions"][a, b] for a, b in zip(path, path[1:], strict=False))

    rows = []
    for b in range(emissions.shape[0]):
        total = 0.0
        for segment in np.unique(segments[b][valid[b]]):
            positions = np.flatnonzero(valid[b] & (segments[b] == segment))
            scores, gold = emissions[b, positions], labels[b, positions]
            paths = itertools.product(range(emissions.shape[-1]), repeat=len(positions))
            log_z = np.logaddexp.reduce([score(scores, np.array(p)) for p in paths])
            total += log_z - score(scores, gold)
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
