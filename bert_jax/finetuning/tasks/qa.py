"""Extractive question answering (SQuAD v1.1): answer spans in windows over the context.

Read from SQuAD JSON or the TFDS `squad` dataset; featurisation and n-best span decoding are in
tasks.squad. SQuAD windows fill their rows, so this kind never packs.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

import jax.numpy as jnp
import numpy as np
from absl import logging

from bert_jax.errors import UserError
from bert_jax.finetuning import scores as metrics
from bert_jax.finetuning.tasks import features, squad
from bert_jax.finetuning.tasks.base import Task, nll, scatter_rows
from bert_jax.finetuning.tasks.readers import ReadResult, text
from bert_jax.model.modeling import BertForQuestionAnswering

_LOGITS = ("start_logits", "end_logits")


def _squad_logits(predictions) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(predictions, Mapping):
        return np.asarray(predictions["start_logits"]), np.asarray(predictions["end_logits"])
    if isinstance(predictions, tuple | list) and len(predictions) == 2:
        return np.asarray(predictions[0]), np.asarray(predictions[1])
    predictions = np.asarray(predictions)
    if predictions.ndim == 3 and predictions.shape[-1] == 2:
        return predictions[..., 0], predictions[..., 1]
    raise ValueError("squad predictions: {'start_logits', 'end_logits'} [n, L] each, or [n, L, 2]")


class QuestionAnswering(Task):
    """Start / end logits per token; exact match and F1 (official v1.1 normalisation)."""

    hf_task_model = ("BertForQuestionAnswering", None)

    head_name = "qa_outputs"
    target_keys = ("start_positions", "end_positions")
    packable = False
    uses_label_list = False
    prediction_file = "test_predictions.json"
    recipe = {  # google-research/bert run_squad
        "max_seq_length": 384, "doc_stride": 128, "max_query_length": 64,
        "max_answer_length": 30, "n_best_size": 20, "learning_rate": 3e-5, "num_train_epochs": 2.0,
    }  # fmt: skip
    test_recipe = {"max_seq_length": 64, "doc_stride": 16, "max_query_length": 24}

    def num_labels(self, label_list):
        return 2  # start, end

    def check_config(self, config) -> None:
        if config.packing:
            raise UserError(
                f"packing does not apply to {self.kind} (its windows fill their rows): unset it"
            )
        super().check_config(config)

    def read_file(self, path, labeled):
        examples, skipped = squad.read_squad_json(path, labeled=labeled)
        has_answers = labeled or any(e.answers for e in examples)
        return ReadResult(examples, has_answers, [], str(path), skipped)

    def read_tfds(self, records, features_dict, origin, split, tfds_split) -> ReadResult:
        missing = {"id", "context", "question", "answers"} - set(features_dict.keys())
        if missing:
            raise UserError(f"{origin}: no {sorted(missing)} features; QA needs SQuAD's features")
        examples = []
        for index, record in enumerate(records):
            answers = record["answers"]
            examples.append(
                squad.SquadExample(
                    qas_id=text(record["id"]),
                    question=text(record["question"]),
                    context=text(record["context"]),
                    answers=tuple(text(t) for t in answers["text"]),
                    answer_starts=tuple(int(s) for s in answers["answer_start"]),
                    title=text(record.get("title", b"")),
                    origin=f"{origin} #{index}",
                )
            )
        labeled = split != "test" or any(e.answers for e in examples)
        if labeled:
            unanswered = sum(not e.answers for e in examples)
            examples = [e for e in examples if e.answers]
            if unanswered:
                logging.warning("%s: skipped %d questions without answers", origin, unanswered)
            return ReadResult(examples, True, [], origin, num_skipped=unanswered)
        return ReadResult(examples, False, [], origin)

    def featurise(self, examples, tokenizer, task_config, split, max_seq_length, label_to_id,
                  labeled):  # fmt: skip
        return squad.featurise_squad(
            examples,
            tokenizer,
            max_seq_length,
            doc_stride=features.option(task_config, "doc_stride", 128),
            max_query_length=features.option(task_config, "max_query_length", 64),
            training=split == "train",
        )

    def model(self, config, num_labels, crf=False, window=0):
        return BertForQuestionAnswering(config)

    def target_weights(self, batch):
        return batch["weights"].astype(jnp.float32)

    def loss_sums(self, outputs, batch):
        valid = self.target_weights(batch)
        start_logits, end_logits = outputs  # [B, L] each
        loss = 0.5 * (
            nll(start_logits, batch["start_positions"]) + nll(end_logits, batch["end_positions"])
        )
        hit = (jnp.argmax(start_logits, -1) == batch["start_positions"]) & (
            jnp.argmax(end_logits, -1) == batch["end_positions"]
        )
        return {
            "loss_sum": jnp.sum(loss * valid),
            "count": jnp.sum(valid),
            "correct": jnp.sum(hit * valid),
        }

    def host_predictions(self, outputs, token_scores=False):
        return {"start_logits": outputs[0], "end_logits": outputs[1]}  # [B, L] each

    def prediction_buffers(self, data, num_labels, token_scores=False):
        shape = (data.num_features, data.max_seq_length)
        return {key: np.zeros(shape, np.float32) for key in _LOGITS}

    def scatter_predictions(self, data, batch, outputs, into):
        for key in _LOGITS:
            scatter_rows(outputs[key], batch.slots, into[key], per_token=True)

    def predictions(self, buffers):
        return buffers

    def decode(self, predictions, data, constrained=True, crf=None):
        start_logits, end_logits = _squad_logits(predictions)
        return squad.decode_squad(
            start_logits,
            end_logits,
            data.examples,
            data.feature_info,
            data.n_best_size,
            data.max_answer_length,
        )

    def metrics(self, outputs, data):
        gold = {e.qas_id: list(e.answers) for e in data.examples}
        return metrics.squad_scores(outputs, gold)

    def main_metric(self, data):
        return "f1"

    def write_predictions(self, outputs, data, f):
        json.dump(outputs, f, ensure_ascii=False, indent=1)
        f.write("\n")
