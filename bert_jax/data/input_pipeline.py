"""Pretraining input pipeline: Grain over the prepared corpus of tokenized documents.

`open_dataset` finds the prepared dataset (or prepares it); `make_pretraining_iterator` turns a
split's documents into fixed batches of MLM+NSP rows, per process: a new document order each
epoch, examples planned and shuffled per window of documents, optionally packed several to a
row. The iterator's `get_state()`/`set_state()` resume at exactly the next batch.
See docs/design/data_pipeline.md.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
from typing import Any

import grain
import ml_collections
import numpy as np
from absl import flags, logging
from etils import epath

from bert_jax.data import corpus, examples, masking, packed_examples, similar_tokens
from bert_jax.data.bundled import BUNDLED_CORPUS, BUNDLED_VOCAB  # noqa: F401 (re-exported)
from bert_jax.data.tokenization import _CJK_RANGES, load_tokenizer_file
from bert_jax.errors import UserError

BATCH_FIELDS = examples.EXAMPLE_FIELDS
PACKED_FIELDS = packed_examples.PACKED_FIELDS


def example_options(data_config) -> examples.ExampleOptions:
    return examples.ExampleOptions.from_data_config(data_config)


def batch_fields(data_config) -> tuple[str, ...]:
    """The keys of a batch: BATCH_FIELDS, or PACKED_FIELDS with data.packing."""
    return BATCH_FIELDS if packed_examples.sequences_per_row(data_config) is None else PACKED_FIELDS


# -- finding the prepared dataset ------------------------------------------------------------

DATASET_RECORD = "dataset.json"  # in a workdir: the dataset its run reads


def prepare_data(data_config, workdir=None) -> dict:
    """Finds or builds the prepared dataset for `data_config`; returns its summary (process 0).

    In order: the dataset recorded in `workdir` (a resumed run reads the same data); else
    `data.dataset_dir`; else the dataset of `data.input_files` and these settings in
    `data.data_dir`: built now if missing, or, if the raw files are gone, the one dataset
    prepared from the same paths and settings; with `data.input_files` empty, the only dataset
    in `data.data_dir`. The choice is recorded in `workdir`. Never reads the raw text unless it
    builds: finding costs one stat per input file.
    """
    recorded = recorded_dataset_dir(workdir) if workdir is not None else None
    if recorded:
        prepared = _open_recorded(data_config, recorded, workdir)
    else:
        prepared = open_dataset(data_config)
        if workdir is not None:
            record = {"dataset_dir": prepared.directory, "name": prepared.meta["name"]}
            (epath.Path(workdir) / DATASET_RECORD).write_text(json.dumps(record, indent=1))
    return prepared.info()


def recorded_dataset_dir(workdir) -> str | None:
    """The dataset directory a workdir's run reads (None before its first start)."""
    path = epath.Path(workdir) / DATASET_RECORD
    return json.loads(path.read_text())["dataset_dir"] if path.exists() else None


def with_prepared_dataset(config: ml_collections.ConfigDict, workdir) -> ml_collections.ConfigDict:
    """A copy of a pretraining config whose `data.dataset_dir` is the one `workdir` records, so
    every later read (each evaluation, every process) opens it directly."""
    config = copy.deepcopy(config)
    config.data.dataset_dir = recorded_dataset_dir(workdir)
    return config


def _open_recorded(data_config, recorded: str, workdir) -> corpus.PreparedCorpus:
    try:
        prepared = corpus.open_prepared(recorded)
    except UserError:
        raise UserError(
            f"{workdir} was trained on {recorded}, which is gone or incomplete: restore it "
            "(or prepare the same inputs again), or start a new workdir"
        ) from None
    asked = data_config.dataset_dir and corpus.open_prepared(data_config.dataset_dir).directory
    if not asked and str(data_config.input_files).strip():
        try:
            asked = os.fspath(corpus.dataset_dir(data_config.data_dir, _spec(data_config).name))
        except corpus.InputFileNotFound:
            asked = None  # the raw text is gone: nothing to compare, the record decides
    if asked and asked != prepared.directory:
        raise UserError(
            f"{workdir} was trained on {recorded}, but the config now names other data "
            f"({asked}): resume with the same data, or start a new workdir "
            f"(--config.init_checkpoint={workdir} continues from its weights)"
        )
    _check_vocab(data_config, prepared)
    return prepared


