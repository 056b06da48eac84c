"""The `python -m bert_jax.data.prepare` command: its flags, an optional vocabulary learned
from the inputs, then `corpus.prepare` and the summary it prints."""

import sys

from absl import app, flags, logging

from bert_jax import entry
from bert_jax.errors import UserError


def define_flags() -> None:
    """Defines the command's flags: called by its entry module, so importing this module
    for its functions defines none (absl flags are global to the process)."""
    global \
        _INPUT_FILES, \
        _VOCAB_FILE, \
        _DATA_DIR, \
        _LOWERCASE, \
        _VALIDATION_FRACTION, \
        _MAX_LINE_CHARS, \
        _TRAIN_VOCAB_SIZE, \
        _NUM_WORKERS, \
        _WORD_SEGMENTER, \
        _BEAM_PIPELINE_OPTIONS, \
        _ALLOW_DIRTY_CORPUS
    _INPUT_FILES = flags.DEFINE_string("input_files", None, "Comma-separated text files or globs.")
    _VOCAB_FILE = flags.DEFINE_string(
        "vocab_file", None, "WordPiece vocab.txt (one token per line) or a tokenizer.json."
    )
    _DATA_DIR = flags.DEFINE_string("data_dir", None, "Directory for the tokenized dataset.")
    _LOWERCASE = flags.DEFINE_bool(
        "lowercase", True, "Lower-case and strip accents (uncased BERT)."
    )
    _VALIDATION_FRACTION = flags.DEFINE_float(
        "validation_fraction", 0.05, "Share of documents held out for validation."
    )
    _MAX_LINE_CHARS = flags.DEFINE_integer(
        "max_line_chars", 20_000, "Longer lines are split at a space (and counted)."
    )
    _TRAIN_VOCAB_SIZE = flags.DEFINE_integer(
        "train_vocab_size",
        0,
        "If > 0: learn a vocab of this size from the inputs into --vocab_file.",
    )
    _NUM_WORKERS = flags.DEFINE_integer(
        "num_workers",
        0,
        "Tokenizing processes (0: one per core); the dataset does not depend on it.",
    )
    _WORD_SEGMENTER = flags.DEFINE_string(
        "word_segmenter",
        "none",
        "Record whole-word boundaries for whole-word masking: none, jieba (bert_jax[zh]) or "
        "module:callable (a function str -> list[str], e.g. wrapping LTP or pkuseg).",
    )
    _BEAM_PIPELINE_OPTIONS = flags.DEFINE_string(
        "beam_pipeline_options",
        "",
        "Run on Apache Beam (bert_jax[beam]) with these options, e.g. runner=DataflowRunner,"
        "project=P,region=R,temp_location=gs://B/tmp (see docs/pretraining.md).",
    )
    _ALLOW_DIRTY_CORPUS = flags.DEFINE_bool(
        "allow_dirty_corpus",
        False,
        "Keep a corpus with over 1% invalid UTF-8 bytes or over 5% [UNK] tokens (else: an error).",
    )
    flags.mark_flags_as_required(["input_files", "vocab_file", "data_dir"])


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
        spec = corpus.corpus_spec(
            _INPUT_FILES.value,
            _VOCAB_FILE.value,
            lowercase=_LOWERCASE.value,
            validation_fraction=_VALIDATION_FRACTION.value,
            max_line_chars=_MAX_LINE_CHARS.value,
            word_segmenter=_WORD_SEGMENTER.value,
        )
        prepared = corpus.prepare(
            spec,
            _DATA_DIR.value,
            num_workers=_NUM_WORKERS.value,
            beam_pipeline_options=_BEAM_PIPELINE_OPTIONS.value,
            allow_dirty_corpus=_ALLOW_DIRTY_CORPUS.value,
        )
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    print(corpus.describe(prepared.info()))
    print(f"pretrain on it: --config.data.dataset_dir={prepared.directory}")
