"""Sequence packing: several short sequences per fixed-length row, without cross-contamination.

Krell et al. 2021: a packing is an int array `slots` [R, S], row r holding the sequences
slots[r, 0], slots[r, 1], ... (-1 marks an empty slot, last in a row); the model keeps them apart
with segment ids, restarting positions and one [CLS] each.

    slots = pack(lengths, max_length=128, max_per_row=16)  # best-fit decreasing
    rows = packed_rows({"input_ids": ids, ...}, lengths, slots[:8], 128)  # arrays [8, 128] ...
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

# Keys whose values are per token ([n, L] -> [R, L]); anything else is per sequence ([n] ->
# [R, S]). `fill` values of positions / slots that hold no sequence, by key.
DEFAULT_FILL = {"labels": -1}


def pack(lengths, max_length: int, max_per_row: int, order=None) -> np.ndarray:
    """Best-fit decreasing over the length histogram (Krell et al.'s shortest-pack-first
    histogram packing): sequences from the longest down, each into the open row with the least
    room that still fits it, else a new row. Returns slots int32 [R, max_per_row].

    Which rows exist depends only on the multiset of lengths; `order` (a permutation of the
    sequence indices, default 0..n-1) decides which of several equally long sequences goes where,
    so a seeded permutation per epoch gives other rows with the same fill.
    """
    lengths = np.asarray(lengths, np.int64)
    if lengths.size and (lengths.min() < 1 or lengths.max() > max_length):
        raise ValueError(f"sequence lengths must be in [1, {max_length}]")
    if max_per_row < 1:
        raise ValueError(f"max_per_row must be >= 1, got {max_per_row}")
    counts = np.bincount(lengths, minlength=max_length + 1)
    # Two ways to open a row; the packing with fewer rows wins (ties: one sequence per new row).
    templates = min(
        (_best_fit_templates(counts, max_length, max_per_row, fill) for fill in (False, True)),
        key=lambda t: sum(rows for rows, _ in t),
    )
    return _fill_templates(templates, lengths, max_per_row, order)


def _best_fit_templates(counts, max_length: int, max_per_row: int, fill_new_rows: bool) -> list:
    """Row templates [(how many rows, their lengths)] by best-fit decreasing over the length
    histogram. A new row holds one sequence (`fill_new_rows` False: Krell et al.'s form, best
    when shorter sequences fill the rest) or as many of its length as fit (best when there are
    many of one length and too few shorter ones)."""
    # Open rows by the room they have left.
    open_rows: list[list[tuple[int, tuple[int, ...]]]] = [[] for _ in range(max_length + 1)]
    templates: list[tuple[int, tuple[int, ...]]] = []

    def place(rows: int, row: tuple[int, ...], room: int) -> None:
        if room == 0 or len(row) == max_per_row:
            templates.append((rows, row))
        else:
            open_rows[room].append((rows, row))

    for length in range(max_length, 0, -1):
        left = int(counts[length])
        while left:
            room = next((r for r in range(length, max_length + 1) if open_rows[r]), None)
            if room is None:  # new rows
                per_row = min(max_length // length, max_per_row, left) if fill_new_rows else 1
                row = (length,) * per_row
                rows = left // per_row
                place(rows, row, max_length - length * per_row)
                left -= rows * per_row
            else:
                count, row = open_rows[room].pop()
                rows = min(count, left)
                if count > rows:
                    open_rows[room].append((count - rows, row))
                place(rows, (*row, length), room - length)
                left -= rows
    return templates + [t for group in open_rows for t in group]


def _fill_templates(templates, lengths: np.ndarray, max_per_row: int, order) -> np.ndarray:
    """Row templates -> slots: every slot asking for length l takes the next sequence of length
    l in `order`."""
    num_rows = sum(count for count, _ in templates)
    slot_lengths = np.zeros((num_rows, max_per_row), np.int64)
    row = 0
    for count, template in templates:
        slot_lengths[row : row + count, : len(template)] = template
        row += count
    order = np.arange(len(lengths)) if order is None else np.asarray(order)
    wanted = slot_lengths.reshape(-1)
    filled = np.flatnonzero(wanted)
    targets = filled[np.argsort(wanted[filled], kind="stable")]
    sources = order[np.argsort(lengths[order], kind="stable")]
    slots = np.full(num_rows * max_per_row, -1, np.int32)
    slots[targets] = sources
    return slots.reshape(num_rows, max_per_row)


def _layout(lengths: np.ndarray, slots: np.ndarray, max_length: int):
    """Where every sequence of `slots` [R, S] sits in its row: (real [R, S], source [R, S],
    starts [R, S], is_token [R, L], slot_of [R, L], token_source [R, L], within [R, L])."""
    num_rows, per_row = slots.shape
    real = slots >= 0
    source = np.maximum(slots, 0)
    slot_lengths = np.where(real, np.asarray(lengths)[source], 0)  # [R, S]
    starts = np.cumsum(slot_lengths, axis=1) - slot_lengths
    ends = starts + slot_lengths
    position = np.arange(max_length)
    slot_of = (position[None, :, None] >= ends[:, None, :]).sum(-1)  # [R, L], S past the end
    is_token = slot_of < per_row
    slot_of = np.minimum(slot_of, per_row - 1)
    rows = np.arange(num_rows)[:, None]
    within = np.where(is_token, position[None, :] - starts[rows, slot_of], 0)
    return real, source, starts, is_token, slot_of, source[rows, slot_of], within


def packed_rows(
    arrays: Mapping[str, np.ndarray],
    lengths: np.ndarray,
    slots: np.ndarray,
    max_length: int,
    token_keys: Sequence[str] = ("input_ids", "token_type_ids"),
    fill: Mapping[str, float] | None = None,
) -> dict[str, np.ndarray]:
    """The rows of `slots` [R, S] built from one-sequence-per-row arrays.

    arrays: per-sequence values, [n, >= max_length] for token_keys (the first lengths[i] tokens
    of sequence i are real) and [n, ...] for the rest. Returns token_keys as [R, max_length] and
    the other keys as [R, S, ...], plus segment_ids and position_ids [R, max_length] (0 on padding),
    cls_positions [R, S] (where each sequence starts; 0 for an empty slot) and weights [R, S]
    (1.0 for a real sequence). Padding and empty slots hold `fill[key]` (DEFAULT_FILL, else 0).
    """
    fill = {**DEFAULT_FILL, **(fill or {})}
    slots = np.asarray(slots)
    real, source, starts, is_token, slot_of, token_source, within = _layout(
        lengths, slots, max_length
    )
    out = {}
    for key, values in arrays.items():
        values = np.asarray(values)
        pad = np.asarray(fill.get(key, 0), values.dtype)
        if key in token_keys:
            out[key] = np.where(is_token, values[token_source, within], pad)
        else:  # [n, ...] -> [R, S, ...]
            out[key] = np.where(
                real.reshape(real.shape + (1,) * (values.ndim - 1)), values[source], pad
            )
    out["segment_ids"] = np.where(is_token, slot_of + 1, 0).astype(np.int32)
    out["position_ids"] = within.astype(np.int32)
    out["cls_positions"] = np.where(real, starts, 0).astype(np.int32)
    out["weights"] = real.astype(np.float32)
    return out


def unpack_tokens(values, lengths: np.ndarray, slots: np.ndarray, out: np.ndarray) -> None:
    """Per-token outputs of packed rows [R, L, ...] into `out` [n, >= L, ...], the array of the
    one-sequence-per-row layout (positions past a sequence's length are left as they are)."""
    values = np.asarray(values)
    _, _, _, is_token, _, token_source, within = _layout(lengths, slots, values.shape[1])
    out[token_source[is_token], within[is_token]] = values[is_token]


def unpack_sequences(values, slots: np.ndarray, out: np.ndarray) -> None:
    """Per-sequence outputs of packed rows [R, S, ...] into `out` [n, ...]."""
    real = slots >= 0
    out[slots[real]] = np.asarray(values)[real]