def _settings_kwargs(data_config) -> dict:
    return dict(
        lowercase=data_config.lowercase,
        validation_fraction=data_config.validation_fraction,
        max_line_chars=data_config.max_line_chars,
        word_segmenter=data_config.word_segmenter,
    )


def _spec(data_config) -> corpus.CorpusSpec:
    return corpus.corpus_spec(
        data_config.input_files, data_config.vocab_file, **_settings_kwargs(data_config)
    )


def open_dataset(data_config, allow_prepare: bool = True) -> corpus.PreparedCorpus:
    """The prepared dataset `data_config` names (see `prepare_data`), built on first use if
    `allow_prepare`."""
    if data_config.dataset_dir:
        prepared = corpus.open_prepared(data_config.dataset_dir)
    elif not str(data_config.input_files).strip():
        prepared = _only_dataset(data_config.data_dir)
    else:
        try:
            spec = _spec(data_config)
        except corpus.InputFileNotFound as missing:
            prepared = _prepared_from_same_paths(data_config, missing)
        else:
            directory = corpus.dataset_dir(data_config.data_dir, spec.name)
            if (directory / "corpus.json").exists():
                prepared = corpus.open_prepared(os.fspath(directory))
            elif not allow_prepare:
                raise UserError(
                    f"no prepared data in {data_config.data_dir}: call prepare_data on process 0 "
                    "first"
                )
            else:
                prepared = corpus.prepare(
                    spec,
                    data_config.data_dir,
                    num_workers=data_config.num_workers,
                    allow_dirty_corpus=data_config.allow_dirty_corpus,
                    insist="--config.data.allow_dirty_corpus=True",
                    show_progress=data_config.show_progress,
                )
    _check_vocab(data_config, prepared)
    return prepared


def _only_dataset(data_dir: str) -> corpus.PreparedCorpus:
    return _the_one(
        corpus.list_prepared(data_dir),
        f"data.input_files is empty and {data_dir} holds",
        "run python -m bert_jax.data.prepare, or set data.input_files or data.dataset_dir",
    )


def _prepared_from_same_paths(data_config, missing) -> corpus.PreparedCorpus:
    """The raw text is gone: the one dataset prepared from the same paths and settings."""
    patterns = corpus.split_patterns(data_config.input_files)
    settings, _ = corpus.corpus_settings(data_config.vocab_file, **_settings_kwargs(data_config))
    found = [
        p
        for p in corpus.list_prepared(data_config.data_dir)
        if p.meta["input_patterns"] == patterns and p.settings == settings
    ]
    return _the_one(
        found,
        f"data.input_files: {missing.pattern} matches no file, and {data_config.data_dir} holds",
        "prepare them, or set data.dataset_dir",
        "prepared from these paths with these settings",
    )


def _the_one(found: list, situation: str, remedy: str, which: str = "prepared"):
    """The single dataset found, or one line saying there is none (and `remedy`) or several."""
    if len(found) == 1:
        return found[0]
    if not found:
        raise UserError(f"{situation} no dataset {which}: {remedy}")
    directories = ", ".join(p.directory for p in found)
    raise UserError(
        f"{situation} {len(found)} datasets {which}: set data.dataset_dir to one of {directories}"
    )


def _check_vocab(data_config, prepared: corpus.PreparedCorpus) -> None:
    if not data_config.vocab_file:
        return
    tokenizer = load_tokenizer_file(data_config.vocab_file, data_config.lowercase)
    if tokenizer.fingerprint() != prepared.settings.tokenizer_fingerprint:
        raise UserError(
            f"data.vocab_file {data_config.vocab_file} (lowercase={data_config.lowercase}) is "
            f"not the vocabulary {prepared.directory} was tokenized with "
            f"({prepared.meta['vocab_file']}, lowercase={prepared.settings.lowercase}; a copy "
            "is vocab.txt there): pass that one"
        )


