"""BERT WordPiece tokenizer on the Rust `tokenizers` library, id-for-id with google-research/bert.

`WordPieceTokenizer` rebuilds the reference `FullTokenizer`'s steps (clean, lowercase and strip
accents, split punctuation and CJK ideographs, greedy WordPiece) from regex building blocks,
because the stock `BertNormalizer`/`BertPreTokenizer` differ from it on some text; it can also
learn a vocabulary. See docs/design/tokenizer.md.
"""

from __future__ import annotations

import collections
import functools
import gzip
import hashlib
import io
import itertools
import json
import os
import re
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import tokenizers
from etils import epath
from tokenizers import Regex, decoders, models, normalizers, pre_tokenizers, trainers

from bert_jax.errors import UserError
from bert_jax.untrusted import (
    MAX_VOCAB_BYTES,
    MAX_VOCAB_LINE_CHARS,
    MAX_VOCAB_SIZE,
    check_file_size,
)

PAD, UNK, CLS, SEP, MASK = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"
SPECIAL_TOKENS = (PAD, UNK, CLS, SEP, MASK)
SUBWORD_PREFIX = "##"

# Bumped whenever the normalisation or splitting rules change, so cached datasets rebuild.
_PIPELINE_VERSION = 1

_CJK_RANGES = (
    (0x4E00, 0x9FFF),
    (0x3400, 0x4DBF),
    (0x20000, 0x2A6DF),
    (0x2A700, 0x2B73F),
    (0x2B740, 0x2B81F),
    (0x2B820, 0x2CEAF),
    (0xF900, 0xFAFF),
    (0x2F800, 0x2FA1F),
)
_CJK_CLASS = "[" + "".join(f"\\x{{{lo:X}}}-\\x{{{hi:X}}}" for lo, hi in _CJK_RANGES) + "]"
_CJK_CHAR = re.compile("[" + "".join(f"\\U{lo:08X}-\\U{hi:08X}" for lo, hi in _CJK_RANGES) + "]")
_REMOVED_CHARS = r"[\x00\x{FFFD}\p{Cc}\p{Cf}&&[^\t\n\r]]"
# Python's str.lower() maps a capital sigma that ends a word to the final form; per-character
# lower-casing does not, so do it first. The look-behind is fixed-width in Oniguruma.
_FINAL_SIGMA = r"(?<=\p{Cased})\x{3A3}(?!\p{Case_Ignorable}*\p{Cased})"
# Characters Python's str.split() treats as separators although BERT deletes them as controls, so
# a line holding one cannot be tokenized word by word.
_UNSAFE_WORD_SPLIT = re.compile("[\x0b\x0c\x1c-\x1f\x85]")
# All non-alphanumeric ASCII counts as punctuation in BERT, as do all Unicode P* categories.
_PUNCTUATION_CLASS = r"[\p{P}!-/:-@\[-`{-~]"


def _build_pipeline(tokenizer: tokenizers.Tokenizer, lowercase: bool) -> None:
    steps = [normalizers.Replace(Regex(_REMOVED_CHARS), "")]
    if lowercase:
        steps += [
            normalizers.Replace(Regex(_FINAL_SIGMA), "\u03c2"),
            normalizers.Lowercase(),
            normalizers.NFD(),
            normalizers.Replace(Regex(r"\p{Mn}"), ""),
        ]
    tokenizer.normalizer = normalizers.Sequence(steps)
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.WhitespaceSplit(),
            pre_tokenizers.Split(Regex(_PUNCTUATION_CLASS), "isolated"),
            pre_tokenizers.Split(Regex(_CJK_CLASS), "isolated"),
        ]
    )
    tokenizer.decoder = decoders.WordPiece(prefix=SUBWORD_PREFIX)


