"""Whole-word boundaries from a word segmenter (Chinese whole-word masking, as HFL's BERT-wwm).

`--word_segmenter` names a function `str -> list[str]`: none (the default: "##" groups of word
pieces), jieba, or any importable `module:callable`. Token ids never depend on the segmenter;
its words are laid over the tokens by character offset to give `word_starts`.
See docs/design/corpus_prep.md, "Word segmenters".
"""

from __future__ import annotations

import functools
import importlib
import logging
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from bert_jax.errors import UserError

Segmenter = Callable[[str], list[str]]

BUILTIN = {"jieba": "bert_jax.data.corpus.words:jieba_words"}


def jieba_words(text: str) -> list[str]:
    """jieba's default (accurate, HMM) mode, without its start-up messages."""
    return _jieba().lcut(text)


@functools.cache
def _jieba():
    import jieba

    jieba.setLogLevel(logging.WARNING)
    return jieba


def _target(spec: str) -> str:
    spec = spec.strip()
    target = BUILTIN.get(spec, spec)
    if ":" not in target:
        raise UserError(
            f"--word_segmenter={spec}: use none, {', '.join(BUILTIN)} or module:callable "
            "(a function str -> list[str])"
        )
    return target


@functools.cache
def load_segmenter(spec: str) -> Segmenter | None:
    """The segmenter a spec names (None for "none"); UserError if it cannot be imported."""
    if spec.strip().lower() in ("", "none"):
        return None
    module_name, _, attribute = _target(spec).partition(":")
    try:
        value = importlib.import_module(module_name)
        for name in attribute.split("."):
            value = getattr(value, name)
        if module_name == __name__ and spec.strip() == "jieba":
            _jieba()  # import errors now, not in the middle of the corpus
    except ImportError as err:
        extra = ' (pip install -e ".[zh]" in the repository)' if spec.strip() == "jieba" else ""
        raise UserError(f"--word_segmenter={spec}: cannot import it: {err}{extra}") from None
    except AttributeError:
        raise UserError(f"--word_segmenter={spec}: {module_name} has no {attribute}") from None
    if not callable(value):
        raise UserError(f"--word_segmenter={spec}: {attribute} is not callable")
    return value


def segmenter_id(spec: str) -> str:
    """What the dataset's name records: the spec and the segmenter package's version."""
    if load_segmenter(spec) is None:
        return "none"
    module_name = "jieba" if spec.strip() == "jieba" else _target(spec).partition(":")[0]
    root = importlib.import_module(module_name.split(".")[0])
    return f"{spec.strip()}@{getattr(root, '__version__', '')}"


def _word_begins(line: str, words: Sequence[str], report) -> np.ndarray:
    """Character offset of each segmenter word in `line`, found left to right."""
    if isinstance(words, str) or not all(isinstance(w, str) for w in words):
        raise UserError(f"the word segmenter returned {type(words).__name__}, not a list of str")
    begins, position = [], 0
    for word in words:
        if not word.strip():  # spaces: no token starts there
            continue
        found = line.find(word, position)
        if found < 0:  # the segmenter changed the text: that word's characters join the previous
            report.segmenter_words_not_found += 1
            continue
        begins.append(found)
        position = found + len(word)
    report.segmenter_words += len(begins)
    return np.asarray(begins, np.int64)


def encode_segmented(tokenizer, segmenter: Segmenter, lines: Sequence[str], report):
    """Like `tokenizer.encode_lines`, plus word starts: (ids int32 [T], lengths int64 [n],
    word_starts uint8 [T])."""
    subword = tokenizer.subword_mask
    ids_out, starts_out, lengths = [], [], np.zeros(len(lines), np.int64)
    for i, (line, (ids, offsets)) in enumerate(
        zip(lines, tokenizer.encode_batch_with_offsets(lines), strict=True)
    ):
        if not ids:
            continue
        ids = np.asarray(ids, np.int32)
        begins = _word_begins(line, list(segmenter(line)), report)
        char_starts = np.fromiter((o[0] for o in offsets), np.int64, len(offsets))
        owner = np.searchsorted(begins, char_starts, "right")
        new_word = np.ones(len(ids), bool)
        new_word[1:] = owner[1:] != owner[:-1]
        ids_out.append(ids)
        starts_out.append((new_word & ~subword[ids]).astype(np.uint8))
        lengths[i] = len(ids)
    if not ids_out:
        return np.zeros([0], np.int32), lengths, np.zeros([0], np.uint8)
    return np.concatenate(ids_out), lengths, np.concatenate(starts_out)


def word_starts(document: Mapping[str, np.ndarray], subword_mask: np.ndarray) -> np.ndarray:
    """uint8 [num_tokens]: 1 where a token starts a whole word.

    The stored `word_starts` of a dataset prepared with a segmenter; otherwise every piece that
    is not a "##" continuation (`subword_mask`: bool [vocab_size], WordPieceTokenizer's).
    """
    if "word_starts" in document:
        return np.asarray(document["word_starts"], np.uint8)
    return (~subword_mask[np.asarray(document["tokens"])]).astype(np.uint8)
