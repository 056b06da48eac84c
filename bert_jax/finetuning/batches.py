"""Fine-tuning batches: which features fill which rows of which step, and their outputs back.

A batch is `slots` int [R, S] (feature indices, -1 = empty) and a row length: packed (several
features per row, segment ids and positions) or unpacked (one feature per row, cut to a length
bucket). `TrainBatches` orders each epoch as a pure function of the step (exact resume);
`eval_batches` packs in file order or sorts into length buckets. See docs/design/finetuning.md.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from bert_jax.data import packing
from bert_jax.finetuning import tasks
from bert_jax.finetuning.tasks.features import TaskData

PACKING_KEYS = ("segment_ids", "position_ids", "cls_positions")
SMALLEST_BUCKET = 32


def length_buckets(max_length: int) -> list[int]:
    """Evaluation row lengths: 32, 64, 128, ... below max_length, and max_length."""
    buckets, length = [], SMALLEST_BUCKET
    while length < max_length:
        buckets.append(length)
        length *= 2
    return [*buckets, max_length]


def bucket_length(length: int, max_length: int) -> int:
    """The shortest of `length_buckets(max_length)` that holds `length` tokens."""
    buckets = length_buckets(max_length)
    return buckets[int(np.searchsorted(buckets, length))]


@dataclasses.dataclass(frozen=True)
class Batch:
    slots: np.ndarray  # int [R, S]: features of each row, -1 = empty (S = 1 unpacked)
    length: int  # row length
    packed: bool

    @property
    def num_rows(self) -> int:
        return len(self.slots)


def build_batch(kind: str, data: TaskData, batch: Batch, rows: np.ndarray | None = None) -> dict:
    """Model inputs, targets and weights of `batch` (only its `rows` if given, e.g. those this
    process supplies; see sharding.batch_rows)."""
    task = tasks.get(kind)
    slots = batch.slots if rows is None else batch.slots[rows]
    keys = ("input_ids", "token_type_ids", *task.target_keys)
    if batch.packed:
        token_keys = ["input_ids", "token_type_ids"]
        if task.per_token:
            token_keys.append("labels")
        arrays = {k: data.arrays[k] for k in keys}
        out = packing.packed_rows(
            arrays, data.lengths, slots, batch.length, token_keys, dict(task.packed_fill)
        )
        if task.per_token:
            del out["weights"]  # tokens are weighted by their labels (and segment_ids)
        return out
    features = np.maximum(slots[:, 0], 0)
    per_token = {"input_ids", "token_type_ids", "attention_mask"} | (
        {"labels"} if task.per_token else set()
    )
    out = {}
    for key in (*keys, "attention_mask"):
        values = data.arrays[key][features]  # per-feature targets may be [n, C] (multilabel)
        out[key] = values[:, : batch.length] if key in per_token else values
    out["weights"] = (slots[:, 0] >= 0).astype(np.float32)
    return out


def real_tokens(data: TaskData, batch: Batch) -> int:
    """Tokens of the real features in `batch` (the rest of its rows x length is padding)."""
    used = batch.slots[batch.slots >= 0]
    return int(data.lengths[used].sum())


def train_indices(num_features: int, seed: int, epoch: int) -> np.ndarray:
    """The order in which epoch `epoch` visits the features: a seeded permutation."""
    return np.random.default_rng((seed, epoch)).permutation(num_features)


class TrainBatches:
    """The training batches of a run, step by step (see the module docstring)."""

    def __init__(self, data: TaskData, batch_size: int, seed: int, packed: bool,
                 max_sequences_per_row: int = 1, row_multiple: int = 1):  # fmt: skip
        """row_multiple: rows per step must divide over data-parallel devices x microbatches."""
        self.data, self.seed, self.packed = data, seed, packed
        self.max_per_row = max_sequences_per_row if packed else 1
        self.lengths = data.lengths
        n = data.num_features
        if packed:
            rows = len(packing.pack(self.lengths, data.max_seq_length, self.max_per_row))
            per_row = n / rows
            multiple = row_multiple
            self.rows_per_step = max(multiple, multiple * round(batch_size / per_row / multiple))
            self.rows_per_epoch = rows
        else:
            self.rows_per_step, self.rows_per_epoch = batch_size, n
        self.steps_per_epoch = math.ceil(self.rows_per_epoch / self.rows_per_step)
        self._cached: tuple[int, np.ndarray | None] = (-1, None)

    def _epoch_slots(self, epoch: int) -> np.ndarray:
        if self._cached[0] != epoch:
            order = train_indices(self.data.num_features, self.seed, epoch)
            if self.packed:
                slots = packing.pack(
                    self.lengths, self.data.max_seq_length, self.max_per_row, order
                )
                slots = slots[np.random.default_rng((self.seed, epoch, 1)).permutation(len(slots))]
            else:
                slots = order[:, None]
            self._cached = (epoch, slots)
        return self._cached[1]

    def batch(self, step: int) -> Batch:
        """The rows of 0-based step `step` (empty rows fill the last step of an epoch)."""
        epoch, position = divmod(step, self.steps_per_epoch)
        slots = self._epoch_slots(epoch)[
            position * self.rows_per_step : (position + 1) * self.rows_per_step
        ]
        if len(slots) < self.rows_per_step:
            empty = np.full((self.rows_per_step - len(slots), slots.shape[1]), -1, slots.dtype)
            slots = np.concatenate([slots, empty])
        return Batch(slots, self.data.max_seq_length, self.packed)

    def describe(self) -> str:
        n, lengths = self.data.num_features, self.lengths
        real = lengths.sum() / (self.rows_per_epoch * self.data.max_seq_length)
        if not self.packed:
            return f"one feature per row: {100 * real:.0f}% of the positions are real tokens"
        return (
            f"packed {n} features into {self.rows_per_epoch} rows of {self.data.max_seq_length} "
            f"({n / self.rows_per_epoch:.2f} per row, {100 * real:.0f}% real tokens); "
            f"{self.rows_per_step} rows per step"
        )


def eval_batches(data: TaskData, rows_per_batch: int, packed: bool,
                 max_sequences_per_row: int = 1) -> list[Batch]:  # fmt: skip
    """Every feature once: packed in file order into batches of rows_per_batch rows, or one per
    row sorted by length, each batch cut to the shortest length bucket that holds it."""
    lengths = data.lengths
    if packed:
        slots = packing.pack(lengths, data.max_seq_length, max_sequences_per_row)
        return [
            Batch(
                _pad_rows(slots[start : start + rows_per_batch], rows_per_batch),
                data.max_seq_length,
                True,
            )  # fmt: skip
            for start in range(0, len(slots), rows_per_batch)
        ]
    order = np.argsort(lengths, kind="stable")
    batches = []
    for start in range(0, len(order), rows_per_batch):
        chunk = order[start : start + rows_per_batch]
        length = bucket_length(int(lengths[chunk].max()), data.max_seq_length)
        batches.append(Batch(_pad_rows(chunk[:, None], rows_per_batch), length, False))
    return batches


def _pad_rows(slots: np.ndarray, rows: int) -> np.ndarray:
    empty = np.full((rows - len(slots), slots.shape[1]), -1, slots.dtype)
    return np.concatenate([slots, empty])


def scatter_predictions(kind: str, data: TaskData, batch: Batch, outputs, into: dict) -> None:
    """Writes one batch's host predictions (Task.host_predictions) into `into`, the per-feature
    arrays of predictions_buffers, at the features the batch holds."""
    tasks.get(kind).scatter_predictions(data, batch, outputs, into)


def predictions_buffers(
    kind: str, data: TaskData, num_labels: int, token_scores: bool = False
) -> dict[str, np.ndarray]:
    """Empty per-feature prediction arrays for scatter_predictions (token_scores: tag scores
    [n, L, C] rather than ids [n, L])."""
    return tasks.get(kind).prediction_buffers(data, num_labels, token_scores)