def load_tokenizer_file(path, lowercase: bool = True):
    """The tokenizer of a vocab.txt (WordPieceTokenizer, `lowercase` applied) or of a
    tokenizer.json (`bert_jax.data.json_tokenizer.JsonTokenizer`, casing its own); both have
    the same methods."""
    from bert_jax.data.json_tokenizer import JsonTokenizer, is_tokenizer_json

    if is_tokenizer_json(path):
        return JsonTokenizer.from_file(path, lowercase=lowercase)
    return WordPieceTokenizer.from_vocab(path, lowercase=lowercase)


def _is_continuation(token: str) -> bool:
    return token.startswith(SUBWORD_PREFIX) and len(token) > len(SUBWORD_PREFIX)


def _read_lines(path: str) -> Iterator[str]:
    """Lines of a UTF-8 text file (gzip when named *.gz); undecodable bytes become U+FFFD."""
    with epath.Path(path).open("rb") as raw:  # gs:// too
        binary = gzip.GzipFile(fileobj=raw) if path.endswith(".gz") else raw
        yield from io.TextIOWrapper(binary, encoding="utf-8", errors="replace")


@functools.lru_cache(maxsize=8)
def _load_tokenizer(cls, path, mtime_ns, size, lowercase, max_input_chars_per_word):
    """Tokenizers are immutable, so one instance serves every caller of an unchanged vocab file."""
    del mtime_ns, size  # Part of the cache key only.
    vocab = _read_vocab(path)
    return cls(vocab, lowercase=lowercase, max_input_chars_per_word=max_input_chars_per_word)


def _read_vocab(path: str) -> list[str]:
    """One token per line, stripped; the file may be untrusted, so size, line length and line
    count are bounded before they are read."""
    check_file_size(path, MAX_VOCAB_BYTES, "a vocabulary file")
    vocab = []
    with io.TextIOWrapper(epath.Path(path).open("rb"), encoding="utf-8", errors="replace") as f:
        while line := f.readline(MAX_VOCAB_LINE_CHARS + 2):
            if len(line.rstrip("\n")) > MAX_VOCAB_LINE_CHARS:
                raise UserError(
                    f"{path}: line {len(vocab) + 1} is longer than {MAX_VOCAB_LINE_CHARS} "
                    "characters; a vocabulary file holds one token per line"
                )
            if len(vocab) == MAX_VOCAB_SIZE:
                raise UserError(f"{path}: more than {MAX_VOCAB_SIZE} lines (tokens)")
            vocab.append(line.strip())
    return vocab


def _truncate_pair(a: list[int], b: list[int] | None, budget: int, strategy: str):
    """(a, b) cut to `budget` tokens together, as transformers' fast tokenizers cut them:
    longest_first keeps the shorter side whole when it fits in half, else halves the budget (an
    odd token to the longer side); only_first / only_second cut that side alone."""
    if budget < 0:
        raise UserError(f"max_length leaves no room for [CLS] and [SEP] ({budget} tokens)")
    excess = len(a) + len(b or ()) - budget
    if excess <= 0:
        return a, b
    if strategy == "only_second" or strategy == "only_first" and b is not None:
        cut_first = strategy == "only_first"
        side = a if cut_first else b
        if side is None or len(side) < excess:
            raise UserError(
                f"truncation={strategy!r} cannot remove {excess} tokens: the "
                f"{'first' if cut_first else 'second'} text has {len(side or ())}"
            )
        kept = side[: len(side) - excess]
        return (kept, b) if cut_first else (a, kept)
    if b is None:
        return a[:budget], b
    shorter, longer = sorted((len(a), len(b)))
    if shorter > budget:
        keep_short = keep_long = shorter
    else:
        keep_short, keep_long = shorter, max(shorter, budget - shorter)
    if keep_short + keep_long > budget:
        keep_short, keep_long = budget // 2, budget // 2 + budget % 2
    keep_a, keep_b = (keep_long, keep_short) if len(a) > len(b) else (keep_short, keep_long)
    return a[:keep_a], b[:keep_b]


