"""MLM + NSP training examples from tokenized documents, with google-research/bert semantics.

`pair_tokens` plans the segment pairs of a set of documents (`create_instances_from_document`,
`truncate_seq_pair`), or without NSP consecutive chunks of each document filling the row;
`build_examples` assembles any subset of them and masks it (`data/masking.py`);
`create_examples` does both. Deliberate differences from the reference (balanced NSP, random B
from a window) and the reasoning are in docs/design/pretraining_examples.md.
"""

from __future__ import annotations

import bisect
import dataclasses
import random
from collections.abc import Sequence

import numpy as np

from bert_jax.data.corpus import word_starts as document_word_starts
from bert_jax.data.masking import mask_tokens, span_weights

# The arrays of a set of examples (the pipeline's batch fields), leading dimension n.
EXAMPLE_FIELDS = (
    "input_ids",
    "attention_mask",
    "token_type_ids",
    "masked_lm_positions",
    "masked_lm_ids",
    "masked_lm_weights",
    "next_sentence_labels",
)


@dataclasses.dataclass(frozen=True)
class ExampleOptions:
    """Shape and sampling options of pretraining examples (names as google-research/bert flags)."""

    max_seq_length: int = 128
    max_predictions_per_seq: int = 20
    masked_lm_prob: float = 0.15
    short_seq_prob: float = 0.1
    whole_word_masking: bool = False
    balanced_nsp: bool = True
    next_sentence_prediction: bool = True  # False: [CLS] A [SEP] rows, A a document's chunk
    # Masking variants (masking.py, docs/chinese.md); the defaults are plain BERT masking.
    span_length_weights: str = ""
    word_char_mask_prob: float = 0.0
    max_masked_word_length: int = 0
    masked_lm_prob_start: float = 0.0
    masked_lm_prob_schedule_epochs: float = 0.0
    similar_token_prob: float = 0.0
    eval_masked_lm_prob: float = 0.0  # Rate of the validation split's masks; 0: masked_lm_prob.

    def __post_init__(self):
        if self.max_seq_length < 5:
            raise ValueError(f"max_seq_length must be >= 5, got {self.max_seq_length}")
        if self.max_predictions_per_seq < 1:
            raise ValueError("max_predictions_per_seq must be >= 1")
        if not 0 < self.masked_lm_prob <= 1:
            raise ValueError(f"masked_lm_prob must be in (0, 1], got {self.masked_lm_prob}")
        if not 0 <= self.short_seq_prob <= 1:
            raise ValueError(f"short_seq_prob must be in [0, 1], got {self.short_seq_prob}")
        if self.span_length_weights:
            span_weights(self.span_length_weights)

    @classmethod
    def from_data_config(cls, data_config) -> ExampleOptions:
        """The options of a pretraining data config (`data.*`, same names)."""
        values = {f.name: data_config.get(f.name, f.default) for f in dataclasses.fields(cls)}
        return cls(**values)

    @property
    def max_num_tokens(self) -> int:
        """Text tokens of a row: all but [CLS] and the [SEP] of each segment."""
        return self.max_seq_length - (3 if self.next_sentence_prediction else 2)


@dataclasses.dataclass(frozen=True)
class Vocabulary:
    """The ids the example builder needs; `subword_mask` bool [size] marks "##" pieces;
    `similar_ids` int [size, K] (-1 padded) lists similar tokens (`data.similar_token_prob`)."""

    size: int
    pad_id: int
    cls_id: int
    sep_id: int
    mask_id: int
    subword_mask: np.ndarray | None = None
    similar_ids: np.ndarray | None = None

    @classmethod
    def from_tokenizer(cls, tokenizer) -> Vocabulary:
        return cls(
            size=tokenizer.vocab_size,
            pad_id=tokenizer.pad_id,
            cls_id=tokenizer.cls_id,
            sep_id=tokenizer.sep_id,
            mask_id=tokenizer.mask_id,
            subword_mask=tokenizer.subword_mask,
        )


