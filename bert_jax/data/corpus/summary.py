"""What preparing a corpus found and cost: counts of every repair, speed, memory, and the check
that stops a binary or garbage corpus (or a vocabulary that does not fit it) from passing
silently."""

from __future__ import annotations

import dataclasses
import resource
import sys

from bert_jax.errors import UserError

# Above these shares a corpus is not text the vocabulary can read: stop unless told to go on.
MAX_INVALID_UTF8_SHARE = 0.01  # of input bytes
MAX_UNKNOWN_SHARE = 0.05  # of tokens

_COUNTS = (
    "files",
    "bytes",
    "lines",
    "documents",
    "sentences",
    "tokens",
    "unknown_tokens",
    "one_sentence_documents",
    "invalid_utf8_replaced",
    "invalid_utf8_bytes",
    "long_lines_split",
    "lines_without_tokens",
    "segmenter_words",
    "segmenter_words_not_found",
    "train_documents",
    "validation_documents",
)


@dataclasses.dataclass
class CorpusReport:
    """What reading the corpus found; every skipped or repaired line is counted here."""

    files: int = 0
    empty_files: list[str] = dataclasses.field(default_factory=list)
    bytes: int = 0
    lines: int = 0
    documents: int = 0
    sentences: int = 0
    tokens: int = 0
    unknown_tokens: int = 0
    one_sentence_documents: int = 0
    invalid_utf8_replaced: int = 0
    invalid_utf8_bytes: int = 0
    long_lines_split: int = 0
    lines_without_tokens: int = 0
    segmenter_words: int = 0
    segmenter_words_not_found: int = 0
    train_documents: int = 0
    validation_documents: int = 0
    word_segmenter: str = "none"
    workers: int = 1
    seconds: float = 0.0
    peak_rss_bytes: int = 0  # main process plus every worker process at its peak (0: unknown)

    def add(self, other: CorpusReport) -> None:
        """Adds the counts of `other` (a unit's) to these."""
        for name in _COUNTS:
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> CorpusReport:
        return cls(**{k: v for k, v in values.items() if k in cls.__dataclass_fields__})

    def summary(self) -> str:
        seconds = max(self.seconds, 1e-9)
        rows = [
            ("files", f"{self.files:,} ({len(self.empty_files)} empty), {_size(self.bytes)}"),
            ("documents", f"{self.documents:,} ({self.one_sentence_documents:,} of one sentence)"),
            ("  train / validation", f"{self.train_documents:,} / {self.validation_documents:,}"),
            ("sentences", f"{self.sentences:,}"),
            ("tokens", f"{self.tokens:,} ({self.unknown_tokens:,} [UNK])"),
        ]
        if self.word_segmenter != "none":
            missed = self.segmenter_words_not_found
            rows.append(
                (
                    "whole words",
                    f"{self.segmenter_words:,} from {self.word_segmenter}"
                    + (f" ({missed:,} not found in the text)" if missed else ""),
                )
            )
        rows += [
            ("invalid UTF-8 replaced", f"{self.invalid_utf8_replaced:,} byte sequences (U+FFFD)"),
            ("long lines split", f"{self.long_lines_split:,}"),
            ("lines skipped", f"{self.lines_without_tokens:,} (no tokens after normalisation)"),
            (
                "time",
                f"{self.seconds:.1f} s ({_size(self.bytes / seconds)}/s, "
                f"{self.tokens / seconds:,.0f} tokens/s, {_workers(self.workers)})",
            ),
        ]
        if self.peak_rss_bytes:
            rows.append(("peak memory", f"{_size(self.peak_rss_bytes)} (all processes)"))
        lines = [f"  {name:<24}{value}" for name, value in rows]
        lines += [f"  empty file: {path}" for path in self.empty_files]
        return "\n".join(lines)

    def dirty_reasons(self) -> list[str]:
        """Why this corpus does not look like text the vocabulary reads (empty if it does)."""
        reasons = []
        invalid = self.invalid_utf8_bytes / max(self.bytes, 1)
        if invalid > MAX_INVALID_UTF8_SHARE:
            reasons.append(
                f"{invalid:.1%} of the bytes are not UTF-8 (limit {MAX_INVALID_UTF8_SHARE:.0%})"
            )
        unknown = self.unknown_tokens / max(self.tokens, 1)
        if unknown > MAX_UNKNOWN_SHARE:
            reasons.append(f"{unknown:.1%} of the tokens are [UNK] (limit {MAX_UNKNOWN_SHARE:.0%})")
        return reasons

    def check_clean(self, allow_dirty: bool, insist: str) -> None:
        """UserError if the corpus looks like binary data or the wrong vocabulary, unless
        `allow_dirty`; then a loud warning. `insist` names the flag that allows it."""
        reasons = self.dirty_reasons()
        if not reasons:
            return
        what = "; ".join(reasons)
        if not allow_dirty:
            raise UserError(
                f"the corpus does not look like text this vocabulary reads: {what}. Check the "
                f"input files (binary? another encoding?) and the vocabulary, or pass {insist} "
                "to use it anyway"
            )
        print(f"WARNING: dirty corpus kept ({insist}): {what}", file=sys.stderr)


def _size(count: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if count < 1000 or unit == "TB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1000
    raise AssertionError


def _workers(count: int) -> str:
    return "on Beam" if count == 0 else f"{count} worker{'s' if count != 1 else ''}"


def peak_rss_bytes() -> int:
    """This process's peak resident memory."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def describe(info: dict) -> str:
    """The summary `prepare` and pretraining print: where the dataset is, then the counts."""
    state = "built" if info.get("built_now") else "already prepared, reused"
    return f"dataset {state}: {info['dataset_dir']}\n{CorpusReport.from_dict(info).summary()}"
