"""Sentence-embedding training: a bi-encoder on (anchor, positive) pairs with in-batch negatives.

Files: TSV with a header `sentence1<TAB>sentence2`. Embedding = mean of the last layer over real
tokens; loss = cross-entropy of each anchor over `scale` * cosine similarity with every positive of
the batch (sentence-transformers' MultipleNegativesRankingLoss); dev metrics rank each anchor's
positive among all dev positives (accuracy_at_1, mrr). The model exports as a sentence-transformers
folder (export_sentence_transformers) that is also a Hugging Face BertModel directory.
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath

from bert_jax.errors import UserError

MAIN_METRIC = "mrr"
DEFAULT_SCALE = 20.0  # sentence-transformers MultipleNegativesRankingLoss's default


def read_pairs(path) -> tuple[list[str], list[str]]:
    """(anchors, positives) of a `sentence1<TAB>sentence2` TSV (local or gs://)."""
    lines = epath.Path(path).read_text(encoding="utf-8").splitlines()
    header = lines[0].split("\t") if lines else []
    if "sentence1" not in header or "sentence2" not in header:
        raise UserError(
            f"{path}: header {header} lacks sentence1 and sentence2 (see docs/tasks.md)"
        )
    a, b = header.index("sentence1"), header.index("sentence2")
    anchors, positives = [], []
    for number, line in enumerate(lines[1:], start=2):
        if not line:
            continue
        fields = line.split("\t")
        if len(fields) < len(header):
            raise UserError(f"{path}:{number}: {len(fields)} fields, the header has {len(header)}")
        anchors.append(fields[a])
        positives.append(fields[b])
    if not anchors:
        raise UserError(f"{path} has no pairs")
    return anchors, positives


def mean_pool(sequence: jax.Array, attention_mask: jax.Array) -> jax.Array:
    """[B, T, H], [B, T] (1 = real token) -> [B, H] float32: the mean over real tokens."""
    mask = attention_mask.astype(jnp.float32)[..., None]
    total = jnp.sum(sequence.astype(jnp.float32) * mask, axis=1)
    return total / jnp.maximum(jnp.sum(mask, axis=1), 1e-9)


def _normalize(x: jax.Array) -> jax.Array:
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def in_batch_negatives_loss(
    anchors: jax.Array, positives: jax.Array, scale: float = DEFAULT_SCALE
) -> dict[str, jax.Array]:
    """[B, H] each; anchor i's positive is positives[i], the other rows are its negatives.

    Returns loss_sum (cross-entropy summed over anchors), count (B) and correct (anchors whose
    most similar positive is their own), float32 scalars.
    """
    scores = scale * _normalize(anchors) @ _normalize(positives).T  # [B, B]
    log_probs = jax.nn.log_softmax(scores, axis=-1)
    diagonal = jnp.arange(scores.shape[0])
    return {
        "loss_sum": -jnp.sum(log_probs[diagonal, diagonal]),
        "count": jnp.asarray(scores.shape[0], jnp.float32),
        "correct": jnp.sum(jnp.argmax(scores, -1) == diagonal).astype(jnp.float32),
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
