"""Masked-LM corruption of assembled example rows, as google-research/bert's
`create_masked_lm_predictions`: round(tokens x masked_lm_prob) positions (at most
max_predictions_per_seq) become [MASK] 80%, a random id 10%, unchanged 10%. With whole-word
masking the positions come in whole words (a word that would overflow the budget is skipped) and
the 80/10/10 draw is made once per word: HFL's Chinese whole-word masking when the words come
from a segmenter. Variants (n-gram spans, partial words, a rate schedule, similar-token
replacement; docs/chinese.md) are off by default. docs/design/pretraining_examples.md has details.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from bert_jax.data.examples import ExampleOptions, Vocabulary


def mask_tokens(
    input_ids: np.ndarray,
    a_length: np.ndarray,
    b_length: np.ndarray,
    rng: np.random.Generator,
    options: ExampleOptions,
    vocab: Vocabulary,
    word_starts: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Masked-LM corruption of assembled rows (docs/design/pretraining_examples.md).

    input_ids: int32 [n, L] from `assemble`; a_length, b_length: int64 [n]; word_starts: bool
    [n, L] from `assemble` (the first token of each segment marked), needed with
    `options.whole_word_masking`.
    Returns input_ids (corrupted copy) int32 [n, L], masked_lm_positions int32 [n, P] (ascending,
    padded with 0), masked_lm_ids int32 [n, P] (original ids, padded with 0) and
    masked_lm_weights float32 [n, P] (1 for real predictions).
    """
    n, length = input_ids.shape
    budget_cap = options.max_predictions_per_seq
    j = np.arange(length)[None, :]
    a_len, end = a_length[:, None], (a_length + b_length + 2)[:, None]
    candidate = ((j >= 1) & (j <= a_len)) | ((j >= a_len + 2) & (j < end))
    num_tokens = sequence_tokens(a_length, b_length)
    budget = np.rint(num_tokens * options.masked_lm_prob).astype(np.int64)
    budget = np.minimum(np.clip(budget, 1, budget_cap), a_length + b_length)

    width = min(budget_cap, length)
    if _masks_units(options):
        if options.whole_word_masking and word_starts is None:
            raise ValueError("whole_word_masking needs word_starts (from assemble)")
        units = word_starts if options.whole_word_masking else np.ones_like(candidate)
        chosen, word_draw, word_of = _choose_spans(units, candidate, budget, rng, options)
        positions = np.sort(np.where(chosen, j, length), axis=1)[:, :width]
    elif options.whole_word_masking:
        if word_starts is None:
            raise ValueError("whole_word_masking needs word_starts (from assemble)")
        chosen, word_draw, word_of = _choose_whole_words(word_starts, candidate, budget, rng)
        positions = np.sort(np.where(chosen, j, length), axis=1)[:, :width]
    else:  # The `budget` candidates with the smallest random keys: a uniform random subset.
        keys = np.where(candidate, rng.random((n, length), np.float32), np.float32(2))
        smallest = np.argpartition(keys, width - 1, axis=1)[:, :width]
        by_key = np.argsort(np.take_along_axis(keys, smallest, axis=1), axis=1)
        ranked = np.take_along_axis(smallest, by_key, axis=1)
        positions = np.sort(np.where(np.arange(width) < budget[:, None], ranked, length), axis=1)
        word_draw, word_of = None, None
    weights = positions < length
    positions = np.where(weights, positions, 0)
    rows = np.arange(n)[:, None]
    labels = np.where(weights, input_ids[rows, positions], 0)
    if word_draw is None:
        draw = rng.random((n, width))
    else:
        draw = word_draw[rows, word_of[rows, positions]]
    masked_as = np.full((n, width), vocab.mask_id)
    if options.similar_token_prob > 0:
        masked_as = _similar_tokens(labels, vocab, options.similar_token_prob, rng)
    replacement = np.where(
        draw < 0.8,
        masked_as,
        np.where(draw < 0.9, labels, rng.integers(0, vocab.size, (n, width))),
    )
    corrupted = input_ids.copy()
    real_rows, real_cols = np.nonzero(weights)
    corrupted[real_rows, positions[real_rows, real_cols]] = replacement[real_rows, real_cols]

    if width < budget_cap:  # max_seq_length < max_predictions_per_seq: pad to the fixed width.
        pad = ((0, 0), (0, budget_cap - width))
        positions, labels, weights = (np.pad(x, pad) for x in (positions, labels, weights))
    return {
        "input_ids": corrupted.astype(np.int32),
        "masked_lm_positions": positions.astype(np.int32),
        "masked_lm_ids": labels.astype(np.int32),
        "masked_lm_weights": weights.astype(np.float32),
    }


