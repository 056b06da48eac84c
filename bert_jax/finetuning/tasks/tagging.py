"""Token classification (NER, POS, chunking): one tag per word, on the word's first piece.

Read from CoNLL (`token<TAB>tag`) or a TFDS dataset with `tokens` and a tag sequence. Long
sentences continue in further features; each sentence is decoded once across them, under its
BIO / IOBES rules (constrained decoding) and / or a linear-chain CRF's learned scores.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from bert_jax.data import packing
from bert_jax.errors import UserError
from bert_jax.finetuning import scores as metrics
from bert_jax.finetuning.tasks import features, readers, rows, tag_decoding
from bert_jax.finetuning.tasks.base import Task, nll, scatter_rows
from bert_jax.finetuning.tasks.features import IGNORE_LABEL
from bert_jax.finetuning.tasks.readers import ReadResult, TokenExample
from bert_jax.model.crf import sequence_nll
from bert_jax.model.modeling import BertForTokenClassification


def _per_token(batch: dict, key: str) -> jax.Array | None:
    """A per-feature value of the batch ([B] one feature per row, packed [B, S]) at every token
    of its feature, [B, L]; None when the batch lacks it."""
    if key not in batch:
        return None
    values = batch[key]
    if "segment_ids" in batch:  # segment s > 0 is slot s - 1; padding (0) reads slot 0, unscored
        slots = jnp.maximum(batch["segment_ids"] - 1, 0)
        return jnp.take_along_axis(values, slots, axis=1)
    return jnp.broadcast_to(values[:, None], batch["labels"].shape)


def featurise_tokens(
    examples: list[TokenExample],
    tokenizer,
    max_seq_length: int,
    label_to_id: Mapping[str, int],
    labeled: bool,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, int]]:
    """Word pieces per word, tag on the first piece; long sentences continue in further features.

    A word the tokenizer turns into nothing (e.g. a lone control character) becomes [UNK] so it
    still gets a prediction; a word longer than the whole window keeps its first pieces.
    """
    budget = max_seq_length - 2
    word_pieces = features.encode(tokenizer, [word for e in examples for word in e.words])
    rows, labels, word_index, example_index, ends = [], [], [], [], []
    unknown_words = split_sentences = cut_words = 0
    next_word = 0
    for index, example in enumerate(examples):
        row, row_labels, row_words = [tokenizer.cls_id], [IGNORE_LABEL], [-1]
        for position in range(len(example.words)):
            pieces = word_pieces[next_word + position]
            if not pieces:
                pieces, unknown_words = [tokenizer.unk_id], unknown_words + 1
            if len(pieces) > budget:
                pieces, cut_words = pieces[:budget], cut_words + 1
            if len(row) + len(pieces) > budget + 1:  # room for [SEP]
                rows.append(row + [tokenizer.sep_id])
                labels.append(row_labels + [IGNORE_LABEL])
                word_index.append(row_words + [-1])
                example_index.append(index)
                ends.append(0)
                row, row_labels, row_words = [tokenizer.cls_id], [IGNORE_LABEL], [-1]
                split_sentences += 1
            tag = label_to_id[example.tags[position]] if labeled else IGNORE_LABEL
            row += pieces
            row_labels += [tag] + [IGNORE_LABEL] * (len(pieces) - 1)
            row_words += [position] + [-1] * (len(pieces) - 1)
        next_word += len(example.words)
        rows.append(row + [tokenizer.sep_id])
        labels.append(row_labels + [IGNORE_LABEL])
        word_index.append(row_words + [-1])
        example_index.append(index)
        ends.append(1)
    input_ids = features.pad_rows(rows, max_seq_length, tokenizer.pad_id)
    attention_mask = np.arange(max_seq_length) < np.array([len(r) for r in rows])[:, None]
    arrays = {
        "input_ids": input_ids,
        "token_type_ids": np.zeros_like(input_ids),
        "attention_mask": attention_mask.astype(np.int32),
        "labels": features.pad_rows(labels, max_seq_length, IGNORE_LABEL),
        "starts_sentence": (np.diff(example_index, prepend=-1) > 0).astype(np.int32),
        "ends_sentence": np.array(ends, np.int32),
    }
    feature_info = {
        "example_index": np.array(example_index, np.int32),
        "word_index": features.pad_rows(word_index, max_seq_length, -1),
    }
    if unknown_words or cut_words:
        logging.warning(
            "%d words had no word piece (now [UNK]); %d words were cut to %d pieces",
            unknown_words,
            cut_words,
            budget,
        )
    stats = {
        "unknown_words": unknown_words,
        "cut_words": cut_words,
        "split_sentences": split_sentences,
    }
    return arrays, feature_info, stats


def scatter_word_scores(values, example_index, word_index, first_word, out) -> None:
    """Per-feature values at first word pieces ([m, L] ids or [m, L, C] scores; example_index
    [m], word_index [m, L]) into `out`, one row per word of every example: word w of example e
    is row first_word[e] + w, whichever feature (window of a long sentence) holds it."""
    features, positions = np.nonzero(word_index >= 0)
    rows = first_word[example_index[features]] + word_index[features, positions]
    out[rows] = np.asarray(values)[features, positions]


def sentence_tag_ids(
    word_scores: np.ndarray, num_words, label_list, rules: bool, crf=None, chunk: int = 256
) -> np.ndarray:
    """Tag ids [total words] from tag log-probabilities [total words, C] (each example's words
    in a row, num_words per example): each example decoded once, across every feature its
    sentence was split into, by tag_decoding.viterbi under the BIO / IOBES rules (rules=True)
    and / or a CRF's scores (crf: its parameters, bert_jax.model.crf); else each word's argmax.
    Fine-tuning evaluation, do_predict and the ner pipeline all decode here."""
    if not rules and crf is None:
        return word_scores.argmax(axis=-1)
    if rules:
        scheme = tag_decoding.transition_rules(label_list)
    else:
        scheme = tag_decoding.no_rules(len(label_list))
    num_words = np.asarray(num_words, np.int64)
    first_word = np.cumsum(num_words) - num_words
    ids = np.zeros(len(word_scores), np.int64)
    order = np.argsort(num_words, kind="stable")  # similar lengths share a padded chunk
    for start in range(0, len(order), chunk):
        examples = order[start : start + chunk]
        lengths = num_words[examples]
        width = int(lengths.max(initial=0))
        real = np.arange(width) < lengths[:, None]  # [k, W]
        rows = np.where(real, first_word[examples, None] + np.arange(width), 0)
        decoded = tag_decoding.viterbi(word_scores[rows], lengths, scheme, crf)
        ids[rows[real]] = decoded[real]
    return ids


class Tagging(Task):
    """Tags per word; token accuracy, and seqeval's entity scores for BIO / IOBES tags."""

    hf_task_model = ("BertForTokenClassification", None)

    target_keys = ("labels", "starts_sentence", "ends_sentence")
    per_token = True
    prediction_file = "test_predictions.conll"
    recipe = {"learning_rate": 5e-5}

    def check_config(self, config) -> None:
        pass  # crf and head_window are this kind's options; it packs

    def is_bio(self, label_list) -> bool:
        return metrics.is_bio_tagset(label_list)

    def read_file(self, path, labeled):
        return readers.read_conll(path, labeled=labeled)

    def read_rows(self, table, labeled, columns):
        return rows.token_examples(table, columns, labeled)

    def read_tfds(self, records, features_dict, origin, split, tfds_split) -> ReadResult:
        keys = set(features_dict.keys())
        tag_key = next((k for k in readers.TFDS_TAGS if k in keys), None)
        if "tokens" not in keys or tag_key is None:
            raise UserError(f"{origin}: token tasks need 'tokens' and one of {readers.TFDS_TAGS}")
        tag_names = list(features_dict[tag_key].feature.names)
        examples = [
            TokenExample(
                f"{tfds_split}-{i}",
                [readers.text(w) for w in r["tokens"]],
                [tag_names[int(t)] for t in r[tag_key]],
                f"{origin} #{i}",
            )
            for i, r in enumerate(records)
        ]
        empty = sum(not e.words for e in examples)
        examples = [e for e in examples if e.words]
        if empty:
            logging.warning("%s: skipped %d empty sentences", origin, empty)
        return ReadResult(examples, True, ["token"], origin, empty, label_names=tag_names)

    def featurise(self, examples, tokenizer, task_config, split, max_seq_length, label_to_id,
                  labeled):  # fmt: skip
        return featurise_tokens(examples, tokenizer, max_seq_length, label_to_id, labeled)

    def model(self, config, num_labels, crf=False, window=0):
        return BertForTokenClassification(config, num_labels, crf=crf, window=window)

    def target_weights(self, batch):
        labels = batch["labels"]
        if "segment_ids" in batch:  # packing leaves no filler rows, only -1 labels
            return (labels >= 0).astype(jnp.float32)
        weights = batch["weights"].astype(jnp.float32)[:, None]  # [B, 1] against labels [B, L]
        return weights * (labels >= 0)

    def loss_sums(self, outputs, batch):
        """A CRF's loss is each feature's negative log-likelihood (summed over features, counted
        per word as the classifier's is), with the start / end scores where its sentence starts /
        ends (starts_sentence, ends_sentence), not at the cut of a long one."""
        valid = self.target_weights(batch)
        labels = batch["labels"]
        if isinstance(outputs, tuple):
            emissions, transitions = outputs  # [B, L, C], {'transitions', 'start', 'end'}
            starts, ends = (_per_token(batch, key) for key in ("starts_sentence", "ends_sentence"))
            loss = sequence_nll(emissions, labels, valid, transitions,
                                batch.get("segment_ids"), starts, ends)  # fmt: skip
            correct = jnp.sum((jnp.argmax(emissions, -1) == labels) * valid)
            return {"loss_sum": jnp.sum(loss), "count": jnp.sum(valid), "correct": correct}
        loss_sum = jnp.sum(nll(outputs, labels) * valid)
        correct = jnp.sum((jnp.argmax(outputs, -1) == labels) * valid)
        return {"loss_sum": loss_sum, "count": jnp.sum(valid), "correct": correct}

    def host_predictions(self, outputs, token_scores=False):
        if isinstance(outputs, tuple):
            outputs = outputs[0]  # a CRF's emissions; its transitions are parameters (host reads)
        if token_scores:
            return jax.nn.log_softmax(outputs.astype(jnp.float32), -1)  # [B, L, C]
        return jnp.argmax(outputs, -1).astype(jnp.int32)  # [B, L] tag ids

    def prediction_buffers(self, data, num_labels, token_scores=False):
        n, length = data.num_features, data.max_seq_length
        if token_scores:
            return {"predictions": np.zeros((n, length, num_labels), np.float32)}
        return {"predictions": np.zeros((n, length), np.int32)}

    def scatter_predictions(self, data, batch, outputs, into):
        if batch.packed:
            packing.unpack_tokens(outputs, data.lengths, batch.slots, into["predictions"])
        else:
            scatter_rows(outputs, batch.slots, into["predictions"], per_token=True)

    def decode(self, predictions, data, constrained=True, crf=None):
        info, label_list = data.feature_info, data.label_list
        n = data.num_features
        num_words = np.array([len(example.words) for example in data.examples], np.int64)
        first_word = np.cumsum(num_words) - num_words
        scores = np.asarray(predictions)
        length = data.max_seq_length
        if features.are_logits(scores, (n, length)):
            word_scores = np.zeros((num_words.sum(), scores.shape[-1]), np.float64)
            scatter_word_scores(scores, info["example_index"], info["word_index"],
                                         first_word, word_scores)  # fmt: skip
            rules = data.is_bio and constrained
            ids = sentence_tag_ids(word_scores, num_words, label_list, rules, crf)
        else:
            ids = np.zeros(num_words.sum(), np.int64)
            class_ids = features.class_ids(scores, (n, length))
            scatter_word_scores(class_ids, info["example_index"], info["word_index"],
                                         first_word, ids)  # fmt: skip
        return [
            [label_list[i] for i in ids[a : a + k]]
            for a, k in zip(first_word, num_words, strict=True)
        ]

    def metrics(self, outputs, data):
        gold = [e.tags for e in data.examples]
        scores = {"token_accuracy": metrics.token_accuracy(gold, outputs)}
        if data.is_bio:  # seqeval's entity scores: f1, precision, recall, f1_TYPE
            types = metrics.entity_types(data.label_list)
            scores.update(metrics.entity_metrics(gold, outputs, types))
        return scores

    def main_metric(self, data):
        return "f1" if data.is_bio else "token_accuracy"

    def write_predictions(self, outputs, data, f):
        for example, tags in zip(data.examples, outputs, strict=True):
            f.writelines(f"{word}\t{tag}\n" for word, tag in zip(example.words, tags, strict=True))
            f.write("\n")
