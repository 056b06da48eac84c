"""The prepared dataset: its name, building it (streaming, N workers or Beam), finding and opening
it again without the raw text.

DATA_DIR/pretraining_corpus/<stem>_<digest>/2.0.0/ holds the shards, TFDS metadata, vocab.txt and
corpus.json (written last); the digest covers the inputs' paths, sizes and mtimes and the
settings that decide the content. `prepare`, `open_prepared`, `dataset_dir`, `list_prepared`.
See docs/design/corpus_prep.md, "Layout, naming and finding it again".
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import re
import time
import uuid
from collections.abc import Sequence

from etils import epath

from bert_jax.data.corpus import beam, workers
from bert_jax.data.corpus.reader import (
    InputFile,
    check_not_empty,
    plan_units,
    resolve_input_files,
    split_patterns,
    stat_files,
)
from bert_jax.data.corpus.summary import CorpusReport
from bert_jax.data.corpus.words import load_segmenter, segmenter_id
from bert_jax.data.corpus.writer import (
    BUILDER_NAME,
    VERSION,
    UnitTask,
    move_last_document,
    write_metadata,
)
from bert_jax.data.json_tokenizer import is_tokenizer_json
from bert_jax.data.tokenization import WordPieceTokenizer, load_tokenizer_file
from bert_jax.errors import UserError
from bert_jax.paths import as_path, is_remote, resolved

FORMAT_VERSION = 2  # bumped whenever the stored format or the reading rules change
META_FILE = "corpus.json"
VOCAB_FILE = "vocab.txt"
TOKENIZER_FILE = "tokenizer.json"  # instead of vocab.txt, for a dataset prepared with one


@dataclasses.dataclass(frozen=True)
class CorpusSettings:
    """Everything besides the input files that decides the prepared data."""

    tokenizer_fingerprint: str
    lowercase: bool
    validation_fraction: float
    max_line_chars: int
    word_segmenter: str  # "none" or spec@version


def corpus_settings(
    vocab_file: str,
    *,
    lowercase: bool = True,
    validation_fraction: float = 0.05,
    max_line_chars: int = 20_000,
    word_segmenter: str = "none",
) -> tuple[CorpusSettings, WordPieceTokenizer]:
    if not 0 <= validation_fraction < 1:
        raise UserError(f"validation_fraction must be in [0, 1), got {validation_fraction}")
    if max_line_chars < 1:
        raise UserError(f"max_line_chars must be >= 1, got {max_line_chars}")
    tokenizer = load_tokenizer_file(vocab_file, lowercase=lowercase)
    settings = CorpusSettings(
        tokenizer.fingerprint(),
        bool(lowercase),
        float(validation_fraction),
        int(max_line_chars),
        segmenter_id(word_segmenter),
    )
    return settings, tokenizer


@dataclasses.dataclass(frozen=True)
class CorpusSpec:
    """What a prepared corpus is made from; `name` fingerprints all of it."""

    patterns: tuple[str, ...]
    files: tuple[InputFile, ...]
    settings: CorpusSettings
    word_segmenter: str  # as the user wrote it
    vocab_file: str
    tokenizer: WordPieceTokenizer = dataclasses.field(compare=False, repr=False)

    @property
    def name(self) -> str:
        key = [FORMAT_VERSION, [dataclasses.astuple(f) for f in self.files]]
        key.append(dataclasses.asdict(self.settings))
        digest = hashlib.sha256(json.dumps(key).encode()).hexdigest()[:16]
        stem = os.path.basename(self.files[0].path).split(".")[0].lower()
        stem = re.sub(r"[^a-z0-9]+", "_", stem).strip("_")
        return f"{stem or 'corpus'}_{digest}"


def corpus_spec(
    input_files: str | Sequence[str],
    vocab_file: str,
    *,
    lowercase: bool = True,
    validation_fraction: float = 0.05,
    max_line_chars: int = 20_000,
    word_segmenter: str = "none",
) -> CorpusSpec:
    """Resolves the inputs (UserError if one is missing) and the settings; reads no text."""
    settings, tokenizer = corpus_settings(
        vocab_file,
        lowercase=lowercase,
        validation_fraction=validation_fraction,
        max_line_chars=max_line_chars,
        word_segmenter=word_segmenter,
    )
    files = tuple(stat_files(resolve_input_files(input_files)))
    return CorpusSpec(
        tuple(split_patterns(input_files)),
        files,
        settings,
        word_segmenter.strip(),
        os.path.abspath(os.path.expanduser(vocab_file)),
        tokenizer,
    )


def dataset_dir(data_dir: str, name: str) -> epath.Path:
    return as_path(data_dir) / BUILDER_NAME / name / VERSION


class PreparedCorpus:
    """A complete prepared dataset; reading it needs nothing but its directory."""

    def __init__(self, directory: str, meta: dict, built_now: bool = False):
        self.directory, self.meta, self.built_now = str(directory), meta, built_now

    @property
    def report(self) -> dict:
        return self.meta["report"]

    @property
    def examples(self) -> dict[str, int]:
        return self.meta["examples"]

    @property
    def settings(self) -> CorpusSettings:
        return CorpusSettings(**self.meta["settings"])

    @property
    def word_boundaries(self) -> bool:
        """True when documents carry `word_starts` (prepared with a word segmenter)."""
        return self.meta["word_boundaries"]

    def info(self) -> dict:
        """The report plus where the data is: what `prepare` and pretraining print."""
        return {
            **self.report,
            "examples": dict(self.examples),
            "built_now": self.built_now,
            "dataset_dir": self.directory,
            "name": self.meta["name"],
            "tokenizer_fingerprint": self.settings.tokenizer_fingerprint,
            "vocab_size": self.meta["vocab_size"],
            "word_boundaries": self.word_boundaries,
        }

    def tokenizer(self) -> WordPieceTokenizer:
        """The vocabulary the documents were tokenized with (stored with them): vocab.txt, or
        the tokenizer.json it was prepared with."""
        path = os.path.join(_local_mirror(self.directory), TOKENIZER_FILE)
        if not os.path.isfile(path):
            path = os.path.join(_local_mirror(self.directory), VOCAB_FILE)
        return load_tokenizer_file(path, lowercase=self.settings.lowercase)

    def data_source(self, split: str):
        """Random access to one split's documents (dicts of numpy arrays), via TFDS."""
        return _builder(_local_mirror(self.directory)).as_data_source(split)

    def __repr__(self) -> str:
        return f"PreparedCorpus({self.directory!r})"


