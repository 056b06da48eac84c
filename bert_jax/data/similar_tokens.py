"""Similar-token table for MacBERT-style masking (`data.similar_token_prob`), built from the corpus.

Each token's contexts (the tokens within +-WINDOW, counted over the train split, restricted to
the CONTEXTS most frequent) give a positive-PMI vector; a token's similar tokens are the NEIGHBOURS
tokens (seen >= MIN_COUNT times, not [special]) whose vectors have the highest cosine. Stored as
similar_tokens.npy (int32 [vocab, NEIGHBOURS], -1 padded) beside the prepared dataset.
"""

from __future__ import annotations

import io

import numpy as np
from etils import epath

from bert_jax.errors import UserError

FILE = "similar_tokens.npy"
WINDOW, CONTEXTS, NEIGHBOURS, MIN_COUNT = 2, 1000, 8, 5


def build_table(documents, vocab: list[str]) -> np.ndarray:
    """int32 [len(vocab), NEIGHBOURS] from documents (each a dict with int "tokens")."""
    size = len(vocab)
    count = np.zeros(size, np.int64)
    for d in documents:
        count += np.bincount(d["tokens"], minlength=size)
    contexts = np.argsort(-count, kind="stable")[:CONTEXTS]
    column = np.full(size, -1, np.int64)
    column[contexts] = np.arange(len(contexts))
    cooc = np.zeros(size * len(contexts), np.int64)
    for d in documents:
        tokens = np.asarray(d["tokens"], np.int64)
        for shift in range(1, WINDOW + 1):
            for left, right in (
                (tokens[:-shift], tokens[shift:]),
                (tokens[shift:], tokens[:-shift]),
            ):
                keep = column[right] >= 0
                cooc += np.bincount(
                    left[keep] * len(contexts) + column[right[keep]], minlength=cooc.size
                )
    cooc = cooc.reshape(size, len(contexts)).astype(np.float64)
    total = cooc.sum()
    expected = np.outer(cooc.sum(1), cooc.sum(0)) / max(total, 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        ppmi = np.where(cooc > 0, np.maximum(np.log(cooc / expected), 0.0), 0.0)
    norm = np.linalg.norm(ppmi, axis=1, keepdims=True)
    vectors = (ppmi / np.where(norm > 0, norm, 1.0)).astype(np.float32)
    special = np.array([t.startswith("[") and t.endswith("]") for t in vocab])
    eligible = (count >= MIN_COUNT) & ~special & (norm[:, 0] > 0)
    table = np.full((size, NEIGHBOURS), -1, np.int32)
    candidates = np.flatnonzero(eligible)
    k = min(NEIGHBOURS, len(candidates) - 1)
    for start in range(0, size, 1024):
        rows = np.arange(start, min(start + 1024, size))
        score = vectors[rows] @ vectors[candidates].T
        score[candidates[None, :] == rows[:, None]] = -np.inf  # never itself
        if k < 1:
            break
        best = np.argsort(-score, axis=1, kind="stable")[:, :k]
        table[rows, :k] = np.where(eligible[rows, None], candidates[best], -1)
    return table


def load_or_build(prepared, tokenizer, allow_build: bool) -> np.ndarray:
    """The table of a prepared dataset, built and saved there on first use (one process)."""
    path = epath.Path(prepared.directory) / FILE
    if path.exists():
        table = np.load(io.BytesIO(path.read_bytes()))
        if table.shape[0] == tokenizer.vocab_size:
            return table
    if not allow_build:
        raise UserError(
            f"{path} is missing: data.similar_token_prob needs it; start the run once with one "
            "process to build it"
        )
    source = prepared.data_source("train")
    table = build_table(source.__getitems__(list(range(len(source)))), tokenizer.vocab)
    buffer = io.BytesIO()
    np.save(buffer, table)
    path.write_bytes(buffer.getvalue())
    return table
