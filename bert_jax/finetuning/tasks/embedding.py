"""Sentence-embedding training: a bi-encoder on (anchor, positive) pairs with in-batch negatives.

Files: TSV with a header `sentence1<TAB>sentence2`. Embedding = mean of the last layer over real
tokens; loss = cross-entropy of each anchor over `scale` * cosine similarity with every positive of
the batch (sentence-transformers' MultipleNegativesRankingLoss); dev metrics rank each anchor's
positive among all dev positives (accuracy_at_1, mrr). The model exports as a sentence-transformers
folder (export_sentence_transformers) that is also a Hugging Face BertModel directory.
"""

from __future__ import annotations

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from etils import epath

from bert_jax.errors import UserError
from bert_jax.finetuning.tasks import features
from bert_jax.finetuning.tasks.base import Task, scatter_rows
from bert_jax.finetuning.tasks.readers import ReadResult, SentenceExample, read_lines, tsv_rows
from bert_jax.model.modeling import BertConfig, BertModel

MAIN_METRIC = "mrr"
DEFAULT_SCALE = 20.0  # sentence-transformers MultipleNegativesRankingLoss's default


def read_pairs(path) -> ReadResult:
    """SentenceExamples (anchor text_a, positive text_b) of a `sentence1<TAB>sentence2` TSV with a
    header (local or gs://); blank lines are skipped and counted."""
    lines = read_lines(epath.Path(path))
    header = [name.strip() for name in lines[0].split("\t")] if lines else []
    if "sentence1" not in header or "sentence2" not in header:
        raise UserError(f"{path}:1: header {header} lacks sentence1 and sentence2 (docs/tasks.md)")
    examples = []
    rows, blank = tsv_rows(path, header, lines)
    for number, row in rows:
        examples.append(
            SentenceExample(
                guid=f"{epath.Path(path).stem}-{number}",
                text_a=row["sentence1"],
                text_b=row["sentence2"],
                label=None,
                fields=row,
                origin=f"{path}:{number}",
            )
        )
    return ReadResult(examples, True, header, str(path), num_skipped=blank)


def sentence_length(max_seq_length: int) -> int:
    """Tokens each sentence of a pair gets: a row holds the anchor, then the positive."""
    return max_seq_length // 2


def featurise_pairs(examples, tokenizer, max_seq_length: int):
    """Rows `[CLS] A [SEP] [CLS] B [SEP]`, each side cut to sentence_length; token_type_ids 0 on
    the anchor and 1 on the positive tell PairEmbedding the two apart. Returns (arrays, number
    of examples cut)."""
    side = sentence_length(max_seq_length)
    if side < 3:
        raise UserError(f"max_seq_length {max_seq_length} leaves no room for two sentences")
    pieces_a = features.encode(tokenizer, [e.text_a for e in examples])
    pieces_b = features.encode(tokenizer, [e.text_b for e in examples])
    n = len(examples)
    ids = np.full((n, max_seq_length), tokenizer.pad_id, np.int32)
    types = np.zeros((n, max_seq_length), np.int32)
    mask = np.zeros((n, max_seq_length), np.int32)
    truncated = 0
    for i, (a, b) in enumerate(zip(pieces_a, pieces_b, strict=True)):
        truncated += len(a) > side - 2 or len(b) > side - 2
        row_a = [tokenizer.cls_id, *a[: side - 2], tokenizer.sep_id]
        row_b = [tokenizer.cls_id, *b[: side - 2], tokenizer.sep_id]
        ids[i, : len(row_a) + len(row_b)] = row_a + row_b
        types[i, len(row_a) : len(row_a) + len(row_b)] = 1
        mask[i, : len(row_a) + len(row_b)] = 1
    return {"input_ids": ids, "token_type_ids": types, "attention_mask": mask}, truncated


def mean_pool(sequence: jax.Array, attention_mask: jax.Array) -> jax.Array:
    """[B, T, H], [B, T] (1 = real token) -> [B, H] float32: the mean over real tokens."""
    mask = attention_mask.astype(jnp.float32)[..., None]
    total = jnp.sum(sequence.astype(jnp.float32) * mask, axis=1)
    return total / jnp.maximum(jnp.sum(mask, axis=1), 1e-9)