@functools.lru_cache(maxsize=16)
def _builder(local_dir: str):
    import tensorflow_datasets as tfds

    return tfds.builder_from_directory(local_dir)


@functools.lru_cache(maxsize=16)
def _local_mirror(directory: str) -> str:
    """A local copy of a remote dataset (ArrayRecord reads local files only), made once per
    host under $BERT_JAX_DATA_CACHE (default ~/.cache/bert_jax/mirror); a local one as is."""
    if not is_remote(directory):
        return directory
    root = os.path.expanduser(os.environ.get("BERT_JAX_DATA_CACHE", "~/.cache/bert_jax/mirror"))
    local = os.path.join(root, directory.replace("://", "/"))
    os.makedirs(local, exist_ok=True)
    for remote in epath.Path(directory).iterdir():
        target = os.path.join(local, remote.name)
        size = remote.stat().length
        if os.path.exists(target) and os.path.getsize(target) == size:
            continue
        partial = f"{target}.{uuid.uuid4().hex}.partial"
        with remote.open("rb") as src, open(partial, "wb") as dst:
            while chunk := src.read(1 << 24):
                dst.write(chunk)
        os.replace(partial, target)
    return local


_META: dict[str, dict] = {}  # corpus.json of every dataset opened so far (they never change)


def _read_meta(directory: str) -> dict | None:
    path = epath.Path(directory) / META_FILE
    if not path.exists():  # one stat: a deleted dataset is noticed
        _META.pop(directory, None)
        return None
    if directory not in _META:
        _META[directory] = json.loads(path.read_text())
    return _META[directory]


def open_prepared(directory: str) -> PreparedCorpus:
    """The prepared dataset in `directory` (what `prepare` printed); UserError if there is none."""
    directory = resolved(directory).rstrip("/")
    meta = _read_meta(directory)
    if meta is None:
        raise UserError(
            f"no prepared dataset in {directory} (expected {META_FILE} there: the directory "
            "`python -m bert_jax.data.prepare` prints)"
        )
    if meta.get("format_version") != FORMAT_VERSION:
        raise UserError(
            f"{directory} was prepared by another version of bert_jax (format "
            f"{meta.get('format_version')}, this one reads {FORMAT_VERSION}): prepare it again"
        )
    return PreparedCorpus(directory, meta)


def list_prepared(data_dir: str) -> list[PreparedCorpus]:
    """Every complete dataset of this format under data_dir, sorted by directory."""
    root = as_path(data_dir) / BUILDER_NAME
    if not root.exists():
        return []
    found = sorted(os.fspath(p.parent) for p in root.glob(f"*/{VERSION}/{META_FILE}"))
    return [open_prepared(directory) for directory in found]


