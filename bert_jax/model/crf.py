"""A linear-chain CRF on a token classifier (Lafferty et al. 2001; the "BERT-CRF"): tag
transition scores learned with the encoder, trained on the gold sequence's log-likelihood:

  score(y) = start[y_1] + sum_t emissions[t, y_t] + sum_t transitions[y_(t-1), y_t] + end[y_n]
  loss     = logsumexp over all tag sequences of score - score(gold)   (forward algorithm)

A chain runs over a sentence's first word pieces (label >= 0), one per packed sentence; a
feature that continues a long sentence has no start score, one cut before its end no end score.
Decoding is the host's Viterbi (eval.tag_decoding) over whole sentences, these scores added.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array


class TagTransitions(nn.Module):
    """The CRF's parameters: {'transitions' [C, C] (previous, next), 'start' [C], 'end' [C]},
    zero at initialisation (a fresh CRF decodes as the classifier alone does)."""

    num_labels: int

    @nn.compact
    def __call__(self) -> dict[str, Array]:
        c = self.num_labels
        zeros = nn.initializers.zeros_init()
        return {
            "transitions": self.param(
                "transitions", nn.with_logical_partitioning(zeros, (None, "classes")), (c, c)
            ),
            "start": self.param("start", nn.with_logical_partitioning(zeros, ("classes",)), (c,)),
            "end": self.param("end", nn.with_logical_partitioning(zeros, ("classes",)), (c,)),
        }


def sequence_nll(
    emissions: Array,
    labels: Array,
    valid: Array,
    crf: dict,
    segment_ids: Array | None = None,
    starts: Array | None = None,
    ends: Array | None = None,
) -> Array:
    """Negative log-likelihood of the gold tags, summed per row: [B] float32.

    emissions [B, L, C]; labels [B, L] (any value where not valid); valid [B, L] (the positions
    a chain runs over); segment_ids [B, L] (packed rows: a new segment starts a new chain);
    starts, ends [B, L] (default all true): whether the chain through a position takes the start
    score at its first position / the end score at its last (false for a feature that
    continues a sentence / is cut before the sentence's end)."""
    emissions = emissions.astype(jnp.float32)
    batch, _, num_labels = emissions.shape
    transitions, start, end = (
        jnp.asarray(crf[k], jnp.float32) for k in ("transitions", "start", "end")
    )
    if segment_ids is None:
        segment_ids = jnp.zeros(labels.shape, jnp.int32)
    starts = jnp.ones(labels.shape, bool) if starts is None else starts > 0
    ends = jnp.ones(labels.shape, bool) if ends is None else ends > 0
    labels = jnp.maximum(labels, 0).astype(jnp.int32)
    valid = valid > 0

    def step(carry, xs):
        alpha, is_open, previous, segment, ending, log_z, gold = carry
        scores, tag, here, seg, starting, ends_here = xs  # [B, C], [B] each
        opens = here & (~is_open | (seg != segment))  # the first position of a chain
        closes = opens & is_open  # ... after another chain in the row ended
        end_scores = jnp.where(ending[:, None], end, 0.0)  # the closing chain's [B, C]
        log_z += jnp.where(closes, jax.nn.logsumexp(alpha + end_scores, axis=-1), 0.0)
        gold += jnp.where(closes, end_scores[jnp.arange(batch), previous], 0.0)
        start_scores = jnp.where(starting[:, None], start, 0.0)  # [B, C]
        chained = jax.nn.logsumexp(alpha[:, :, None] + transitions, axis=1) + scores  # [B, C]
        opened = start_scores + scores
        alpha = jnp.where(opens[:, None], opened, jnp.where(here[:, None], chained, alpha))
        emitted = jnp.take_along_axis(scores, tag[:, None], axis=-1)[:, 0]  # [B]
        entered = jnp.where(opens, start_scores[jnp.arange(batch), tag], transitions[previous, tag])
        gold += jnp.where(here, emitted + entered, 0.0)
        is_open |= here
        previous = jnp.where(here, tag, previous)
        segment = jnp.where(here, seg, segment)
        ending = jnp.where(opens, ends_here, ending)
        return (alpha, is_open, previous, segment, ending, log_z, gold), None

    zeros_b = jnp.zeros((batch,), jnp.float32)
    carry = (
        jnp.zeros((batch, num_labels), jnp.float32),  # alpha: log-sum of every prefix, per tag
        jnp.zeros((batch,), bool),  # a chain is open in this row
        jnp.zeros((batch,), jnp.int32),  # the open chain's last gold tag
        jnp.zeros((batch,), segment_ids.dtype),  # ... its segment
        jnp.zeros((batch,), bool),  # ... and whether its sentence ends with it (end score)
        zeros_b,  # log-partition of the chains closed so far
        zeros_b,  # gold score of the chains closed so far (and the open one's prefix)
    )
    xs = (jnp.moveaxis(emissions, 1, 0), labels.T, valid.T, segment_ids.T, starts.T, ends.T)
    (alpha, is_open, previous, _, ending, log_z, gold), _ = jax.lax.scan(step, carry, xs)
    end_scores = jnp.where(ending[:, None], end, 0.0)
    log_z += jnp.where(is_open, jax.nn.logsumexp(alpha + end_scores, axis=-1), 0.0)
    gold += jnp.where(is_open, end_scores[jnp.arange(batch), previous], 0.0)
    return log_z - gold
