"""data/packing.py: best-fit-decreasing packing, packed rows and their unpacking."""

import numpy as np
import pytest

from bert_jax.data import packing


@pytest.mark.parametrize("max_per_row, slack", [(16, 1.02), (6, 1.2)])
def test_pack_places_every_sequence_once_within_the_limits_and_nearly_full(max_per_row, slack):
    rng = np.random.default_rng(0)
    lengths = np.clip(rng.gamma(2.0, 12.0, 5000).astype(int) + 2, 2, 128)
    slots = packing.pack(lengths, 128, max_per_row, order=rng.permutation(len(lengths)))
    used = slots[slots >= 0]
    assert sorted(used.tolist()) == list(range(len(lengths)))
    per_row = np.where(slots >= 0, lengths[np.maximum(slots, 0)], 0)
    assert per_row.sum(1).max() <= 128 and (slots >= 0).sum(1).max() <= max_per_row
    assert ((slots[:, 1:] >= 0) <= (slots[:, :-1] >= 0)).all()  # empty slots come last
    bound = max(lengths.sum() / 128, len(lengths) / max_per_row)  # no packing has fewer rows
    assert len(slots) <= slack * np.ceil(bound)


def test_pack_fills_rows_with_equal_lengths_and_keeps_order_among_equals():
    np.testing.assert_array_equal(packing.pack([14] * 5, 32, 16)[:, :2],
                                  [[0, 1], [2, 3], [4, -1]])  # fmt: skip
    assert packing.pack([3] * 40, 32, 16).shape == (4, 16)  # 10 per row: 30 of 32 tokens
    assert packing.pack([3] * 40, 32, 4).shape == (10, 4)  # at most 4 per row
    # Which rows exist depends on the lengths only; `order` decides who goes where.
    lengths = [5, 9, 5, 9, 12]
    a, b = packing.pack(lengths, 16, 3), packing.pack(lengths, 16, 3, order=[4, 3, 2, 1, 0])
    assert a.shape == b.shape and not np.array_equal(a, b)
    with pytest.raises(ValueError, match=r"lengths must be in \[1, 16\]"):
        packing.pack([17], 16, 3)


def test_pack_keeps_room_for_shorter_sequences_when_that_needs_fewer_rows():
    """Filling new rows with equal lengths (5, 5) strands the 3: two rows hold all six only when
    each 5 opens its own row and the shorter ones fill them (5, 3, 2) and (5, 2, 1)."""
    slots = packing.pack([5, 5, 3, 2, 2, 1], max_length=10, max_per_row=3)
    assert len(slots) == 2
    assert sorted(slots[slots >= 0].tolist()) == list(range(6))


def test_packed_rows_and_unpacking_round_trip():
    lengths = np.array([3, 5, 2, 4])
    tokens = np.zeros((4, 8), np.int32)
    for i, n in enumerate(lengths):
        tokens[i, :n] = 10 * (i + 1) + np.arange(n)
    slots = np.array([[1, 0], [3, 2], [-1, -1]])
    rows = packing.packed_rows({"input_ids": tokens, "labels": np.array([7, 8, 9, 6])},
                               lengths, slots, 8)  # fmt: skip
    np.testing.assert_array_equal(rows["input_ids"][0], [20, 21, 22, 23, 24, 10, 11, 12])
    np.testing.assert_array_equal(rows["segment_ids"][1], [1, 1, 1, 1, 2, 2, 0, 0])
    np.testing.assert_array_equal(rows["position_ids"][1], [0, 1, 2, 3, 0, 1, 0, 0])
    np.testing.assert_array_equal(rows["cls_positions"], [[0, 5], [0, 4], [0, 0]])
    np.testing.assert_array_equal(rows["labels"], [[8, 7], [6, 9], [-1, -1]])
    np.testing.assert_array_equal(rows["weights"], [[1, 1], [1, 1], [0, 0]])
    back = np.full_like(tokens, -5)
    packing.unpack_tokens(rows["input_ids"], lengths, slots, back)
    np.testing.assert_array_equal(np.where(back == -5, 0, back), tokens)
    labels = np.zeros(4, np.int64)
    packing.unpack_sequences(rows["labels"], slots, labels)
    np.testing.assert_array_equal(labels, [7, 8, 9, 6])
