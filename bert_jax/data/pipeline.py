"""Pretraining input pipeline: Grain over the TFDS corpus of tokenized documents.

Per process and epoch (one pass over the documents):

  documents (TFDS ArrayRecord source; train: this process's 1/process_count share)
    -> shuffled (train), a new order every epoch
    -> chunks of `documents_per_chunk` documents
    -> all MLM+NSP examples of a chunk (`pretraining.create_examples`, vectorised numpy),
       seeded by (seed, epoch, chunk), rows shuffled within the chunk
    -> fixed batches of global_batch_size // process_count rows.

Dynamic masking builds fresh segment pairs and masks every epoch. Static masking cycles through
`dupe_factor` fixed passes, like the `dupe_factor` copies of google-research/bert: epoch e repeats
epoch e - dupe_factor exactly. The validation split is deterministic and finite; each process
reads its own share of its documents, as in training, in one order fixed by the seed, and builds
and batches only its own rows (the last partial batch is dropped). Shares then hold different
numbers of batches: the evaluation loop stops when any process runs out (`train_lib.evaluate`).

The iterator is a grain `DatasetIterator`: `get_state()` returns a JSON-serialisable dict and
`set_state(state)` resumes at exactly the next batch.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import os
from typing import Any

import grain
import ml_collections
import numpy as np
from absl import flags

from bert_jax.data import corpus, pretraining
from bert_jax.data.tokenization import WordPieceTokenizer
from bert_jax.errors import UserError

_ASSETS = importlib.resources.files("bert_jax") / "assets"
BUNDLED_CORPUS = os.fspath(_ASSETS / "kjv.txt.gz")
BUNDLED_VOCAB = os.fspath(_ASSETS / "kjv_vocab.txt")

BATCH_FIELDS = (
    "input_ids",
    "attention_mask",
    "token_type_ids",
    "masked_lm_positions",
    "masked_lm_ids",
    "masked_lm_weights",
    "next_sentence_labels",
)


def default_data_config() -> ml_collections.ConfigDict:
    """Pretraining data settings; defaults: the bundled KJV corpus and its 8192-token vocab."""
    config = ml_collections.ConfigDict()
    config.input_files = BUNDLED_CORPUS  # Comma-separated paths or globs; *.gz is read as gzip.
    config.vocab_file = BUNDLED_VOCAB
    config.lowercase = True
    config.data_dir = "~/.cache/bert_jax/datasets"  # Where the tokenized TFDS corpus is cached.
    config.validation_fraction = 0.05  # Share of documents held out (seeded, whole documents).
    config.max_line_chars = 20_000  # Longer lines are split at a space (and counted).
    config.max_seq_length = 128
    config.max_predictions_per_seq = 20
    config.masked_lm_prob = 0.15
    config.short_seq_prob = 0.1
    config.dupe_factor = 5  # Distinct passes cycled through with static masking.
    config.dynamic_masking = True  # Fresh pairs and masks every epoch; False: static, as BERT.
    config.whole_word_masking = False
    config.balanced_nsp = True  # 50/50 labels also for single-sentence chunks (False: reference).
    config.documents_per_chunk = 64  # Examples are built and shuffled per chunk of documents.
    config.worker_count = 0  # Grain worker processes; 0 builds examples in a background thread.
    config.prefetch_chunks = 2
    config.cache_max_tokens = 20_000_000  # Smaller corpora are read once and kept in memory.
    config.show_progress = True
    return config


def example_options(data_config) -> pretraining.ExampleOptions:
    return pretraining.ExampleOptions(
        max_seq_length=data_config.max_seq_length,
        max_predictions_per_seq=data_config.max_predictions_per_seq,
        masked_lm_prob=data_config.masked_lm_prob,
        short_seq_prob=data_config.short_seq_prob,
        whole_word_masking=data_config.whole_word_masking,
        balanced_nsp=data_config.balanced_nsp,
    )


def _builder(data_config) -> corpus.PretrainingCorpus:
    return corpus.corpus_builder(
        data_config.input_files,
        data_config.vocab_file,
        data_dir=os.path.expanduser(data_config.data_dir),
        lowercase=data_config.lowercase,
        validation_fraction=data_config.validation_fraction,
        max_line_chars=data_config.max_line_chars,
        show_progress=data_config.show_progress,
    )


def prepare_data(data_config) -> dict:
    """Builds the tokenized corpus under data_dir unless an identical one exists (process 0 only).

    Returns the corpus report: documents, sentences, tokens, repairs, examples per split, paths.
    """
    return corpus.prepare_corpus(_builder(data_config))


@dataclasses.dataclass
class _ChunkExamples(grain.transforms.MapWithIndex):
    """Element c of the chunk stream: all examples of one chunk of documents.

    Chunk c is chunk c % chunks_per_epoch of epoch c // chunks_per_epoch. Each epoch is a pass
    over this process's documents in an order drawn from (seed, pass, process); with static
    masking pass = epoch % dupe_factor, so epochs repeat exactly every dupe_factor epochs.
    """

    source: Any  # TFDS data source of documents.
    documents: np.ndarray  # The indices this process reads.
    chunk_size: int
    shuffle: bool
    passes: int | None  # dupe_factor for static masking, None for dynamic.
    seed: int
    process_index: int
    options: pretraining.ExampleOptions
    vocab: pretraining.Vocabulary
    cache_documents: bool
    _cache: dict[int, dict] | None = dataclasses.field(default=None, repr=False)
    _order_cache: dict[int, np.ndarray] = dataclasses.field(default_factory=dict, repr=False)

    @property
    def chunks_per_epoch(self) -> int:
        return -(-len(self.documents) // self.chunk_size)

    def _order(self, pass_index: int) -> np.ndarray:
        if not self.shuffle:
            return self.documents
        if pass_index not in self._order_cache:
            rng = np.random.default_rng([self.seed, pass_index, self.process_index])
            self._order_cache = {pass_index: rng.permutation(self.documents)}
        return self._order_cache[pass_index]

    def map_with_index(self, index: int, element) -> dict[str, np.ndarray]:
        del element  # The index says it all.
        epoch, chunk = divmod(index, self.chunks_per_epoch)
        pass_index = epoch % self.passes if self.passes else epoch
        first = chunk * self.chunk_size
        keys = self._order(pass_index)[first : first + self.chunk_size]
        documents = self._read(keys.tolist())
        return pretraining.create_examples(
            np.concatenate([d["tokens"] for d in documents]),
            np.concatenate([d["sentence_lengths"] for d in documents]),
            np.array([len(d["sentence_lengths"]) for d in documents], np.int64),
            [self.seed, pass_index, chunk, self.process_index],
            self.options,
            self.vocab,
        )

    def _read(self, keys: list[int]) -> list[dict]:
        if not self.cache_documents:
            return self.source.__getitems__(keys)
        if self._cache is None:  # First use in this process: read all its documents once.
            every = self.documents.tolist()
            self._cache = dict(zip(every, self.source.__getitems__(every), strict=True))
        return [self._cache[key] for key in keys]

    def __getstate__(self):
        return {**self.__dict__, "_order_cache": {}, "_cache": None}


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

    Element c holds every example of one chunk of documents; `len()` is the number of chunks
    over all epochs (sys.maxsize when infinite). Both splits read this process's share of the
    documents; validation in one order fixed by the seed.
    """
    if split not in ("train", "validation"):
        raise UserError(f"unknown split {split!r}: use 'train' or 'validation'")
    builder = _builder(data_config)
    if not builder.is_prepared():
        if process_count > 1:
            raise UserError(
                f"no prepared data in {data_config.data_dir}: call prepare_data on process 0 first"
            )
        corpus.prepare_corpus(builder)
    if split not in builder.info.splits:
        raise UserError(
            f"the corpus has no {split} split: validation_fraction is "
            f"{data_config.validation_fraction} or the corpus has a single document"
        )
    tokenizer = WordPieceTokenizer.from_vocab(data_config.vocab_file, data_config.lowercase)
    source = builder.as_data_source(split)
    train = split == "train"
    documents = process_documents(len(source), process_index, process_count)
    if train and len(documents) == 0:
        raise UserError(f"process {process_index} has no documents: the corpus is too small")
    to_examples = _ChunkExamples(
        source=source,
        documents=documents,
        chunk_size=data_config.documents_per_chunk,
        shuffle=True,  # validation too (fixed seed): random B from anywhere, as in training
        passes=None if data_config.dynamic_masking or not train else data_config.dupe_factor,
        seed=seed,
        process_index=process_index,
        options=example_options(data_config),
        vocab=pretraining.Vocabulary.from_tokenizer(tokenizer),
        cache_documents=builder.info.metadata["report"]["tokens"] <= data_config.cache_max_tokens,
    )
    chunks = grain.MapDataset.range(to_examples.chunks_per_epoch).repeat(num_epochs)
    return chunks.map_with_index(to_examples)


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
