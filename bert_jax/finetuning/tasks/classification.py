"""Sequence classification and regression: one label (or value) per sentence or sentence pair.

Read from TSV with a header (`sentence` or `sentence1`, `sentence2`, and `label`) or a TFDS text
dataset (glue/sst2, glue/mnli, glue/stsb, ...); the head reads the [CLS] vector. Regression is the
same kind with one float output trained by squared error.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from bert_jax.errors import UserError
from bert_jax.finetuning import scores as metrics
from bert_jax.finetuning.tasks import features, readers, rows
from bert_jax.finetuning.tasks.base import SequenceScores, nll
from bert_jax.finetuning.tasks.readers import LABEL_COLUMN, ReadResult, SentenceExample
from bert_jax.model.modeling import BertForSequenceClassification


class Classification(SequenceScores):
    """Classes from the training labels; accuracy, macro F1 and MCC."""

    hf_task_model = ("BertForSequenceClassification", "single_label_classification")

    regression = False

    def read_file(self, path, labeled: bool) -> ReadResult:
        return readers.read_tsv(path, regression=self.regression, labeled=labeled)

    def read_rows(self, table, labeled, columns) -> ReadResult:
        parse = rows.regression_label if self.regression else rows.class_label
        return rows.sentence_examples(table, columns, labeled, parse)

    def read_tfds(self, records, features_dict, origin, split, tfds_split) -> ReadResult:
        keys = set(features_dict.keys())
        pairs, texts = readers.TFDS_TEXT_PAIRS, readers.TFDS_TEXTS
        text_columns = next((pair for pair in pairs if set(pair) <= keys), None)
        text_columns = text_columns or next(((k,) for k in texts if k in keys), None)
        if text_columns is None or LABEL_COLUMN not in keys:
            raise UserError(
                f"{origin}: features {sorted(keys)} hold no known text column "
                f"({texts} or pairs {pairs}) with a '{LABEL_COLUMN}'"
            )
        label_names = None
        if not self.regression:
            if not hasattr(features_dict[LABEL_COLUMN], "names"):
                raise UserError(
                    f"{origin}: '{LABEL_COLUMN}' is not a ClassLabel; is it regression?"
                )
            label_names = list(features_dict[LABEL_COLUMN].names)
        examples = []
        for index, record in enumerate(records):
            values = {column: readers.text(record[column]) for column in text_columns}
            if self.regression:
                label = float(record[LABEL_COLUMN])
            else:  # GLUE marks unlabeled (test) examples with class -1
                label = label_names[record[LABEL_COLUMN]] if record[LABEL_COLUMN] >= 0 else None
            examples.append(
                SentenceExample(
                    guid=str(int(record["idx"])) if "idx" in record else f"{tfds_split}-{index}",
                    text_a=values[text_columns[0]],
                    text_b=values[text_columns[1]] if len(text_columns) == 2 else None,
                    label=label,
                    fields=values,
                    origin=f"{origin} #{index}",
                )
            )
        if self.regression and split == "test" and all(e.label == -1 for e in examples):
            for example in examples:  # GLUE's STS-B test split carries -1 everywhere
                example.label = None
        labeled = all(e.label is not None for e in examples)
        if not labeled and any(e.label is not None for e in examples):
            raise UserError(f"{origin}: some examples have label -1 (unlabeled) and some do not")
        return ReadResult(examples, labeled, list(text_columns), origin, label_names=label_names)

    def featurise(self, examples, tokenizer, task_config, split, max_seq_length, label_to_id,
                  labeled):  # fmt: skip
        arrays, truncated = features.featurise_sentences(
            examples,
            tokenizer,
            max_seq_length,
            None if self.regression else label_to_id,
            labeled,
        )
        return arrays, {}, {"num_truncated": truncated}

    def model(self, config, num_labels, crf=False, window=0):
        return BertForSequenceClassification(config, num_labels)

    def target_weights(self, batch):
        return batch["weights"].astype(jnp.float32) * (batch["labels"] >= 0)

    def loss_sums(self, outputs, batch):
        valid = self.target_weights(batch)
        labels = batch["labels"]
        loss_sum = jnp.sum(nll(outputs, labels) * valid)
        correct = jnp.sum((jnp.argmax(outputs, -1) == labels) * valid)
        return {"loss_sum": loss_sum, "count": jnp.sum(valid), "correct": correct}

    def decode(self, predictions, data, constrained=True, crf=None):
        n = data.num_features
        return [data.label_list[i] for i in features.class_ids(predictions, (n,))]

    def metrics(self, outputs, data):
        gold = [e.label for e in data.examples]
        return {
            "accuracy": metrics.accuracy(gold, outputs),
            "macro_f1": metrics.macro_f1(gold, outputs),
            "mcc": metrics.matthews_corrcoef(gold, outputs),
        }

    def main_metric(self, data):
        return "accuracy"

    def _label_text(self, label) -> str:
        return label

    def write_predictions(self, outputs, data, f):
        f.write("\t".join([*data.columns, LABEL_COLUMN]) + "\n")
        for example, label in zip(data.examples, outputs, strict=True):
            values = [_tsv_field(example.fields[c]) for c in data.columns]
            f.write("\t".join([*values, self._label_text(label)]) + "\n")


class Regression(Classification):
    """One float per example (NaN when unlabeled), squared error; Pearson and Spearman."""

    hf_task_model = ("BertForSequenceClassification", "regression")

    regression = True
    uses_label_list = False
    counts_correct = False
    packed_fill = {"labels": np.nan}

    def num_labels(self, label_list):
        return 1

    def target_weights(self, batch):
        return batch["weights"].astype(jnp.float32) * jnp.isfinite(batch["labels"])

    def loss_sums(self, outputs, batch):
        valid = self.target_weights(batch)
        error = outputs[..., 0] - jnp.where(valid > 0, batch["labels"], 0.0)  # [B] or [B, S]
        loss_sum = jnp.sum(jnp.square(error) * valid)
        return {
            "loss_sum": loss_sum,
            "count": jnp.sum(valid),
            "correct": jnp.zeros((), jnp.float32),
        }

    def host_predictions(self, outputs, token_scores=False):
        return outputs[..., 0]  # [B] or packed [B, S]

    def prediction_buffers(self, data, num_labels, token_scores=False):
        return {"predictions": np.zeros((data.num_features,), np.float32)}

    def decode(self, predictions, data, constrained=True, crf=None):
        n = data.num_features
        values = np.asarray(predictions, np.float64)
        if values.shape not in ((n,), (n, 1)):
            raise ValueError(f"regression predictions have shape {values.shape}, expected ({n},)")
        return values.reshape(n).tolist()

    def metrics(self, outputs, data):
        gold = [e.label for e in data.examples]
        return {
            "pearson": metrics.pearson(gold, outputs),
            "spearman": metrics.spearman(gold, outputs),
        }

    def main_metric(self, data):
        return "pearson"

    def _label_text(self, label) -> str:
        return f"{label:.6g}"


def _tsv_field(text: str) -> str:
    return text.replace("\t", " ").replace("\r", " ").replace("\n", " ")