def sequence_tokens(a_length: np.ndarray, b_length: np.ndarray) -> np.ndarray:
    """Tokens of examples with their specials: [CLS] A [SEP] B [SEP], or [CLS] A [SEP] where B
    is empty (an objective without NSP)."""
    return a_length + b_length + 2 + (b_length > 0)


def _choose_whole_words(word_starts, candidate, budget, rng):
    """Whole words in random order, each taken if it still fits the budget (else skipped).

    Returns chosen bool [n, L], one uniform draw per word float [n, L] and the word index of each
    position int [n, L]. Words never span [CLS]/[SEP].
    """
    n, length = candidate.shape
    starts = candidate & word_starts
    word_of = np.cumsum(starts, axis=1) - 1  # Word index per position (valid on candidates).
    word_of = np.where(candidate, word_of, length - 1)
    rows = np.repeat(np.arange(n), length).reshape(n, length)
    word_size = np.zeros((n, length), np.int64)
    np.add.at(word_size, (rows[candidate], word_of[candidate]), 1)
    num_words = starts.sum(axis=1)
    keys = np.where(np.arange(length)[None, :] < num_words[:, None], rng.random((n, length)), 2.0)
    order = np.argsort(keys, axis=1)
    taken = np.zeros((n, length), bool)
    used = np.zeros(n, np.int64)
    row_index = np.arange(n)
    for step in range(int(num_words.max(initial=0))):
        word = order[:, step]
        size = word_size[row_index, word]
        fits = (step < num_words) & (used + size <= budget)
        taken[row_index, word] = fits
        used += np.where(fits, size, 0)
        if np.all((used >= budget) | (step + 1 >= num_words)):
            break
    chosen = candidate & taken[rows, word_of]
    return chosen, rng.random((n, length)), word_of


def span_weights(text: str) -> np.ndarray:
    """The n-gram length weights of `data.span_length_weights` ("0.4,0.3,0.2,0.1": lengths 1..4),
    normalised; raises ValueError on anything but non-negative numbers with a positive sum."""
    try:
        weights = np.array([float(w) for w in text.split(",")], np.float64)
    except ValueError:
        raise ValueError(f"span_length_weights {text!r}: use comma-separated numbers") from None
    if np.any(weights < 0) or not np.isfinite(weights).all() or weights.sum() <= 0:
        raise ValueError(f"span_length_weights {text!r}: weights must be >= 0 with a sum > 0")
    return weights / weights.sum()


def scheduled_masked_lm_prob(options: ExampleOptions, epochs: float) -> float:
    """The masking rate after `epochs` passes over the documents: linear from
    masked_lm_prob_start to masked_lm_prob over masked_lm_prob_schedule_epochs (then constant)."""
    start, end = options.masked_lm_prob_start, options.masked_lm_prob
    if start <= 0 or options.masked_lm_prob_schedule_epochs <= 0:
        return end
    progress = min(1.0, max(0.0, epochs / options.masked_lm_prob_schedule_epochs))
    return float(start + (end - start) * progress)


def _masks_units(options: ExampleOptions) -> bool:
    """Whether a variant that chooses spans of units (words or tokens) is on."""
    return bool(
        options.span_length_weights
        or options.word_char_mask_prob > 0
        or options.max_masked_word_length > 0
    )


