"""Text corpus -> tokenized documents: a TFDS dataset of ArrayRecord files, no TensorFlow needed.

  reader.py   input files (local or gs://), work units cut at document boundaries, streaming
              documents with every repair counted
  words.py    word segmenters (--word_segmenter) and whole-word starts
  writer.py   one unit -> its shards (`UnitTask`, the same code on every runner), metadata
  workers.py  units on one machine: N spawned processes, a progress bar over bytes
  beam.py     units on an Apache Beam runner (Dataflow, Spark, Flink, DirectRunner)
  report.py   counts, speed, memory; the dirty-corpus check
  dataset.py  naming, `prepare`, finding and opening a prepared dataset

Each example is one document:
  tokens            int32 [num_tokens], all its sentences back to back;
  sentence_lengths  int32 [num_sentences], all >= 1, summing to num_tokens;
  word_starts       uint8 [num_tokens], only in datasets prepared with a word segmenter
                    (`PreparedCorpus.word_boundaries`): 1 where a token starts a whole word,
                    i.e. it is not a "##" piece and its segmenter word differs from the previous
                    token's. Without a segmenter nothing is stored (it would repeat the
                    vocabulary's "##" marks at a byte per token); `words.word_starts(document,
                    tokenizer.subword_mask)` gives the array for either kind of dataset: the
                    stored one, or 1 on every non-"##" piece. Whole-word masking reads that.
Splits: `train`, and `validation` (documents whose keyed content hash falls below
validation_fraction; if none does, the corpus's last document; train is never empty).
Document order: input files in order, documents in file order, whatever the number of workers
or the runner.

Finding it again (training never reads the raw text): `open_prepared(DIR)` opens the directory
`prepare` prints; `dataset_dir(data_dir, corpus_spec(...).name)` is where given inputs and
settings land (one stat per input file, no byte read); `list_prepared(data_dir)` lists them all.
"""

from bert_jax.data.corpus.dataset import (
    FORMAT_VERSION,
    CorpusSettings,
    CorpusSpec,
    PreparedCorpus,
    corpus_settings,
    corpus_spec,
    dataset_dir,
    list_prepared,
    open_prepared,
    prepare,
)
from bert_jax.data.corpus.reader import (
    InputFileNotFound,
    TokenizedDocuments,
    read_corpus,
    resolve_input_files,
    split_patterns,
)
from bert_jax.data.corpus.report import CorpusReport, describe
from bert_jax.data.corpus.words import load_segmenter, word_starts
from bert_jax.data.corpus.writer import is_validation

__all__ = [
    "FORMAT_VERSION",
    "InputFileNotFound",
    "CorpusReport",
    "CorpusSettings",
    "CorpusSpec",
    "PreparedCorpus",
    "TokenizedDocuments",
    "corpus_settings",
    "corpus_spec",
    "dataset_dir",
    "describe",
    "is_validation",
    "list_prepared",
    "load_segmenter",
    "open_prepared",
    "prepare",
    "read_corpus",
    "resolve_input_files",
    "split_patterns",
    "word_starts",
]