def _normalize(x: jax.Array) -> jax.Array:
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def in_batch_negatives_loss(
    anchors: jax.Array, positives: jax.Array, scale: float = DEFAULT_SCALE, weights=None
) -> dict[str, jax.Array]:
    """[B, H] each; anchor i's positive is positives[i], the other rows are its negatives.

    weights [B] (1 = a real pair, default all): filler rows are neither anchors nor negatives.
    Returns loss_sum (cross-entropy summed over anchors), count (real anchors) and correct
    (anchors whose most similar positive is their own), float32 scalars.
    """
    b = anchors.shape[0]
    weights = jnp.ones((b,), jnp.float32) if weights is None else weights.astype(jnp.float32)
    scores = scale * _normalize(anchors.astype(jnp.float32)) @ _normalize(positives).T  # [B, B]
    scores = jnp.where(weights[None, :] > 0, scores, -1e9)
    log_probs = jax.nn.log_softmax(scores, axis=-1)
    diagonal = jnp.arange(b)
    hit = jnp.argmax(scores, -1) == diagonal
    return {
        "loss_sum": -jnp.sum(log_probs[diagonal, diagonal] * weights),
        "count": jnp.sum(weights),
        "correct": jnp.sum(hit * weights),
    }


def retrieval_metrics(
    anchors: np.ndarray, candidates: np.ndarray, gold: np.ndarray
) -> dict[str, float]:
    """Each anchor [n, H] ranks all candidates [m, H] by cosine similarity; gold [n] is the index
    of its positive. Rank = 1 + candidates scored strictly higher (ties favour the positive).
    Returns accuracy_at_1 and mrr (mean reciprocal rank)."""
    a = anchors / np.maximum(np.linalg.norm(anchors, axis=1, keepdims=True), 1e-12)
    c = candidates / np.maximum(np.linalg.norm(candidates, axis=1, keepdims=True), 1e-12)
    scores = a @ c.T
    own = scores[np.arange(len(gold)), gold]
    ranks = 1 + np.sum(scores > own[:, None], axis=1)
    return {"accuracy_at_1": float(np.mean(ranks == 1)), "mrr": float(np.mean(1.0 / ranks))}


def candidates_of(positives: list[str]) -> tuple[list[str], np.ndarray]:
    """(distinct positive texts, index of each pair's positive among them): a positive repeated
    across pairs is one candidate, so no anchor is ranked against a copy of its own positive."""
    distinct = list(dict.fromkeys(positives))
    index = {text: i for i, text in enumerate(distinct)}
    return distinct, np.array([index[text] for text in positives], np.int64)


def export_sentence_transformers(
    bert_config, encoder: dict, vocab_text: str, out, *, lowercase: bool, max_seq_length: int
):
    """Writes `out`: a Hugging Face BertModel directory (config.json, model.safetensors,
    vocab.txt, tokenizer_config.json) plus the sentence-transformers modules (Transformer, mean
    Pooling), so `SentenceTransformer(out)` loads it and embeds as mean_pool does."""
    from bert_jax.convert import hf

    out = epath.Path(out)
    hf.save_hf_encoder(bert_config, encoder, out)
    (out / "vocab.txt").write_text(vocab_text, encoding="utf-8")
    tokenizer_config = {
        "tokenizer_class": "BertTokenizer",
        "do_lower_case": bool(lowercase),
        "model_max_length": int(bert_config.max_position_embeddings),
    }
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {
            "idx": 1,
            "name": "1",
            "path": "1_Pooling",
            "type": "sentence_transformers.models.Pooling",
        },
    ]
    pooling = {
        "word_embedding_dimension": int(bert_config.hidden_size),
        "pooling_mode_cls_token": False,
        "pooling_mode_mean_tokens": True,
        "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False,
    }
    sentence_bert = {"max_seq_length": int(max_seq_length), "do_lower_case": False}
    (out / "1_Pooling").mkdir(parents=True, exist_ok=True)
    for name, values in (
        ("tokenizer_config.json", tokenizer_config),
        ("modules.json", modules),
        ("1_Pooling/config.json", pooling),
        ("sentence_bert_config.json", sentence_bert),
    ):
        (out / name).write_text(json.dumps(values, indent=2) + "\n")
    return out


