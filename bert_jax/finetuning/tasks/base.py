"""The interface every fine-tuning task kind implements (one module per kind, see the registry).

A Task says how its data is read and featurised, which head sits on the encoder, what the step
sums for its loss, what evaluation brings back to the host and how that becomes predictions,
metrics and a prediction file. The generic code (features.load_task, finetuning.step / batches /
train, inference, checkpoints.pretrained) asks the Task and never compares kind names.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from bert_jax.data import packing
from bert_jax.errors import UserError
from bert_jax.finetuning.tasks.features import IGNORE_LABEL

if TYPE_CHECKING:
    import flax.linen as nn

    from bert_jax.finetuning.batches import Batch
    from bert_jax.finetuning.tasks.features import TaskData
    from bert_jax.finetuning.tasks.readers import ReadResult
    from bert_jax.model.modeling import BertConfig


class Task:
    """One task kind. Class attributes describe it; the methods hold everything kind-dependent.

    Subclasses set the attributes they change and implement the methods that raise
    NotImplementedError. One instance per registered kind name (`registry.get(kind)`).
    """

    head_name: ClassVar[str] = "classifier"  # the head's parameter subtree (task_info "head")
    target_keys: ClassVar[tuple[str, ...]] = ("labels",)  # TaskData.arrays the step needs
    per_token: ClassVar[bool] = False  # targets and predictions per token [n, L], not per feature
    packable: ClassVar[bool] = True  # may several features share a row (config.packing)
    uses_label_list: ClassVar[bool] = True  # a label set read from the training data
    counts_correct: ClassVar[bool] = True  # the step's `correct` sum is meaningful (accuracy)
    prediction_file: ClassVar[str] = "test_predictions.tsv"  # do_predict's file in the workdir
    # The transformers task model it exports as and reads: (class, config problem_type), or None
    # (the encoder alone is exported).
    hf_task_model: ClassVar[tuple[str, str | None] | None] = None
    packed_fill: ClassVar[dict[str, Any]] = {
        "labels": IGNORE_LABEL
    }  # target fill of empty packed slots
    # The kind's shipped recipe (finetuning_config(kind), configs/finetune/KIND.py): keys set over
    # the generic defaults, and over those in the seconds-long "test" mode (use_test_mode).
    recipe: ClassVar[dict[str, Any]] = {}
    test_recipe: ClassVar[dict[str, Any]] = {}

    def __init__(self, kind: str):
        self.kind = kind  # the registered name: config task.kind, task_info.json "kind"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.kind!r})"

    # --- configuration -------------------------------------------------------------------------

    def num_labels(self, label_list: list[str] | None) -> int:
        """Output width of the head.

        Args:
          label_list: the training label set (None when uses_label_list is False).
        Returns:
          The head's number of outputs (classes by default).
        """
        return len(label_list or ())

    def check_config(self, config) -> None:
        """Raises UserError for fine-tuning options this kind does not take (before compiling).

        Args:
          config: the fine-tuning ConfigDict.
        """
        if config.get("crf", False):
            raise UserError(f"crf applies to token_classification, not {self.kind}: unset it")
        if int(config.get("head_window", 0)):
            raise UserError(
                f"head_window applies to token_classification, not {self.kind}: unset it"
            )
        if config.packing and not self.packable:
            raise UserError(f"packing does not apply to {self.kind}: unset it")

    # --- data ----------------------------------------------------------------------------------

    def read_file(self, path, labeled: bool) -> ReadResult:
        """Reads one split from a local file.

        Args:
          path: the split's file (pathlib.Path, `~` expanded).
          labeled: False for the test split (labels optional).
        Returns:
          readers.ReadResult: examples, whether labeled, input columns, source, skipped count.
        """
        raise NotImplementedError

    def read_tfds(self, records, features, origin: str, split: str, tfds_split: str) -> ReadResult:
        """Examples from an opened TFDS split (readers.read_tfds opens it, then calls this).

        Args:
          records: iterable of the split's records (dicts of numpy values).
          features: the dataset's FeaturesDict (feature names, ClassLabel names).
          origin: "tfds:name[split]", the prefix of every example's origin.
          split: train, dev or test; tfds_split: the TFDS split name read.
        Returns:
          readers.ReadResult.
        """
        raise NotImplementedError

    def read_rows(self, rows, labeled: bool, columns) -> ReadResult:
        """Examples from data held in memory, the same ones read_file makes of the same data.

        Args:
          rows: tasks.rows.Rows (tuples, dicts, DataFrame or Dataset rows of one split).
          labeled: False for the test split (labels optional).
          columns: config task.columns (text, text_pair, label, tokens, tags column names).
        Returns:
          readers.ReadResult.
        """
        raise UserError(
            f"the {self.kind} kind reads files only (task.train_file, task.dev_file); rows in "
            "memory take the classification, regression, multilabel and token_classification kinds"
        )

    def featurise(
        self,
        examples: list,
        tokenizer,
        task_config,
        split: str,
        max_seq_length: int,
        label_to_id: dict[str, int],
        labeled: bool,
    ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, int]]:
        """Examples -> fixed-shape arrays (see TaskData for the layout).

        Args:
          examples: ReadResult.examples; tokenizer: WordPieceTokenizer.
          task_config: the fine-tuning config (the kind's own options, e.g. doc_stride).
          split: train, dev or test; max_seq_length: the row length L.
          label_to_id: label -> id ({} without a label list); labeled: examples carry labels.
        Returns:
          (arrays: input_ids, token_type_ids, attention_mask and target_keys, leading dim n;
           feature_info: host-only per-feature data for decoding; stats: counts to report).
        """
        raise NotImplementedError

    # --- model and step (traced: jax arrays) ---------------------------------------------------

    def model(
        self, config: BertConfig, num_labels: int, crf: bool = False, window: int = 0
    ) -> nn.Module:
        """The task model: the encoder under 'bert' plus this kind's head under head_name.

        Args:
          config: the BertConfig; num_labels: num_labels(label_list).
          crf, window: token classification's CRF and head window (others reject them).
        Returns:
          A flax Module called as model(input_ids, token_type_ids, attention_mask, ...).
        """
        raise NotImplementedError

    def head_names(self, crf: bool = False) -> tuple[str, ...]:
        """Top-level parameter subtrees a pretrained encoder lacks (the head, and 'crf')."""
        return (self.head_name, "crf") if crf else (self.head_name,)

    def target_weights(self, batch: dict) -> jax.Array:
        """Which targets are scored: float32 like the targets ([B], packed [B, S], tokens [B, L]).

        Args:
          batch: a batch of finetuning.batches (with `weights`, targets, maybe packing keys).
        Returns:
          1.0 where a real feature's target is scored, else 0.0.
        """
        raise NotImplementedError

    def loss_sums(self, outputs, batch: dict) -> dict[str, jax.Array]:
        """Per-batch sums the step averages over the whole (accumulated) batch.

        Args:
          outputs: the task model's outputs; batch: as in target_weights.
        Returns:
          {"loss_sum", "count" (sum of target_weights), "correct"}: float32 scalars.
        """
        raise NotImplementedError

    def host_predictions(self, outputs, token_scores: bool = False):
        """What evaluation brings back to the host, per row (traced inside eval_step).

        Args:
          outputs: the task model's outputs.
          token_scores: tagging returns tag log-probabilities [B, L, C], not ids.
        Returns:
          An array or dict of arrays; scatter_predictions writes it into the buffers.
        """
        raise NotImplementedError

    # --- host side -----------------------------------------------------------------------------

    def prediction_buffers(
        self, data: TaskData, num_labels: int, token_scores: bool = False
    ) -> dict[str, np.ndarray]:
        """Empty per-feature arrays for scatter_predictions (leading dimension n).

        Args:
          data: the split; num_labels: the head's width; token_scores: as host_predictions.
        Returns:
          {name: zeros}; `predictions(buffers)` turns them into decode's input.
        """
        raise NotImplementedError

    def scatter_predictions(self, data: TaskData, batch: Batch, outputs, into: dict) -> None:
        """Writes one batch's host_predictions into the buffers at the features it holds.

        Args:
          data: the split; batch: finetuning.batches.Batch; outputs: host_predictions fetched;
          into: prediction_buffers, updated in place.
        """
        raise NotImplementedError

    def predictions(self, buffers: dict[str, np.ndarray]):
        """The filled buffers as decode takes them (default: the `predictions` array)."""
        return buffers["predictions"]

    def decode(self, predictions, data: TaskData, constrained: bool = True, crf=None):
        """Model outputs per feature -> one prediction per example in the task's own terms.

        Args:
          predictions: per feature (ids or logits; see features.decode_predictions).
          data: the split; constrained, crf: how tags are decoded (tagging only).
        Returns:
          A list with one prediction per example (or a dict keyed by example id).
        """
        raise NotImplementedError

    def metrics(self, outputs, data: TaskData) -> dict[str, float]:
        """Scores decoded outputs against the split's labels.

        Args:
          outputs: decode's result; data: a labeled split.
        Returns:
          {metric name: value}; main_metric(data) is one of the keys.
        """
        raise NotImplementedError

    def is_bio(self, label_list: list[str] | None) -> bool:
        """Whether the labels are BIO / IOBES entity tags (entity metrics, constrained decoding)."""
        return False

    def main_metric(self, data: TaskData) -> str:
        """The metrics key that picks the best checkpoint (higher is better)."""
        raise NotImplementedError

    def write_predictions(self, outputs, data: TaskData, f: io.StringIO) -> None:
        """Writes decoded outputs in the input's own format (prediction_file names the file).

        Args:
          outputs: decode's result; data: the split; f: the text stream to write to.
        """
        raise NotImplementedError


# --- helpers the kinds share ---------------------------------------------------------------------


def nll(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """logits [..., C], labels [...] (negative = ignored, any value) -> [...] float32."""
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32))
    safe = jnp.maximum(labels, 0)[..., None]
    return -jnp.take_along_axis(log_probs, safe, axis=-1)[..., 0]


def scatter_rows(values, slots: np.ndarray, out: np.ndarray, per_token: bool) -> None:
    """One feature per row: row i's values go to feature slots[i, 0]; per-token values of a
    length bucket fill the first positions of the feature's row."""
    real = slots[:, 0] >= 0
    values = np.asarray(values)[real]
    if per_token:
        out[slots[real, 0], : values.shape[1]] = values
    else:
        out[slots[real, 0]] = values


class SequenceScores(Task):
    """A kind whose head scores each sequence with one vector of C values ([CLS] heads): the
    logits come back to the host as they are and go to their features, packed rows or not."""

    def host_predictions(self, outputs, token_scores=False):
        return outputs  # [B, C] logits, packed [B, S, C]

    def prediction_buffers(self, data, num_labels, token_scores=False):
        return {"predictions": np.zeros((data.num_features, num_labels), np.float32)}

    def scatter_predictions(self, data, batch, outputs, into):
        if batch.packed:
            packing.unpack_sequences(outputs, batch.slots, into["predictions"])
        else:
            scatter_rows(outputs, batch.slots, into["predictions"], per_token=False)