def prepare(
    spec: CorpusSpec,
    data_dir: str,
    *,
    num_workers: int = 0,
    beam_pipeline_options: str = "",
    allow_dirty_corpus: bool = False,
    insist: str = "--allow_dirty_corpus",
    show_progress: bool = True,
    unit_bytes: int | None = None,
) -> PreparedCorpus:
    """Builds the dataset for `spec` under data_dir unless a complete copy exists.

    Streams: each unit is tokenized and written as it is read, in `num_workers` processes (0: all
    cores) or on a Beam runner. UserError for an empty corpus, and for a dirty one unless
    `allow_dirty_corpus` (`insist` names the flag that says so).
    """
    if num_workers < 0:
        raise UserError(f"num_workers must be >= 0 (0: one per core), got {num_workers}")
    final = dataset_dir(data_dir, spec.name)
    if (final / META_FILE).exists():
        return open_prepared(os.fspath(final))
    load_segmenter(spec.word_segmenter)  # a bad --word_segmenter fails here, not in a worker
    start = time.perf_counter()
    units = plan_units(spec.files, unit_bytes)
    # Locally: written beside the final directory, renamed into place when complete. On gs://
    # (where a rename copies every object): written in place, corpus.json last; the shards are
    # deterministic, so two runs racing write the same bytes.
    in_place = is_remote(os.fspath(final))
    scratch = final if in_place else final.parent / f"{VERSION}.incomplete-{uuid.uuid4().hex[:8]}"
    try:
        if in_place and final.exists():
            final.rmtree()  # an incomplete leftover
        scratch.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"cannot write the dataset under data_dir {data_dir}: {err}") from None
    is_json = is_tokenizer_json(spec.vocab_file)
    task = UnitTask(
        vocab=() if is_json else tuple(spec.tokenizer.vocab),
        lowercase=spec.tokenizer.lowercase,
        tokenizer_json=spec.tokenizer.__getstate__()["text"] if is_json else "",
        max_line_chars=spec.settings.max_line_chars,
        validation_fraction=spec.settings.validation_fraction,
        word_segmenter=spec.word_segmenter,
        output_dir=os.fspath(scratch),
        num_units=len(units),
    )
    num_workers = min(num_workers or workers.default_workers(), len(units))
    runner = f"Beam ({beam_pipeline_options})" if beam_pipeline_options else "local"
    if show_progress:
        how = runner if beam_pipeline_options else f"{num_workers} worker(s)"
        size = sum(f.size for f in spec.files) / 1e6
        print(f"preparing {size:,.1f} MB in {len(spec.files)} file(s) into {final}: {how}")
    try:
        if beam_pipeline_options:
            results, peak = beam.run_units(task, units, beam_pipeline_options), 0
        else:
            results, peak = workers.run_units(task, units, num_workers, show_progress)
        report = _finish(spec, results, scratch)
        report.workers = 0 if beam_pipeline_options else num_workers
        report.seconds, report.peak_rss_bytes = time.perf_counter() - start, peak
        report.check_clean(allow_dirty_corpus, insist)
        meta = _metadata(spec, report, len(units), runner)
        description = f"{len(spec.files)} file(s) from {spec.files[0].path}"
        write_metadata(os.fspath(scratch), results, meta["word_boundaries"], description)
        if is_json:
            spec.tokenizer.save_vocab(scratch / TOKENIZER_FILE)
        else:
            vocab = "".join(t + "\n" for t in spec.tokenizer.vocab)
            (scratch / VOCAB_FILE).write_text(vocab, encoding="utf-8")
        (scratch / META_FILE).write_text(json.dumps(meta, indent=1))  # complete from here on
        if not in_place:
            _move_into_place(scratch, final)
    except BaseException:
        if scratch.exists():
            scratch.rmtree()
        raise
    corpus = open_prepared(os.fspath(final))
    corpus.built_now = True
    return corpus


def _metadata(spec: CorpusSpec, report: CorpusReport, units: int, runner: str) -> dict:
    """corpus.json: what the dataset was made from, and its counts."""
    examples = {"train": report.train_documents, "validation": report.validation_documents}
    return {
        "format_version": FORMAT_VERSION,
        "name": spec.name,
        "input_patterns": list(spec.patterns),
        "input_files": [dataclasses.asdict(f) for f in spec.files],
        "settings": dataclasses.asdict(spec.settings),
        "vocab_file": spec.vocab_file,
        "vocab_size": spec.tokenizer.vocab_size,
        "word_boundaries": spec.settings.word_segmenter != "none",
        "units": units,
        "runner": runner,
        "report": report.as_dict(),
        "examples": {split: count for split, count in examples.items() if count},
    }


def _move_into_place(scratch: epath.Path, final: epath.Path) -> None:
    if (final / META_FILE).exists():  # another process prepared it meanwhile
        scratch.rmtree()
        return
    if final.exists():
        final.rmtree()  # an incomplete leftover
    scratch.rename(final)


def _finish(spec: CorpusSpec, results: list[dict], scratch: epath.Path) -> CorpusReport:
    """Sums the units' counts; makes sure both splits exist where they should."""
    documents = sum(r["counts"]["train"] + r["counts"]["validation"] for r in results)
    train = sum(r["counts"]["train"] for r in results)
    if documents and not train:
        move_last_document(os.fspath(scratch), results, "validation", "train")
    elif documents >= 2 and train == documents and spec.settings.validation_fraction > 0:
        move_last_document(os.fspath(scratch), results, "train", "validation")
    report = CorpusReport(files=len(spec.files), word_segmenter=spec.settings.word_segmenter)
    sentences = [0] * len(spec.files)
    for result in results:
        report.add(CorpusReport.from_dict(result["report"]))
        sentences[result["file"]] += result["report"]["sentences"]
    report.empty_files = [f.path for f, n in zip(spec.files, sentences, strict=True) if n == 0]
    check_not_empty(report, [f.path for f in spec.files])
    return report