class PairEmbedding(nn.Module):
    """Both sentences of a row encoded apart (segment_ids: each attends only to itself, its
    positions restart, token type 0) and mean-pooled: [B, 2, H] (anchor, positive)."""

    config: BertConfig

    @nn.compact
    def __call__(self, input_ids, token_type_ids=None, attention_mask=None, deterministic=True):
        segments = attention_mask * (token_type_ids + 1)  # 1 anchor, 2 positive, 0 padding
        sequence, _ = BertModel(self.config, name="bert")(
            input_ids, jnp.zeros_like(input_ids), None, deterministic, segment_ids=segments
        )
        return jnp.stack([mean_pool(sequence, segments == s) for s in (1, 2)], axis=1)


class Embedding(Task):
    """A bi-encoder trained with in-batch negatives; no head, nothing packed, no label set."""

    head_name = "mean_pooling"  # parameterless: the encoder is the whole model
    target_keys = ()
    packable = False  # a row already holds two sentences
    uses_label_list = False
    prediction_file = "test_similarities.tsv"
    recipe = {"num_train_epochs": 1.0}  # max_seq_length 128: 64 tokens per sentence
    test_recipe = {"max_seq_length": 64}

    def num_labels(self, label_list):
        return 2  # two outputs per row: the anchor's and the positive's embedding

    def check_config(self, config):
        super().check_config(config)
        if config.freeze_encoder:
            raise UserError(
                "freeze_encoder would leave the sentence_embedding kind nothing to train"
            )
        if int(config.get("grad_accum_steps", 1)) != 1:
            raise UserError(
                "grad_accum_steps would shrink the sentence_embedding kind's in-batch negatives: "
                "unset it"
            )

    def head_names(self, crf=False):
        return ()

    def read_file(self, path, labeled):
        return read_pairs(path)

    def read_tfds(self, records, features_dict, origin, split, tfds_split):
        raise UserError(f"{origin}: the sentence_embedding kind reads TSV files only (task.*_file)")

    def featurise(self, examples, tokenizer, task_config, split, max_seq_length, label_to_id,
                  labeled):  # fmt: skip
        arrays, truncated = featurise_pairs(examples, tokenizer, max_seq_length)
        return arrays, {}, {"num_truncated": truncated}

    def model(self, config, num_labels, crf=False, window=0):
        return PairEmbedding(config)

    def target_weights(self, batch):
        return batch["weights"].astype(jnp.float32)

    def loss_sums(self, outputs, batch):
        """In-batch negatives over the real rows of the batch (filler rows are masked out)."""
        weights = self.target_weights(batch)
        return in_batch_negatives_loss(outputs[:, 0], outputs[:, 1], DEFAULT_SCALE, weights)

    def host_predictions(self, outputs, token_scores=False):
        return outputs  # [B, 2, H]

    def prediction_buffers(self, data, num_labels, token_scores=False):
        return {}  # [n, 2, H], allocated by the first batch (its width is the model's)

    def scatter_predictions(self, data, batch, outputs, into):
        outputs = np.asarray(outputs)
        out = into.setdefault("predictions", np.zeros((data.num_features, 2, outputs.shape[-1])))
        scatter_rows(outputs, batch.slots, out, per_token=False)

    def decode(self, predictions, data, constrained=True, crf=None):
        return np.asarray(predictions)  # [n, 2, H] embeddings

    def metrics(self, outputs, data):
        distinct, gold = candidates_of([e.text_b for e in data.examples])
        first = {}
        for i, e in enumerate(data.examples):
            first.setdefault(e.text_b, i)
        candidates = outputs[[first[text] for text in distinct], 1]
        return retrieval_metrics(outputs[:, 0], candidates, gold)

    def main_metric(self, data):
        return MAIN_METRIC

    def write_predictions(self, outputs, data, f):
        a, b = outputs[:, 0], outputs[:, 1]
        cosine = np.sum(a * b, 1) / np.maximum(
            np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12
        )
        f.write("sentence1\tsentence2\tcosine\n")
        for example, value in zip(data.examples, cosine, strict=True):
            texts = [example.text_a.replace("\t", " "), example.text_b.replace("\t", " ")]
            f.write("\t".join([*texts, f"{value:.6f}"]) + "\n")
