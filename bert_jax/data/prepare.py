r"""Tokenize a text corpus into the cached TFDS dataset that pretraining reads.

  python -m bert_jax.data.prepare --input_files=a.txt,more/*.txt --vocab_file=vocab.txt \
      --data_dir=DIR [--lowercase=false] [--validation_fraction=0.05]

Input: one sentence per line, a blank line between documents (gzip files allowed). Prints a
summary (documents, sentences, tokens, lines skipped or repaired and why, time). Running it again
on unchanged inputs reuses the dataset. Errors a user can fix print one line and exit with 2.
A new vocabulary can be learned first with --train_vocab_size (written to --vocab_file).
"""

import sys

from absl import app, flags, logging

from bert_jax import entry
from bert_jax.errors import UserError

_INPUT_FILES = flags.DEFINE_string("input_files", None, "Comma-separated text files or globs.")
_VOCAB_FILE = flags.DEFINE_string("vocab_file", None, "WordPiece vocab, one token per line.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Directory for the tokenized dataset.")
_LOWERCASE = flags.DEFINE_bool("lowercase", True, "Lower-case and strip accents (uncased BERT).")
_VALIDATION_FRACTION = flags.DEFINE_float(
    "validation_fraction", 0.05, "Share of documents held out for validation."
)
_MAX_LINE_CHARS = flags.DEFINE_integer(
    "max_line_chars", 20_000, "Longer lines are split at a space (and counted)."
)
_TRAIN_VOCAB_SIZE = flags.DEFINE_integer(
    "train_vocab_size", 0, "If > 0: learn a vocab of this size from the inputs into --vocab_file."
)
flags.mark_flags_as_required(["input_files", "vocab_file", "data_dir"])
flags.register_validator(
    "validation_fraction", lambda v: 0 <= v < 1, "--validation_fraction must be in [0, 1)"
)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.ERROR)  # TFDS logs every custom config at WARNING.
    entry.check_output_dir(_DATA_DIR.value, "--data_dir")
    if _TRAIN_VOCAB_SIZE.value > 0:
        entry.check_output_file(_VOCAB_FILE.value, "--vocab_file")
    from bert_jax.data import corpus
    from bert_jax.data.tokenization import WordPieceTokenizer

    try:
        if _TRAIN_VOCAB_SIZE.value > 0:
            files = corpus.resolve_input_files(_INPUT_FILES.value)
            tokenizer = WordPieceTokenizer.train(
                files, _TRAIN_VOCAB_SIZE.value, lowercase=_LOWERCASE.value, show_progress=True
            )
            tokenizer.save_vocab(_VOCAB_FILE.value)
            print(f"vocab: {tokenizer.vocab_size} tokens written to {_VOCAB_FILE.value}")
        builder = corpus.corpus_builder(
            _INPUT_FILES.value,
            _VOCAB_FILE.value,
            data_dir=_DATA_DIR.value,
            lowercase=_LOWERCASE.value,
            validation_fraction=_VALIDATION_FRACTION.value,
            max_line_chars=_MAX_LINE_CHARS.value,
        )
        info = corpus.prepare_corpus(builder)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    state = "built" if info["built_now"] else "already prepared, reused"
    print(f"dataset {state}: {info['dataset_dir']}")
    report = corpus.CorpusReport(
        **{f: info[f] for f in corpus.CorpusReport.__dataclass_fields__ if f in info}
    )
    print(report.summary())


if __name__ == "__main__":
    entry.main(main)