class TokenizerMethods:
    """What WordPieceTokenizer and JsonTokenizer share: the methods over their `tokenizers`
    pipeline (`_tokenizer`), vocabulary (`_vocab`), casing and continuation-piece mask."""

    _tokenizer: tokenizers.Tokenizer
    _vocab: list[str]
    _lowercase: bool
    _subword_mask: np.ndarray

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """Token ids with the characters they come from.

        Args:
            text: the string to encode.

        Returns:
            (ids, offsets): the ids of `encode`, and per token its [start, end) character span in
            the original `text`.
        """
        encoding = self._tokenizer.encode(text, add_special_tokens=False)
        return encoding.ids, encoding.offsets

    def encode_batch_with_offsets(
        self, texts: Sequence[str]
    ) -> list[tuple[list[int], list[tuple[int, int]]]]:
        """`encode_with_offsets` for many texts at once."""
        encodings = self._tokenizer.encode_batch(list(texts), add_special_tokens=False)
        return [(e.ids, e.offsets) for e in encodings]

    def __call__(
        self,
        text: str | Sequence[str],
        text_pair: str | Sequence[str] | None = None,
        *,
        max_length: int | None = None,
        padding: bool | str = False,
        truncation: bool | str = False,
        return_tensors: str | None = "np",
    ) -> dict:
        """transformers-style model inputs: [CLS] A [SEP] (B [SEP]) per text (and pair).

        Args:
            text, text_pair: a string or a list of strings (pairs: as many as texts).
            max_length: the row length truncation and padding="max_length" use.
            padding: False, True / "longest" (to the longest row), "max_length".
            truncation: False, True / "longest_first" (tokens leave the longer side first, as
                transformers' fast tokenizers cut), "only_first", "only_second".
            return_tensors: "np" (int32 arrays [n, L]; [1, L] for one string) or None (lists,
                unbatched for one string).

        Returns:
            {"input_ids", "token_type_ids", "attention_mask"}.
        """
        strategy = {True: "longest_first", False: None, "do_not_truncate": None}.get(
            truncation, truncation
        )
        if strategy not in (None, "longest_first", "only_first", "only_second"):
            raise UserError(f"truncation={truncation!r}: use True, 'only_first' or 'only_second'")
        pad = {True: "longest", False: None, "do_not_pad": None}.get(padding, padding)
        if pad not in (None, "longest", "max_length"):
            raise UserError(f"padding={padding!r}: use True, 'longest' or 'max_length'")
        if (strategy or pad == "max_length") and max_length is None:
            raise UserError("truncation and padding='max_length' need max_length=")
        if return_tensors not in ("np", None):
            raise UserError(f"return_tensors={return_tensors!r}: this tokenizer gives 'np' or None")
        single = isinstance(text, str)
        texts = [text] if single else list(text)
        pairs = None
        if text_pair is not None:
            pairs = [text_pair] if isinstance(text_pair, str) else list(text_pair)
            if len(pairs) != len(texts):
                raise UserError(f"{len(texts)} texts but {len(pairs)} text pairs")
        firsts = self.encode_batch(texts)
        seconds = self.encode_batch(pairs) if pairs is not None else [None] * len(texts)
        rows, types = [], []
        for a, b in zip(firsts, seconds, strict=True):
            if strategy:
                a, b = _truncate_pair(a, b, max_length - (2 if b is None else 3), strategy)
            rows.append(
                [self.cls_id, *a, self.sep_id, *([*b, self.sep_id] if b is not None else [])]
            )
            types.append([0] * (len(a) + 2) + [1] * (len(rows[-1]) - len(a) - 2))
        length = max((len(r) for r in rows), default=0)
        length = max(length, max_length) if pad == "max_length" else length
        masks = [[1] * len(r) for r in rows]
        if pad:
            for row, kind, mask in zip(rows, types, masks, strict=True):
                extra = length - len(row)
                row += [self.pad_id] * extra
                kind += [0] * extra
                mask += [0] * extra
        out = {"input_ids": rows, "token_type_ids": types, "attention_mask": masks}
        if return_tensors is None:
            return {k: v[0] for k, v in out.items()} if single else out
        if len({len(r) for r in rows}) > 1:
            raise UserError("rows of different lengths: pass padding=True to return arrays")
        return {k: np.array(v, np.int32).reshape(len(rows), -1) for k, v in out.items()}

    def tokenize(self, text: str) -> list[str]:
        """The word pieces of `text` as strings ("##" marks a continuation), without specials."""
        return self._tokenizer.encode(text, add_special_tokens=False).tokens

    def decode(self, ids: Iterable[int]) -> str:
        """Readable text from ids.

        Args:
            ids: token ids.

        Returns:
            The word pieces joined ("##" pieces glued to their word), special tokens kept, no
            space before punctuation.
        """
        return self._tokenizer.decode(list(ids), skip_special_tokens=False)

    def convert_ids_to_tokens(self, ids: Iterable[int]) -> list[str]:
        """The token of each id (an IndexError for an id outside the vocabulary)."""
        return [self._vocab[int(i)] for i in ids]

    @property
    def vocab(self) -> list[str]:
        return list(self._vocab)

    @property
    def vocab_size(self) -> int:
        return len(self._vocab)

    @property
    def lowercase(self) -> bool:
        return self._lowercase

    @property
    def subword_mask(self) -> np.ndarray:
        """bool [vocab_size]: True for "##" continuation pieces (whole-word masking groups them)."""
        return self._subword_mask

    def is_subword(self, token_id: int) -> bool:
        return bool(self._subword_mask[token_id])


