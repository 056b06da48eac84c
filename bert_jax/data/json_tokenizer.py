"""A tokenizer.json (any Hugging Face `tokenizers` model: ModernBERT's BPE, WordPiece, ...) behind
WordPieceTokenizer's interface, so that prepare, fine-tuning and the pipelines take either file.

Its own normaliser decides casing (`lowercase` is recorded, not applied). Special tokens are
found by BERT's names ([CLS] ...) or RoBERTa's (<s> ...); continuation pieces (whole-word
masking) are "##" pieces of a WordPiece model, or byte-level BPE pieces not starting a word (Ġ).
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Iterable, Sequence

import numpy as np
import tokenizers
from etils import epath

from bert_jax.data.tokenization import TokenizerMethods
from bert_jax.errors import UserError
from bert_jax.untrusted import MAX_VOCAB_BYTES, check_file_size

# Each special token by BERT's name, then the RoBERTa / byte-level BPE one.
_SPECIALS = {
    "pad": ("[PAD]", "<pad>"),
    "unk": ("[UNK]", "<unk>"),
    "cls": ("[CLS]", "<s>"),
    "sep": ("[SEP]", "</s>"),
    "mask": ("[MASK]", "<mask>"),
}


_WORD_START = "\u0120"  # byte-level BPE's "Ġ": the piece follows a space (a letter itself)


@functools.lru_cache(maxsize=8)
def _from_text(text: str, lowercase: bool) -> JsonTokenizer:
    return JsonTokenizer(text, lowercase=lowercase)


def is_tokenizer_json(path) -> bool:
    """Whether `path` names a tokenizer.json (by its .json suffix) rather than a vocab.txt."""
    return os.fspath(path).endswith(".json")


class JsonTokenizer(TokenizerMethods):
    """A `tokenizers` tokenizer.json with WordPieceTokenizer's methods (no specials added)."""

    def __init__(self, text: str, lowercase: bool = False):
        """text: the tokenizer.json's content. UserError when it is no tokenizer or lacks one
        of the special tokens (pad, unk, cls, sep, mask)."""
        try:
            self._tokenizer = tokenizers.Tokenizer.from_str(text)
        except Exception as err:  # tokenizers raises its own exception type
            raise UserError(f"not a Hugging Face tokenizer.json ({err})") from None
        self._text = text
        self._lowercase = bool(lowercase)
        vocab = self._tokenizer.get_vocab(with_added_tokens=True)
        self._vocab = [""] * (max(vocab.values()) + 1)
        for token, i in vocab.items():
            self._vocab[i] = token
        self._ids = {}
        for role, names in _SPECIALS.items():
            found = [vocab[n] for n in names if n in vocab]
            if not found:
                raise UserError(
                    f"tokenizer.json has no {role} token (one of {list(names)}); a BERT-style "
                    "encoder needs pad, unk, cls, sep and mask tokens"
                )
            self._ids[role] = found[0]
        model = self._tokenizer.model
        prefix = getattr(model, "continuing_subword_prefix", None) or ""
        specials = set(self._ids.values())
        if prefix:
            continuation = [t.startswith(prefix) and len(t) > len(prefix) for t in self._vocab]
        else:  # byte-level BPE: a piece continues a word unless it follows a space
            continuation = [t[:1] != _WORD_START and t[:1].isalnum() for t in self._vocab]
        self._subword_mask = np.array(continuation, bool)
        self._subword_mask[list(specials)] = False

    @classmethod
    def from_file(cls, path, lowercase: bool = False) -> JsonTokenizer:
        """Reads a tokenizer.json (local or gs://; size bounded, it may be untrusted)."""
        path = epath.Path(path)
        if not path.is_file():
            raise UserError(f"tokenizer file not found: {path} (pass --vocab_file=PATH)")
        check_file_size(path, MAX_VOCAB_BYTES, "a tokenizer.json")
        try:
            return _from_text(path.read_text(encoding="utf-8"), bool(lowercase))
        except UserError as err:
            raise UserError(f"{path}: {err}") from None

    def save_vocab(self, path) -> None:
        """Writes the tokenizer.json (the whole tokenizer: its vocabulary alone does not encode)."""
        path = epath.Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self._text, encoding="utf-8")

    # -- encoding ------------------------------------------------------------------------------

    def encode(self, text: str) -> list[int]:
        return self._tokenizer.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        encodings = self._tokenizer.encode_batch_fast(list(texts), add_special_tokens=False)
        return [e.ids for e in encodings]

    def encode_lines(self, lines: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """ids int32 [total] of every line, lengths int64 [n] (a BPE piece may span a space, so
        lines are encoded whole)."""
        encoded = self.encode_batch(lines)
        lengths = np.fromiter(map(len, encoded), np.int64, len(encoded))
        ids = np.fromiter((i for e in encoded for i in e), np.int32, int(lengths.sum()))
        return ids, lengths

    def encode_masked(self, text: str, mask_text: str) -> list[int]:
        """Ids of `text` with each `mask_text` the mask token: the tokenizer matches its own
        mask token in the text (with the spacing its added-token rules give, as transformers)."""
        mask = self._vocab[self.mask_id]
        return self.encode(text.replace(mask_text, mask))

    # -- vocabulary ----------------------------------------------------------------------------

    def convert_tokens_to_ids(self, tokens: Iterable[str]) -> list[int]:
        ids = map(self._tokenizer.token_to_id, tokens)
        return [self.unk_id if i is None else i for i in ids]

    def token_to_id(self, token: str) -> int | None:
        return self._tokenizer.token_to_id(token)

    pad_id = property(lambda self: self._ids["pad"])
    unk_id = property(lambda self: self._ids["unk"])
    cls_id = property(lambda self: self._ids["cls"])
    sep_id = property(lambda self: self._ids["sep"])
    mask_id = property(lambda self: self._ids["mask"])

    def fingerprint(self) -> str:
        """Hash of the tokenizer.json: everything that decides the ids."""
        return hashlib.sha256(self._text.encode("utf-8")).hexdigest()[:16]

    def __getstate__(self):
        return {"text": self._text, "lowercase": self._lowercase}

    def __setstate__(self, state):
        self.__init__(**state)

    def __repr__(self) -> str:
        return f"JsonTokenizer(vocab_size={self.vocab_size}, fingerprint={self.fingerprint()})"
