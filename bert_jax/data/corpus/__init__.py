"""Text corpus -> tokenized documents: a TFDS dataset of ArrayRecord files, no TensorFlow needed.

reader.py reads input files in units, words.py finds whole-word starts, writer.py writes a
unit's shards, workers.py / beam.py run the units, report.py counts and checks, dataset.py names,
prepares, finds and opens a dataset. Each example is one document (`tokens`,
`sentence_lengths`, optional `word_starts`); splits `train` and `validation`.
See docs/design/corpus_prep.md.
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
from bert_jax.data.corpus.summary import CorpusReport, describe
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
