"""Packed pretraining rows: several MLM+NSP examples per row of max_seq_length.

Each example is built exactly as unpacked (`examples.build_examples`); packing only places it,
with its own segment id, positions and [CLS] (so its own NSP logits).

    slots = pack_pairs(pairs, seed, options, sequences_per_row)  # rows of a window's pairs
    rows = build_packed_examples(source, pairs, slots[:64], seed, options, vocab)
    examples = unpack_examples(rows, options.max_predictions_per_seq)  # back, one per row
See docs/design/data_pipeline.md, "Packing".
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from bert_jax.data import packing
from bert_jax.data.examples import (
    EXAMPLE_FIELDS,
    ExampleOptions,
    Pairs,
    TokenSource,
    Vocabulary,
    build_examples,
)
from bert_jax.data.masking import sequence_tokens
from bert_jax.errors import UserError

# The arrays of a set of packed rows (leading dimension R; S = sequences per row): the example
# fields, with next_sentence_labels [R, S], plus next_sentence_weights float32 [R, S] (1 for a
# real example, 0 for an empty slot), segment_ids and position_ids int32 [R, L] and
# cls_positions int32 [R, S] (`bert_jax.data.packing`).
PACKED_FIELDS = (
    *EXAMPLE_FIELDS,
    "next_sentence_weights",
    "segment_ids",
    "position_ids",
    "cls_positions",
)


def predictions_per_row(options: ExampleOptions, sequences_per_row: int) -> int:
    """Masked-LM slots of a packed row (P): what S examples of together at most L tokens can
    need, each with google's own budget min(max_predictions_per_seq, max(1, round(n * p))).

    That budget is at most n * p + 1 (a rounded n * p is within 1/2 of it; max(1, .) adds at most
    1 when it rounds to 0), so a row needs at most floor(L * p) + S slots, and never more than S
    times the per-example cap: P = min(S * max_predictions_per_seq, floor(L * p) + S).
    """
    # a schedule's highest, or the validation split's rate
    rate = max(options.masked_lm_prob, options.masked_lm_prob_start, options.eval_masked_lm_prob)
    bound = int(np.floor(options.max_seq_length * rate + 1e-9))
    return min(sequences_per_row * options.max_predictions_per_seq, bound + sequences_per_row)


def sequences_per_row(data_config) -> int | None:
    """Examples per row of a pretraining data config (`data.*`): max_sequences_per_row with
    data.packing, None for one example per row."""
    if not data_config.get("packing", False):
        return None
    if int(data_config.max_sequences_per_row) < 1:
        raise UserError(
            f"data.max_sequences_per_row is {data_config.max_sequences_per_row}: use >= 1"
        )
    return int(data_config.max_sequences_per_row)


def batch_predictions(data_config) -> int:
    """Masked-LM slots per batch row of a pretraining data config: max_predictions_per_seq, or
    packed `predictions_per_row`."""
    per_row = sequences_per_row(data_config)
    if per_row is None:
        return int(data_config.max_predictions_per_seq)
    return predictions_per_row(ExampleOptions.from_data_config(data_config), per_row)


def pair_lengths(pairs: Pairs) -> np.ndarray:
    """Tokens of each example, [CLS] and each [SEP] included: int64 [n]."""
    return sequence_tokens(pairs.a_length, pairs.b_length)


def pack_pairs(
    pairs: Pairs, seed: Sequence[int], options: ExampleOptions, sequences_per_row: int
) -> np.ndarray:
    """Rows of a set of examples: slots int32 [R, S] (indices into `pairs`, -1 = empty), by
    best-fit decreasing over their lengths (`packing.pack`), the rows in a random order."""
    slots = packing.pack(pair_lengths(pairs), options.max_seq_length, sequences_per_row)
    return slots[np.random.default_rng(list(seed)).permutation(len(slots))]


def pack_examples(
    examples: dict[str, np.ndarray], slots: np.ndarray, max_predictions: int, pad_id: int = 0
) -> dict[str, np.ndarray]:
    """Examples (the fields of `build_examples`, one per row) packed into the rows `slots`
    int [R, S] describes (indices into the examples, -1 = empty, empty slots last).

    Tokens keep their order; segment_ids, position_ids and cls_positions say which example a
    position belongs to. Each example keeps its own masked positions (offset by where it starts
    in the row), ids and weights: a row's P = max_predictions slots hold its examples' predictions
    in row order, then padding (position 0, id 0, weight 0); padding positions hold pad_id.
    Returns PACKED_FIELDS.
    """
    lengths = examples["attention_mask"].sum(axis=1)
    length = examples["input_ids"].shape[1]
    keys = ("input_ids", "token_type_ids", "next_sentence_labels")
    rows = packing.packed_rows(
        {k: examples[k] for k in keys}, lengths, slots, length, fill={"input_ids": pad_id}
    )
    rows["next_sentence_weights"] = rows.pop("weights")
    rows["attention_mask"] = (rows["segment_ids"] > 0).astype(np.int32)

    real = slots >= 0
    source = np.maximum(slots, 0)
    starts = rows["cls_positions"][:, :, None]  # [R, S, 1]
    weights = examples["masked_lm_weights"][source] * real[:, :, None]  # [R, S, P_example]
    positions = np.where(weights > 0, examples["masked_lm_positions"][source] + starts, 0)
    ids = np.where(weights > 0, examples["masked_lm_ids"][source], 0)
    num_rows = len(slots)
    weights, positions, ids = (x.reshape(num_rows, -1) for x in (weights, positions, ids))
    order = np.argsort(weights == 0, axis=1, kind="stable")  # real predictions first, in order
    needed = int((weights > 0).sum(axis=1).max(initial=0))
    if needed > max_predictions:
        raise ValueError(f"a row holds {needed} predictions, more than its {max_predictions}")
    width = min(max_predictions, order.shape[1])
    pad = ((0, 0), (0, max_predictions - width))
    predictions = {
        "masked_lm_positions": positions,
        "masked_lm_ids": ids,
        "masked_lm_weights": weights,
    }
    for name, values in predictions.items():
        taken = np.take_along_axis(values, order[:, :width], axis=1)
        rows[name] = np.pad(taken, pad).astype(examples[name].dtype)
    return {name: rows[name] for name in PACKED_FIELDS}


def build_packed_examples(
    source: TokenSource,
    pairs: Pairs,
    slots: np.ndarray,
    seed: Sequence[int] | np.random.SeedSequence,
    options: ExampleOptions,
    vocab: Vocabulary,
) -> dict[str, np.ndarray]:
    """The packed rows `slots` [R, S] (indices into `pairs`, -1 = empty) describe: their examples
    built (`build_examples`, in row order, `seed` fixing the masks) and packed (`pack_examples`)."""
    real = slots >= 0
    examples = build_examples(source, pairs[slots[real]], seed, options, vocab)
    local = np.full(slots.shape, -1, np.int64)
    local[real] = np.arange(int(real.sum()))
    max_predictions = predictions_per_row(options, slots.shape[1])
    return pack_examples(examples, local, max_predictions, vocab.pad_id)


def unpack_examples(
    rows: dict[str, np.ndarray], max_predictions_per_seq: int, pad_id: int = 0
) -> dict[str, np.ndarray]:
    """The examples of packed rows, one per row (EXAMPLE_FIELDS, leading dimension the number of
    examples, in row-major slot order): the inverse of `pack_examples`."""
    real = rows["next_sentence_weights"] > 0  # [R, S]
    count, per_row = int(real.sum()), real.shape[1]
    length = rows["input_ids"].shape[1]
    segments = rows["segment_ids"]
    index = np.full(real.shape, -1, np.int64)
    index[real] = np.arange(count)
    slot_lengths = (segments[:, :, None] == np.arange(1, per_row + 1)).sum(axis=1)  # [R, S]
    lengths = slot_lengths[real]
    out = {}
    for key, fill in (("input_ids", pad_id), ("token_type_ids", 0)):
        out[key] = np.full((count, length), fill, rows[key].dtype)
        packing.unpack_tokens(rows[key], lengths, index, out[key])
    out["attention_mask"] = (np.arange(length) < lengths[:, None]).astype(np.int32)
    # Predictions are in row order: grouped by example, ascending within each.
    row, column = np.nonzero(rows["masked_lm_weights"] > 0)
    position = rows["masked_lm_positions"][row, column]
    slot = segments[row, position] - 1
    example = index[row, slot]
    rank = np.arange(len(example)) - np.searchsorted(example, example)
    shape = (count, max_predictions_per_seq)
    out["masked_lm_positions"] = np.zeros(shape, np.int32)
    out["masked_lm_positions"][example, rank] = position - rows["cls_positions"][row, slot]
    out["masked_lm_ids"] = np.zeros(shape, np.int32)
    out["masked_lm_ids"][example, rank] = rows["masked_lm_ids"][row, column]
    out["masked_lm_weights"] = np.zeros(shape, np.float32)
    out["masked_lm_weights"][example, rank] = 1.0
    out["next_sentence_labels"] = rows["next_sentence_labels"][real]
    return {name: out[name] for name in EXAMPLE_FIELDS}
