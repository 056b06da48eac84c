"""Masked-LM corruption of assembled example rows, as google-research/bert's
`create_masked_lm_predictions`: round(tokens x masked_lm_prob) positions (at most
max_predictions_per_seq) become [MASK] 80%, a random id 10%, unchanged 10%. With whole-word
masking the positions come in whole words (a word that would overflow the budget is skipped) and
the 80/10/10 draw is made once per word: HFL's Chinese whole-word masking when the words come
from a segmenter. docs/design/pretraining_examples.md has the details.
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
    if options.whole_word_masking:
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
    replacement = np.where(
        draw < 0.8,
        vocab.mask_id,
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