@dataclasses.dataclass
class _ChunkExamples(grain.transforms.MapWithIndex):
    """Element c of the chunk stream: one chunk of the examples of a window, shuffled.

    Chunk c is chunk c % chunks_per_epoch of epoch c // chunks_per_epoch. Each epoch is a pass
    over this process's documents in an order drawn from (seed, pass, process); with static
    masking pass = epoch % dupe_factor, so epochs repeat exactly every dupe_factor epochs. The
    order is cut into windows of nearly equal size (`window_bounds`); a window of d documents is
    planned once (`examples.pair_tokens`, seeded by (seed, pass, window, process): segments,
    truncation, order), and its ceil(d / chunk_size) chunks are equal slices of its examples,
    each assembled and masked on its own (seeded by the chunk too). Packed, the window's examples
    are packed into rows once (`packed_examples.pack_pairs`, seeded likewise) and the chunks are
    equal slices of its rows.
    """

    source: Any  # TFDS data source of documents.
    documents: np.ndarray  # The indices this process reads.
    window_size: int  # At most this many documents per window.
    chunk_size: int  # Documents' worth of examples per chunk.
    passes: int | None  # dupe_factor for static masking, None for dynamic.
    seed: int
    process_index: int
    options: examples.ExampleOptions
    vocab: examples.Vocabulary
    cache_documents: bool
    sequences_per_row: int | None = None  # Packed rows of up to this many examples, or None.
    schedule: bool = False  # The masking rate follows data.masked_lm_prob_start's schedule.
    _cache: dict[int, dict] | None = dataclasses.field(default=None, repr=False)
    _order_cache: dict[int, np.ndarray] = dataclasses.field(default_factory=dict, repr=False)
    _window_cache: tuple | None = dataclasses.field(default=None, repr=False)

    def __post_init__(self):
        count = len(self.documents)
        windows = -(-count // self.window_size)
        self.window_bounds = np.arange(windows + 1) * count // max(windows, 1)  # [0]: no documents
        chunks = -(-np.diff(self.window_bounds) // self.chunk_size)
        self.first_chunks = np.concatenate([[0], np.cumsum(chunks)])  # Per window, and the end.

    @property
    def chunks_per_epoch(self) -> int:
        return int(self.first_chunks[-1])

    def _order(self, pass_index: int) -> np.ndarray:
        if pass_index not in self._order_cache:
            rng = np.random.default_rng([self.seed, pass_index, self.process_index])
            self._order_cache = {pass_index: rng.permutation(self.documents)}
        return self._order_cache[pass_index]

    def _window(self, pass_index: int, window: int) -> tuple:
        """(TokenSource, Pairs, slots) of a window, kept while its chunks are built; slots
        int32 [R, S] are its packed rows (indices into Pairs), None unpacked."""
        key = (pass_index, window)
        if self._window_cache is None or self._window_cache[0] != key:
            start, stop = self.window_bounds[window : window + 2]
            documents = self._read(self._order(pass_index)[start:stop].tolist())
            word_starts = None
            if self.options.whole_word_masking:
                subword = self.vocab.subword_mask
                word_starts = np.concatenate([corpus.word_starts(d, subword) for d in documents])
            source = examples.token_source(
                np.concatenate([d["tokens"] for d in documents]),
                self.options,
                self.vocab,
                word_starts,
            )
            pairs = examples.pair_tokens(
                np.concatenate([d["sentence_lengths"] for d in documents]),
                np.array([len(d["sentence_lengths"]) for d in documents], np.int64),
                [self.seed, pass_index, window, self.process_index, 0],
                self.options,
            )
            slots = None
            if self.sequences_per_row is not None:
                slots = packed_examples.pack_pairs(
                    pairs,
                    [self.seed, pass_index, window, self.process_index, 0, 1],
                    self.options,
                    self.sequences_per_row,
                )
            self._window_cache = (key, source, pairs, slots)
        return self._window_cache[1:]

    def map_with_index(self, index: int, element) -> dict[str, np.ndarray]:
        del element  # The index says it all.
        epoch, chunk = divmod(index, self.chunks_per_epoch)
        pass_index = epoch % self.passes if self.passes else epoch
        window = int(np.searchsorted(self.first_chunks, chunk, "right")) - 1
        part, parts = chunk - self.first_chunks[window], np.diff(self.first_chunks)[window]
        source, pairs, slots = self._window(pass_index, window)
        seed = [self.seed, pass_index, window, self.process_index, 1 + part]
        options = self.options
        if self.schedule:  # The rate of this chunk's place in the stream: exact on resume.
            rate = masking.scheduled_masked_lm_prob(options, index / self.chunks_per_epoch)
            options = dataclasses.replace(options, masked_lm_prob=rate)
        if slots is not None:
            rows = slots[part * len(slots) // parts : (part + 1) * len(slots) // parts]
            return packed_examples.build_packed_examples(
                source, pairs, rows, seed, options, self.vocab
            )
        rows = slice(part * len(pairs) // parts, (part + 1) * len(pairs) // parts)
        return examples.build_examples(source, pairs[rows], seed, options, self.vocab)

    def _read(self, keys: list[int]) -> list[dict]:
        if not self.cache_documents:
            return self.source.__getitems__(keys)
        if self._cache is None:  # First use in this process: read all its documents once.
            every = self.documents.tolist()
            self._cache = dict(zip(every, self.source.__getitems__(every), strict=True))
        return [self._cache[key] for key in keys]

    def __getstate__(self):
        return {**self.__dict__, "_order_cache": {}, "_cache": None, "_window_cache": None}


def process_documents(num_documents: int, process_index: int, process_count: int) -> np.ndarray:
    """Indices of the documents (of either split) process `process_index` reads: a strided share."""
    return np.arange(process_index, num_documents, process_count)


def make_example_chunks(
    data_config,
    *,
    split: str,
    seed: int,
    process_index: int = 0,
    process_count: int = 1,
    num_epochs: int | None = None,
) -> grain.MapDataset:
    """Chunks of examples (dicts of arrays with a leading example dimension), epoch after epoch.

    Element c holds one chunk of the shuffled examples of a window of documents; `len()` is the
    number of chunks over all epochs (sys.maxsize when infinite). Both splits read this process's
    share of the documents; validation in one order fixed by the seed.
    """
    if split not in ("train", "validation"):
        raise UserError(f"unknown split {split!r}: use 'train' or 'validation'")
    if data_config.documents_per_window < 2:
        raise UserError(
            f"data.documents_per_window is {data_config.documents_per_window}: use at least 2 "
            "(a random-next segment comes from another document of the window)"
        )
    if data_config.documents_per_chunk < 1:
        raise UserError(f"data.documents_per_chunk is {data_config.documents_per_chunk}: use >= 1")
    prepared = open_dataset(data_config, allow_prepare=process_count == 1)
    if split not in prepared.examples:
        raise UserError(
            f"the corpus has no {split} split: validation_fraction is "
            f"{data_config.validation_fraction} or the corpus has a single document"
        )
    tokenizer = prepared.tokenizer()
    source = prepared.data_source(split)
    train = split == "train"
    options = example_options(data_config)
    if not train and options.eval_masked_lm_prob > 0:  # held-out accuracy at a common rate
        options = dataclasses.replace(options, masked_lm_prob=options.eval_masked_lm_prob)
    vocab = examples.Vocabulary.from_tokenizer(tokenizer)
    if options.similar_token_prob > 0:
        table = similar_tokens.load_or_build(prepared, tokenizer, process_count == 1)
        vocab = dataclasses.replace(vocab, similar_ids=table)
    documents = process_documents(len(source), process_index, process_count)
    if train and len(documents) == 0:
        raise UserError(f"process {process_index} has no documents: the corpus is too small")
    to_examples = _ChunkExamples(
        source=source,
        documents=documents,
        window_size=data_config.documents_per_window,
        chunk_size=data_config.documents_per_chunk,
        passes=None if data_config.dynamic_masking or not train else data_config.dupe_factor,
        seed=seed,
        process_index=process_index,
        options=options,
        vocab=vocab,
        cache_documents=prepared.report["tokens"] <= data_config.cache_max_tokens,
        sequences_per_row=packed_examples.sequences_per_row(data_config),
        schedule=train and options.masked_lm_prob_start > 0,
    )
    lone = int(np.sum(np.diff(to_examples.window_bounds) == 1))
    if lone:
        logging.warning(
            "%d of the %d windows of %s %s documents hold a single document: they make no "
            "random-next pairs (next_sentence_labels 0), for want of another document",
            lone,
            len(to_examples.window_bounds) - 1,
            f"process {process_index}'s" if train else "the",
            split,
        )
    if data_config.whole_word_masking and not prepared.word_boundaries:
        _warn_if_chinese_without_words(prepared, tokenizer, source)
    chunks = grain.MapDataset.range(to_examples.chunks_per_epoch).repeat(num_epochs)
    return chunks.map_with_index(to_examples)


_WARNED_CHINESE: set[str] = set()
CJK_SHARE = 0.5  # Above this share of CJK-character tokens, the text counts as Chinese.


def _cjk_tokens(vocab: list[str]) -> np.ndarray:
    """bool [vocab_size]: tokens that are one CJK ideograph ("##" form included)."""
    points = np.array([ord(t[-1]) if len(t.removeprefix("##")) == 1 else -1 for t in vocab])
    return np.any([(points >= lo) & (points <= hi) for lo, hi in _CJK_RANGES], axis=0)


def _warn_if_chinese_without_words(prepared, tokenizer, source, sample: int = 32) -> None:
    """whole_word_masking on CJK text without a segmenter's words is character masking: say so
    once per dataset."""
    if prepared.directory in _WARNED_CHINESE:
        return
    _WARNED_CHINESE.add(prepared.directory)
    documents = source.__getitems__(list(range(min(sample, len(source)))))
    tokens = np.concatenate([d["tokens"] for d in documents])
    share = float(np.mean(_cjk_tokens(tokenizer.vocab)[tokens])) if len(tokens) else 0.0
    if share > CJK_SHARE:
        logging.warning(
            "data.whole_word_masking=True, but %s has no word boundaries and %.0f%% of its "
            "tokens are CJK characters: each character is its own word, so this is character "
            "masking. For Chinese whole-word masking prepare the corpus with "
            "--word_segmenter=jieba (data.word_segmenter=jieba).",
            prepared.directory,
            100 * share,
        )


def make_pretraining_dataset(
    data_config,
    *,
    split: str,
    global_batch_size: int,
    seed: int,
    process_index: int = 0,
    process_count: int = 1,
    num_epochs: int | None = None,
) -> grain.IterDataset:
    """The grain dataset behind `make_pretraining_iterator` (same arguments)."""
    if global_batch_size % process_count:
        raise UserError(
            f"global_batch_size {global_batch_size} is not divisible by {process_count} processes"
        )
    if split == "validation" and num_epochs is None:
        num_epochs = 1
    chunks = make_example_chunks(
        data_config,
        split=split,
        seed=seed,
        process_index=process_index,
        process_count=process_count,
        num_epochs=num_epochs,
    )
    read_options = grain.ReadOptions(
        num_threads=1, prefetch_buffer_size=data_config.prefetch_chunks
    )
    examples = chunks.to_iter_dataset(read_options)
    if data_config.worker_count > 0:
        # Grain's worker processes read absl flags; outside an absl app nobody parsed them.
        if not flags.FLAGS.is_parsed():
            flags.FLAGS.mark_as_parsed()
        examples = examples.mp_prefetch(
            grain.MultiprocessingOptions(num_workers=data_config.worker_count)
        )
    local_batch_size = global_batch_size // process_count
    return grain.experimental.RebatchIterDataset(examples, local_batch_size, drop_remainder=True)


def make_pretraining_iterator(
    data_config,
    *,
    split: str,
    global_batch_size: int,
    seed: int,
    process_index: int = 0,
    process_count: int = 1,
    num_epochs: int | None = None,
) -> grain.DatasetIterator:
    """Batches of this process's rows, as a checkpointable grain iterator.

    Each batch is a dict of numpy arrays with b = global_batch_size // process_count rows and
    L = max_seq_length, P = max_predictions_per_seq:
      input_ids, attention_mask, token_type_ids: int32 [b, L]
      masked_lm_positions, masked_lm_ids: int32 [b, P]; masked_lm_weights: float32 [b, P]
      next_sentence_labels: int32 [b] (0: B follows A, 1: B is random)
    With data.packing a row holds up to S = max_sequences_per_row examples, P is
    `packed_examples.batch_predictions` and masked_lm_positions index into the row;
    next_sentence_labels are [b, S], with next_sentence_weights float32 [b, S] (0 for an empty
    slot), segment_ids and position_ids int32 [b, L] (segment 0 is padding) and cls_positions
    int32 [b, S] (`packed_examples.pack_examples`; attention_mask is segment_ids > 0).
    Train repeats forever unless `num_epochs` is given; validation defaults to one epoch.
    The same seed gives the same batches; `get_state()`/`set_state()` checkpoint the position.
    process_index / process_count: the share of the batch this process feeds
    (`sharding.batch_share`: the process index and count unless hosts share rows).
    """
    dataset = make_pretraining_dataset(
        data_config,
        split=split,
        global_batch_size=global_batch_size,
        seed=seed,
        process_index=process_index,
        process_count=process_count,
        num_epochs=num_epochs,
    )
    return iter(dataset)