class WordPieceTokenizer(TokenizerMethods):
    """BERT WordPiece tokenizer: `encode` gives the ids of google-research/bert `FullTokenizer`.

    No special tokens are added by any method; callers assemble [CLS] A [SEP] B [SEP] themselves.
    Build one with `from_vocab` (a vocab.txt) or `train` (text files), or from a token list.

    Example:
        tokenizer = WordPieceTokenizer.from_vocab("vocab.txt", lowercase=True)
        ids = tokenizer.encode("Hello, world!")  # [7592, 1010, 2088, 999] with bert-base-uncased
    """

    def __init__(
        self, vocab: Sequence[str], lowercase: bool = True, max_input_chars_per_word: int = 100
    ):
        """A tokenizer over an in-memory vocabulary.

        Args:
            vocab: the tokens, `vocab[i]` being the token of id i; a repeated token keeps its
                last id, as in BERT. Must hold [PAD], [UNK], [CLS], [SEP] and [MASK].
            lowercase: lower-case and strip accents first (uncased models); False for cased.
            max_input_chars_per_word: longer whitespace-separated words become [UNK].

        Raises:
            UserError: the vocabulary lacks one of the special tokens.
        """
        self._vocab = list(vocab)
        missing = [t for t in SPECIAL_TOKENS if t not in set(self._vocab)]
        if missing:
            raise UserError(
                f"vocabulary lacks the special tokens {missing}: a BERT vocab needs "
                f"{list(SPECIAL_TOKENS)} (train one with WordPieceTokenizer.train)"
            )
        self._lowercase = bool(lowercase)
        self._max_input_chars_per_word = int(max_input_chars_per_word)
        self._token_to_id = {token: i for i, token in enumerate(self._vocab)}
        self._tokenizer = tokenizers.Tokenizer(
            models.WordPiece(
                vocab=self._token_to_id,
                unk_token=UNK,
                max_input_chars_per_word=self._max_input_chars_per_word,
                continuing_subword_prefix=SUBWORD_PREFIX,
            )
        )
        _build_pipeline(self._tokenizer, self._lowercase)
        self._subword_mask = np.array([t.startswith(SUBWORD_PREFIX) for t in self._vocab], bool)

    # -- construction -------------------------------------------------------------------------

    @classmethod
    def from_vocab(
        cls, vocab_file: str | os.PathLike, lowercase: bool = True, max_input_chars_per_word=100
    ) -> WordPieceTokenizer:
        """Loads a one-token-per-line vocab file (BERT's vocab.txt); line i is id i.

        Args:
            vocab_file: local path or gs:// URL of the file. Its size and line lengths are
                bounded before reading (it may come from the internet).
            lowercase: as for the constructor; must match how the vocabulary was made.
            max_input_chars_per_word: as for the constructor.

        Returns:
            The tokenizer; loading an unchanged file again returns the same (immutable) instance.

        Raises:
            UserError: the file is missing, too large, or lacks a special token.
        """
        vocab_file = os.fspath(vocab_file)
        if "://" in vocab_file:  # gs:// and other object stores, through etils.epath
            path = epath.Path(vocab_file)
            if not path.is_file():
                raise UserError(f"vocab file not found: {vocab_file} (pass --vocab_file=PATH)")
            stat = path.stat()
            mtime, size = stat.mtime, stat.length
        else:
            vocab_file = os.path.abspath(vocab_file)
            if not os.path.isfile(vocab_file):
                raise UserError(f"vocab file not found: {vocab_file} (pass --vocab_file=PATH)")
            stat = os.stat(vocab_file)
            mtime, size = stat.st_mtime_ns, stat.st_size
        return _load_tokenizer(
            cls, vocab_file, mtime, size, bool(lowercase), int(max_input_chars_per_word)
        )

    @classmethod
    def train(
        cls,
        files: Iterable[str | os.PathLike],
        vocab_size: int,
        lowercase: bool = True,
        min_frequency: int = 2,
        show_progress: bool = False,
        cjk_continuations: bool = False,
    ) -> WordPieceTokenizer:
        """Learns a new WordPiece vocabulary of at most `vocab_size` tokens from text files.

        Files may be gzip-compressed (*.gz). The special tokens take ids 0..4 in the order
        [PAD], [UNK], [CLS], [SEP], [MASK]. Then come the characters, most frequent first, each
        with its "##" continuation form when it occurs inside a word: as many as the budget holds
        (all of them on most corpora), so only the rarest characters of a corpus whose alphabet
        exceeds the budget become [UNK] (google-research/bert's Chinese vocabulary likewise
        keeps its most frequent characters). Whatever budget is left goes to word pieces merged
        from frequent pairs (`min_frequency` occurrences at least; merges are those of
        `tokenizers`' WordPiece trainer). The result is the same on every run.

        CJK ideographs are always split into single characters before WordPiece (as in the
        reference), so "##" + ideograph pieces are never produced and take no id by default.
        cjk_continuations=True adds one for every kept ideograph anyway, laid out as
        bert-base-chinese has them (within the budget), for tools that look such pieces up.

        Args:
            files: text files (local or gs://, *.gz allowed), read line by line.
            vocab_size: the most tokens the vocabulary may hold, special tokens included.
            lowercase: lower-case and strip accents before learning (an uncased vocabulary).
            min_frequency: the fewest occurrences of a pair for it to be merged.
            show_progress: show `tokenizers`' progress bar.
            cjk_continuations: also add a "##" form of every kept CJK ideograph.

        Returns:
            A tokenizer over the learned vocabulary (write it out with `save_vocab`).

        Raises:
            UserError: a file is missing, or vocab_size leaves no room beside the special tokens.
        """
        files = [os.fspath(f) for f in files]
        for path in files:
            if not epath.Path(path).is_file():
                raise UserError(f"training file not found: {path}")
        budget = int(vocab_size) - len(SPECIAL_TOKENS)
        if budget < 1:
            raise UserError(f"vocab_size {vocab_size} leaves no room beside the special tokens")
        scratch = tokenizers.Tokenizer(models.WordPiece(unk_token=UNK))
        _build_pipeline(scratch, lowercase)

        def lines():
            return (line for path in files for line in _read_lines(path))

        counts = collections.Counter()
        text = lines()
        while block := "".join(itertools.islice(text, 4096)):
            counts.update(scratch.normalizer.normalize_str(block))
        for space in [c for c in counts if c.isspace()]:
            del counts[space]
        if not counts:
            raise UserError(f"no text to learn a vocabulary from in {files}")
        # Which characters occur inside a word (and so need a "##" form): the trainer itself
        # says, run once without merges.
        probe = trainers.WordPieceTrainer(
            vocab_size=1,
            special_tokens=[],
            continuing_subword_prefix=SUBWORD_PREFIX,
            show_progress=False,
        )
        scratch.train_from_iterator(lines(), trainer=probe)
        inside = {t[len(SUBWORD_PREFIX) :] for t in scratch.get_vocab() if _is_continuation(t)}
        kept, continuations = [], []
        for char in sorted(counts, key=lambda c: (-counts[c], c)):
            needs_form = char in inside or (cjk_continuations and _CJK_CHAR.match(char))
            cost = 1 + bool(needs_form)
            if cost > budget:
                break
            budget -= cost
            kept.append(char)
            if needs_form:
                continuations.append(SUBWORD_PREFIX + char)
        # Registering the "##" forms up front fixes their ids: created on the fly, they get ids
        # in hash-map order, which breaks merge ties differently on every run (tokenizers#1794).
        trainer = trainers.WordPieceTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=[*SPECIAL_TOKENS, *continuations],
            initial_alphabet=kept,
            limit_alphabet=len(kept),
            continuing_subword_prefix=SUBWORD_PREFIX,
            show_progress=show_progress,
        )
        scratch.train_from_iterator(lines(), trainer=trainer)
        learned = scratch.get_vocab()
        return cls(sorted(learned, key=learned.__getitem__), lowercase=lowercase)

    def save_vocab(self, path: str | os.PathLike) -> None:
        """Writes the vocabulary, one token per line (line i = id i).

        Args:
            path: local path or gs:// URL; missing parent folders are created.
        """
        path = epath.Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(token + "\n" for token in self._vocab), encoding="utf-8")

    # -- encoding -----------------------------------------------------------------------------

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, without special tokens.

        Args:
            text: any string; control characters are dropped as by the reference.

        Returns:
            The ids, as google-research/bert's `FullTokenizer` gives them.
        """
        return self._tokenizer.encode(text, add_special_tokens=False).ids

    def encode_masked(self, text: str, mask_text: str) -> list[int]:
        """Ids of `text` with each `mask_text` (e.g. "[MASK]") the mask token."""
        ids = []
        for position, piece in enumerate(text.split(mask_text)):
            ids += [self.mask_id] * bool(position) + self.encode(piece)
        return ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Encodes many texts at once on all cores (Rust threads); the fast path for corpora.

        Args:
            texts: the strings to encode.

        Returns:
            One list of ids per text, as `encode` gives them.
        """
        encodings = self._tokenizer.encode_batch_fast(list(texts), add_special_tokens=False)
        return [e.ids for e in encodings]

    def encode_lines(self, lines: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Encodes a block of text lines into one flat array: ids int32 [total], lengths int64 [n].

        Same ids as `encode_batch`, but each distinct whitespace-separated word is tokenized once
        (natural text repeats words a lot), which makes corpus preparation several times faster.
        """
        words_per_line = [line.split() for line in lines]
        if _UNSAFE_WORD_SPLIT.search("".join(lines)):
            for i, line in enumerate(lines):
                if _UNSAFE_WORD_SPLIT.search(line):
                    words_per_line[i] = [line]
        # Number the distinct words in C loops: setdefault keeps each word's first-occurrence
        # counter, which is then compacted to 0..num_distinct-1.
        words = list(itertools.chain.from_iterable(words_per_line))
        first_seen: dict[str, int] = {}
        occurrence = np.fromiter(
            map(first_seen.setdefault, words, itertools.count()), np.int64, len(words)
        )
        compact = np.zeros(len(words), np.int64)
        compact[np.fromiter(first_seen.values(), np.int64, len(first_seen))] = np.arange(
            len(first_seen)
        )
        word_ids = compact[occurrence]
        words_in_line = np.fromiter(map(len, words_per_line), np.int64, len(lines))
        piece_ids, piece_counts = self._encode_words(list(first_seen))
        counts = piece_counts[word_ids]
        source_starts = (np.cumsum(piece_counts) - piece_counts)[word_ids]
        target_starts = np.cumsum(counts) - counts
        ids = piece_ids[np.repeat(source_starts - target_starts, counts) + np.arange(counts.sum())]
        cumulative = np.concatenate([[0], np.cumsum(counts)])
        line_ends = np.cumsum(words_in_line)
        lengths = cumulative[line_ends] - cumulative[line_ends - words_in_line]
        return ids.astype(np.int32, copy=False), lengths

    def _encode_words(self, words: list[str], group: int = 1024) -> tuple[np.ndarray, np.ndarray]:
        """Ids of many whitespace-free words: (ids int32 [total], pieces per word int64 [n]).

        Encodes groups of words joined by spaces, which amortises the per-call cost of
        `tokenizers`, and gives each piece back to its word through its character offset.
        """
        texts = [" ".join(words[i : i + group]) for i in range(0, len(words), group)]
        ids, owners = [np.zeros([0], np.int32)], [np.zeros([0], np.int64)]
        for g, encoding in enumerate(self._tokenizer.encode_batch(texts, add_special_tokens=False)):
            spans = np.fromiter(map(len, words[g * group : (g + 1) * group]), np.int64) + 1
            word_starts = np.cumsum(spans) - spans
            piece_starts = np.fromiter((o[0] for o in encoding.offsets), np.int64, len(encoding))
            owners.append(np.searchsorted(word_starts, piece_starts, "right") - 1 + g * group)
            ids.append(np.asarray(encoding.ids, np.int32))
        return np.concatenate(ids), np.bincount(np.concatenate(owners), minlength=len(words))

    def convert_tokens_to_ids(self, tokens: Iterable[str]) -> list[int]:
        """The id of each token; [UNK]'s id for a token not in the vocabulary."""
        return [self._token_to_id.get(t, self.unk_id) for t in tokens]

    def token_to_id(self, token: str) -> int | None:
        return self._token_to_id.get(token)

    @property
    def pad_id(self) -> int:
        return self._token_to_id[PAD]

    @property
    def unk_id(self) -> int:
        return self._token_to_id[UNK]

    @property
    def cls_id(self) -> int:
        return self._token_to_id[CLS]

    @property
    def sep_id(self) -> int:
        return self._token_to_id[SEP]

    @property
    def mask_id(self) -> int:
        return self._token_to_id[MASK]

    def fingerprint(self) -> str:
        """Stable hash of everything that decides the ids: vocab, casing, word limit, pipeline."""
        state = [_PIPELINE_VERSION, self._lowercase, self._max_input_chars_per_word, self._vocab]
        return hashlib.sha256(json.dumps(state).encode("utf-8")).hexdigest()[:16]

    def __getstate__(self):
        return {
            "vocab": self._vocab,
            "lowercase": self._lowercase,
            "max_input_chars_per_word": self._max_input_chars_per_word,
        }

    def __setstate__(self, state):
        self.__init__(**state)

    def __repr__(self) -> str:
        return (
            f"WordPieceTokenizer(vocab_size={self.vocab_size}, lowercase={self._lowercase}, "
            f"fingerprint={self.fingerprint()})"
        )