@dataclasses.dataclass
class SegmentPlan:
    """Segments as half-open sentence ranges into the flat sentence list, int64 [n] each.

    short_target: bool [num_documents], whether the document drew a short target length.
    random_next_unavailable: random B segments drawn but not made, for want of another document.
    """

    a_start: np.ndarray
    a_end: np.ndarray
    b_start: np.ndarray
    b_end: np.ndarray
    is_random_next: np.ndarray
    short_target: np.ndarray
    random_next_unavailable: int = 0

    def __len__(self) -> int:
        return len(self.a_start)


def plan_segments(
    sentence_lengths: Sequence[int],
    document_sizes: Sequence[int],
    rng: random.Random,
    options: ExampleOptions,
) -> SegmentPlan:
    """Chooses segments A and B for every example of a set of documents (the reference loop).

    sentence_lengths: tokens per sentence, all documents back to back.
    document_sizes: sentences per document (each >= 1).
    A random B comes from any other of these documents, never from A's own.
    """
    cumulative = np.concatenate([[0], np.cumsum(sentence_lengths, dtype=np.int64)]).tolist()
    doc_starts = np.concatenate([[0], np.cumsum(document_sizes, dtype=np.int64)]).tolist()
    num_docs, max_tokens = len(doc_starts) - 1, options.max_num_tokens
    uniform = rng.random
    rows = []  # (a_start, a_end, b_start, b_end, is_random_next), sentence indices.
    short = []
    unavailable = 0

    def run_end(start: int, stop: int, tokens: int) -> int:
        """End of the shortest run of sentences from `start` with >= `tokens` tokens (or `stop`)."""
        return min(
            bisect.bisect_left(cumulative, cumulative[start] + tokens, start + 1, stop), stop
        )

    def random_next(doc: int, chunk_start: int, split: int, target: int) -> None:
        other = int(uniform() * (num_docs - 1))
        other += other >= doc
        first, stop = doc_starts[other], doc_starts[other + 1]
        start = first + int(uniform() * (stop - first))
        b_tokens = target - (cumulative[split] - cumulative[chunk_start])
        rows.append((chunk_start, split, start, run_end(start, stop, b_tokens), True))

    for doc in range(num_docs):
        first, stop = doc_starts[doc], doc_starts[doc + 1]
        several_sentences = stop - first >= 2
        target = max_tokens
        short.append(uniform() < options.short_seq_prob)
        if short[-1]:
            target = 2 + int(uniform() * (max_tokens - 1))
        chunk_start = first
        while chunk_start < stop:
            end = run_end(chunk_start, stop, target)
            num_segments = end - chunk_start
            split = chunk_start + 1
            if num_segments >= 2:
                split += int(uniform() * (num_segments - 1))
            lone = num_segments == 1  # A takes the whole chunk: B must come from elsewhere.
            if lone and options.balanced_nsp and several_sentences:
                random_b = uniform() < 0.5
            else:
                random_b = lone or uniform() < 0.5
            if random_b and num_docs < 2:  # Never a B from A's own document labelled random.
                unavailable += 1
                random_b = False
            if random_b:
                random_next(doc, chunk_start, split, target)
                chunk_start = split  # The unused sentences are put back.
            elif not lone:
                rows.append((chunk_start, split, split, end, False))
                chunk_start = end
            elif several_sentences and chunk_start > first:  # The preceding ones become A.
                bound = cumulative[end] - target
                a_start = max(bisect.bisect_right(cumulative, bound, first, chunk_start) - 1, first)
                rows.append((a_start, chunk_start, chunk_start, end, False))
                chunk_start = end
            elif several_sentences:  # The document's first sentence: the following become B.
                b_tokens = target - (cumulative[end] - cumulative[chunk_start])
                rows.append((chunk_start, end, end, run_end(end, stop, b_tokens), False))
                chunk_start = end
            else:  # A one-sentence document with no other document: nothing to pair it with.
                chunk_start = end

    table = np.array(rows, np.int64).reshape(-1, 5)
    return SegmentPlan(
        a_start=table[:, 0],
        a_end=table[:, 1],
        b_start=table[:, 2],
        b_end=table[:, 3],
        is_random_next=table[:, 4].astype(bool),
        short_target=np.array(short, bool),
        random_next_unavailable=unavailable,
    )