def _choose_spans(unit_starts, candidate, budget, rng, options):
    """Spans of consecutive units (words, or tokens when unit_starts is all True) in random order
    of their first unit, each n units long (n drawn from span_length_weights, else 1), cut at the
    segment's end and before a unit already taken, shortened to what still fits the budget (a
    span whose first unit does not fit is skipped). Of a word, word_char_mask_prob masks one
    random token only and max_masked_word_length at most that many consecutive tokens (at a
    random offset). Returns chosen bool [n, L], one uniform draw per span (indexed by unit)
    float [n, L] and the unit index of each position int [n, L].
    """
    n, length = candidate.shape
    j = np.arange(length)[None, :]
    rows = np.repeat(np.arange(n), length).reshape(n, length)
    starts = candidate & unit_starts
    unit_of = np.where(candidate, np.cumsum(starts, axis=1) - 1, length - 1)
    size = np.zeros((n, length), np.int64)
    np.add.at(size, (rows[candidate], unit_of[candidate]), 1)
    first = np.zeros((n, length), np.int64)  # Position of each unit's first token.
    first[rows[starts], unit_of[starts]] = j.repeat(n, 0)[starts]
    num_units = starts.sum(axis=1)
    # Units of segment A are 0..a_units-1: a span never runs from A into B.
    a_units = (starts & (np.cumsum(~candidate, axis=1) < 2)).sum(axis=1)
    unit = np.arange(length)[None, :]
    segment_end = np.where(unit < a_units[:, None], a_units[:, None], num_units[:, None])

    cost = size.copy()  # Tokens a unit costs when masked.
    if options.word_char_mask_prob > 0:
        cost = np.where((rng.random((n, length)) < options.word_char_mask_prob), 1, cost)
    if options.max_masked_word_length > 0:
        cost = np.minimum(cost, options.max_masked_word_length)
    offset = (rng.random((n, length)) * (size - cost + 1)).astype(np.int64)
    if options.span_length_weights:
        weights = span_weights(options.span_length_weights)
        span = 1 + rng.choice(len(weights), size=(n, length), p=weights)
    else:
        span = np.ones((n, length), np.int64)

    keys = np.where(unit < num_units[:, None], rng.random((n, length)), 2.0)
    order = np.argsort(keys, axis=1)
    taken = np.zeros((n, length + 1), bool)  # Column `length`: never a unit.
    span_of = np.zeros((n, length), np.int64)
    used = np.zeros(n, np.int64)
    row_index = np.arange(n)
    for step in range(int(num_units.max(initial=0))):
        head = order[:, step]
        open_ = (step < num_units) & ~taken[row_index, head]
        stop = np.minimum(head + span[row_index, head], segment_end[row_index, head])
        for k in range(int(span.max(initial=1))):
            u = np.minimum(head + k, length)
            ok = open_ & (head + k < stop) & ~taken[row_index, u]
            ok &= used + cost[row_index, np.minimum(u, length - 1)] <= budget
            taken[row_index[ok], u[ok]] = True
            span_of[row_index[ok], u[ok]] = head[ok]
            used += np.where(ok, cost[row_index, np.minimum(u, length - 1)], 0)
            open_ = ok
        if np.all((used >= budget) | (step + 1 >= num_units)):
            break
    inside = j - first[rows, unit_of]
    chosen = candidate & taken[rows, unit_of]
    chosen &= (inside >= offset[rows, unit_of]) & (inside < (offset + cost)[rows, unit_of])
    draw = rng.random((n, length))
    return chosen, draw[np.arange(n)[:, None], span_of], unit_of


def _similar_tokens(labels, vocab: Vocabulary, probability: float, rng) -> np.ndarray:
    """[MASK], or with `probability` a token similar to the label (vocab.similar_ids: int
    [size, K], -1 padded) where it has one: MacBERT's masking by similar words."""
    if vocab.similar_ids is None:
        raise ValueError("similar_token_prob needs vocab.similar_ids (a similarity table)")
    table = vocab.similar_ids
    pick = table[labels, rng.integers(0, table.shape[1], labels.shape)]
    similar = (rng.random(labels.shape) < probability) & (pick >= 0)
    return np.where(similar, pick, vocab.mask_id)
