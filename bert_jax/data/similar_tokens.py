"""Similar-token table for MacBERT-style masking (`data.similar_token_prob`), built from the corpus.

Each token's contexts (the tokens within +-WINDOW, counted over the train split, restricted to
the CONTEXTS most frequent) give a positive-PMI vector; a token's similar tokens are the NEIGHBOURS
tokens of its kind (CJK character or other; seen >= MIN_COUNT times; never [special] or
punctuation) whose vectors have the highest cosine. Stored as
similar_tokens.npy (int32 [vocab, NEIGHBOURS], -1 padded) beside the prepared dataset.
"""

from __future__ import annotations

import io
import unicodedata

import numpy as np
from etils import epath

from bert_jax.errors import UserError

FILE = "similar_tokens.npy"
WINDOW, CONTEXTS, NEIGHBOURS, MIN_COUNT = 2, 1000, 8, 5


def build_table(documents, vocab: list[str]) -> np.ndarray:
    """int32 [len(vocab), NEIGHBOURS] from documents (each a dict with int "tokens")."""
    size = len(vocab)
    # All documents back to back, each followed by -1 so that no window spans two of them.
    tokens = np.concatenate(
        [np.append(np.asarray(d["tokens"], np.int64), -1) for d in documents] or [np.zeros(0)]
    ).astype(np.int64)
    count = np.bincount(tokens[tokens >= 0], minlength=size)
    contexts = np.argsort(-count, kind="stable")[:CONTEXTS]
    column = np.full(size + 1, -1, np.int64)  # [-1] (a document's end): no context
    column[contexts] = np.arange(len(contexts))
    cooc = np.zeros(size * len(contexts), np.int64)
    for shift in range(1, WINDOW + 1):
        for left, right in ((tokens[:-shift], tokens[shift:]), (tokens[shift:], tokens[:-shift])):
            keep = (left >= 0) & (column[right] >= 0)
            codes = left[keep] * len(contexts) + column[right[keep]]
            cooc += np.bincount(codes, minlength=cooc.size)
    cooc = cooc.reshape(size, len(contexts)).astype(np.float32)
    total = cooc.sum()
    expected = np.outer(cooc.sum(1), cooc.sum(0)) / max(total, 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        ppmi = np.where(cooc > 0, np.maximum(np.log(cooc / expected), 0.0), 0.0)
    norm = np.linalg.norm(ppmi, axis=1, keepdims=True)
    vectors = (ppmi / np.where(norm > 0, norm, 1.0)).astype(np.float32)
    kinds = np.array([_kind(t) for t in vocab])
    table = np.full((size, NEIGHBOURS), -1, np.int32)
    for kind in ("cjk", "other"):  # a CJK character's similar tokens are CJK characters
        eligible = (count >= MIN_COUNT) & (kinds == kind) & (norm[:, 0] > 0)
        candidates = np.flatnonzero(eligible)
        k = min(NEIGHBOURS, len(candidates) - 1)
        if k < 1:
            continue
        for start in range(0, len(candidates), 1024):
            rows = candidates[start : start + 1024]
            score = vectors[rows] @ vectors[candidates].T
            score[candidates[None, :] == rows[:, None]] = -np.inf  # never itself
            table[rows, :k] = candidates[np.argsort(-score, axis=1, kind="stable")[:, :k]]
    return table


def _kind(token: str) -> str:
    """ "cjk" (one CJK ideograph), "none" ([special] or punctuation: never similar) or "other"."""
    text = token.removeprefix("##")
    if not text or (token.startswith("[") and token.endswith("]")):
        return "none"
    if all(unicodedata.category(c).startswith(("P", "S")) for c in text):
        return "none"
    if len(text) == 1 and unicodedata.name(text, "").startswith("CJK"):
        return "cjk"
    return "other"


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