def truncate_pairs(
    a_length: np.ndarray, b_length: np.ndarray, max_num_tokens: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """`truncate_seq_pair` for all pairs at once: (a_front, a_kept, b_front, b_kept), int64 [n].

    The reference removes one token at a time from the longer segment (B on ties), from the front
    or the back with probability 1/2. Which segment loses how many tokens is thus fixed by the
    lengths; only the front/back split is random, a Binomial(removed, 1/2) draw.
    """
    excess = np.maximum(a_length + b_length - max_num_tokens, 0)
    gap = np.abs(a_length - b_length)
    from_longer = np.minimum(excess, gap)
    alternating = excess - from_longer  # Once equal: B, A, B, A, ...
    a_removed = np.where(a_length > b_length, from_longer, 0) + alternating // 2
    b_removed = np.where(a_length > b_length, 0, from_longer) + (alternating + 1) // 2
    a_front = rng.binomial(a_removed, 0.5)
    b_front = rng.binomial(b_removed, 0.5)
    return a_front, a_length - a_removed, b_front, b_length - b_removed


@dataclasses.dataclass
class Pairs:
    """Examples as token ranges: [CLS] tokens[a_start : a_start + a_length] [SEP]
    tokens[b_start : b_start + b_length] [SEP], int64 [n] each; is_random_next bool [n]."""

    a_start: np.ndarray
    a_length: np.ndarray
    b_start: np.ndarray
    b_length: np.ndarray
    is_random_next: np.ndarray

    def __len__(self) -> int:
        return len(self.a_start)

    def __getitem__(self, rows) -> Pairs:
        return Pairs(
            self.a_start[rows],
            self.a_length[rows],
            self.b_start[rows],
            self.b_length[rows],
            self.is_random_next[rows],
        )


def document_chunks(
    sentence_lengths: np.ndarray, document_sizes: np.ndarray, rng: random.Random, options
) -> Pairs:
    """Examples for an objective without NSP: each document's tokens cut into consecutive
    chunks of max_num_tokens (the last one shorter; a document that drew a short target, with
    short_seq_prob as `plan_segments`, into chunks of that length), sentence boundaries
    ignored, no token dropped. B is empty."""
    sentence_ends = np.cumsum(sentence_lengths, dtype=np.int64)
    doc_ends = sentence_ends[np.cumsum(document_sizes, dtype=np.int64) - 1].tolist()
    max_tokens, starts, lengths, doc_start = options.max_num_tokens, [], [], 0
    for doc_end in doc_ends:
        target = max_tokens
        if rng.random() < options.short_seq_prob:
            target = 2 + int(rng.random() * (max_tokens - 1))
        chunk_starts = np.arange(doc_start, doc_end, target, dtype=np.int64)
        starts.append(chunk_starts)
        lengths.append(np.minimum(chunk_starts + target, doc_end) - chunk_starts)
        doc_start = doc_end
    a_start = np.concatenate([np.zeros(0, np.int64), *starts])
    a_length = np.concatenate([np.zeros(0, np.int64), *lengths])
    empty = np.zeros_like(a_start)
    return Pairs(a_start, a_length, a_start + a_length, empty, empty.astype(bool))


def pair_tokens(
    sentence_lengths: np.ndarray,
    document_sizes: np.ndarray,
    seed: Sequence[int],
    options: ExampleOptions,
    *,
    shuffle: bool = True,
) -> Pairs:
    """Every example of a set of documents as token ranges: segments planned (`plan_segments`),
    truncated (`truncate_pairs`) and, if `shuffle`, in random order.

    sentence_lengths: int [S], all documents back to back; document_sizes: int [D]. Token
    offsets count from the first token of the first document. `seed` fixes every choice.
    """
    planner_seed, numpy_seed = np.random.SeedSequence(list(seed)).spawn(2)
    planner = random.Random(int(planner_seed.generate_state(1, np.uint64)[0]))
    rng = np.random.default_rng(numpy_seed)
    if not options.next_sentence_prediction:
        chunks = document_chunks(sentence_lengths, document_sizes, planner, options)
        return chunks[rng.permutation(len(chunks))] if shuffle else chunks
    plan = plan_segments(sentence_lengths, document_sizes, planner, options)
    token_offsets = np.concatenate([[0], np.cumsum(sentence_lengths, dtype=np.int64)])
    a_start, b_start = token_offsets[plan.a_start], token_offsets[plan.b_start]
    a_length = token_offsets[plan.a_end] - a_start
    b_length = token_offsets[plan.b_end] - b_start
    a_front, a_length, b_front, b_length = truncate_pairs(
        a_length, b_length, options.max_num_tokens, rng
    )
    pairs = Pairs(a_start + a_front, a_length, b_start + b_front, b_length, plan.is_random_next)
    return pairs[rng.permutation(len(pairs))] if shuffle else pairs


class TokenSource:
    """The flat tokens of a set of documents (and their word starts), followed by [CLS], [SEP]
    and [PAD] at T, T + 1, T + 2, from which rows are gathered.

    tokens: int32 [T]; word_starts: uint8 or bool [T], 1 where a token starts a whole word, or
    None (no whole words).
    """

    def __init__(self, tokens: np.ndarray, vocab: Vocabulary, word_starts=None):
        self.num_tokens = len(tokens)
        specials = np.array([vocab.cls_id, vocab.sep_id, vocab.pad_id], np.int32)
        self.tokens = np.concatenate([np.asarray(tokens, np.int32), specials])
        self.word_starts = None
        if word_starts is not None:
            self.word_starts = np.concatenate([np.asarray(word_starts, bool), np.zeros(3, bool)])

    def rows(self, pairs: Pairs, max_seq_length: int) -> dict[str, np.ndarray]:
        """[CLS] A [SEP] B [SEP] [PAD]... rows, [CLS] A [SEP] [PAD]... where B is empty:
        input_ids, token_type_ids, attention_mask int32 [n, L] (a_length >= 1, the tokens with
        the specials <= L); with word starts also word_starts
        bool [n, L]: those of the kept tokens, plus the first token of each segment (which
        starts a word even where the segment's start or truncation cut one); 0 on specials."""
        index = np.int32 if self.num_tokens < 2**31 - 3 else np.int64
        j = np.arange(max_seq_length, dtype=index)[None, :]
        a_len = pairs.a_length.astype(index)[:, None]
        b_len = pairs.b_length.astype(index)[:, None]
        end = a_len + 1 + np.where(b_len > 0, b_len + 1, 0)  # Position of the final [SEP].
        in_a = (j >= 1) & (j <= a_len)
        in_b = (j > a_len + 1) & (j < end)
        special = np.where(j == 0, self.num_tokens, self.num_tokens + 2)
        special = np.where((j == a_len + 1) | (j == end), self.num_tokens + 1, special)
        source = np.where(in_b, pairs.b_start.astype(index)[:, None] - a_len - 2 + j, special)
        source = np.where(in_a, pairs.a_start.astype(index)[:, None] - 1 + j, source)
        rows = {
            "input_ids": self.tokens[source],
            "token_type_ids": ((j > a_len + 1) & (j <= end)).astype(np.int32),
            "attention_mask": (j <= end).astype(np.int32),
        }
        if self.word_starts is not None:
            b_first = (j == a_len + 2) & (b_len > 0)
            rows["word_starts"] = self.word_starts[source] | (j == 1) | b_first
        return rows


def assemble(
    tokens: np.ndarray,
    a_start: np.ndarray,
    a_length: np.ndarray,
    b_start: np.ndarray,
    b_length: np.ndarray,
    max_seq_length: int,
    vocab: Vocabulary,
    word_starts: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """[CLS] A [SEP] B [SEP] [PAD]... rows from token ranges of a flat token array
    (`TokenSource.rows`); a_start, a_length, b_start, b_length: int64 [n]."""
    pairs = Pairs(a_start, a_length, b_start, b_length, np.zeros(len(a_start), bool))
    return TokenSource(tokens, vocab, word_starts).rows(pairs, max_seq_length)


def build_examples(
    source: TokenSource,
    pairs: Pairs,
    seed: Sequence[int] | np.random.SeedSequence,
    options: ExampleOptions,
    vocab: Vocabulary,
) -> dict[str, np.ndarray]:
    """The examples `pairs` describe, assembled from `source` and masked (`seed` fixes the
    masks): the batch fields of `data.input_pipeline` with a leading dimension of len(pairs).
    With `options.whole_word_masking` the source must have word starts."""
    rows = source.rows(pairs, options.max_seq_length)
    masked = mask_tokens(
        rows.pop("input_ids"),
        pairs.a_length,
        pairs.b_length,
        np.random.default_rng(seed),
        options,
        vocab,
        rows.pop("word_starts", None),
    )
    examples = {**rows, **masked, "next_sentence_labels": pairs.is_random_next.astype(np.int32)}
    return {name: examples[name] for name in EXAMPLE_FIELDS}


def token_source(
    tokens: np.ndarray, options: ExampleOptions, vocab: Vocabulary, word_starts=None
) -> TokenSource:
    """The TokenSource of these tokens with the word starts whole-word masking reads (`word_starts`
    if given, else the tokens that are not "##" pieces), or none without it."""
    if not options.whole_word_masking:
        word_starts = None
    elif word_starts is None:
        word_starts = document_word_starts({"tokens": tokens}, vocab.subword_mask)
    return TokenSource(tokens, vocab, word_starts)


def create_examples(
    tokens: np.ndarray,
    sentence_lengths: np.ndarray,
    document_sizes: np.ndarray,
    seed: Sequence[int],
    options: ExampleOptions,
    vocab: Vocabulary,
    *,
    word_starts: np.ndarray | None = None,
    shuffle: bool = True,
) -> dict[str, np.ndarray]:
    """All examples of a set of documents, as fixed-shape arrays (rows shuffled if `shuffle`).

    tokens: int32 [T], sentences back to back; sentence_lengths: int [S]; document_sizes: int [D].
    A random B comes from any other of the D documents. word_starts: uint8 [T] (1 where a token
    starts a whole word), read with `options.whole_word_masking`; by default the tokens that are
    not "##" pieces. `seed` (a sequence of ints) fixes every random choice. Returns the batch
    fields of `bert_jax.data.input_pipeline` with a leading dimension of the number of examples.
    """
    pairs = pair_tokens(sentence_lengths, document_sizes, [*seed, 0], options, shuffle=shuffle)
    source = token_source(tokens, options, vocab, word_starts)
    return build_examples(source, pairs, [*seed, 1], options, vocab)


def original_ids(examples: dict[str, np.ndarray]) -> np.ndarray:
    """input_ids [n, L] of examples (or a batch) with the masked positions restored."""
    ids = examples["input_ids"].copy()
    rows, cols = np.nonzero(examples["masked_lm_weights"])
    ids[rows, examples["masked_lm_positions"][rows, cols]] = examples["masked_lm_ids"][rows, cols]
    return ids
