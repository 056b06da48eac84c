r"""Writes the multi-label and sentence-embedding TSVs docs/tasks.md trains on, from ../shared/data.

  python -m benchmarks.studies.task_kinds_data --data ../shared/data --out runs/task_kinds_data

multilabel/{train,dev}.tsv: `sentence<TAB>labels`, a WordNet lemma and the set of its supersenses
(`|`-joined), split by lemma. embedding/{train,dev}.tsv: `sentence1<TAB>sentence2`, a gloss and
its synset's example sentence, from tasks/qa. See docs/tasks.md for how and why.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import pathlib

SPLITS = ("train", "dev", "test")


def _dev_lemma(lemma: str) -> bool:
    """One lemma in ten, by a stable hash: the dev split (no lemma in two splits)."""
    return int(hashlib.md5(lemma.encode()).hexdigest(), 16) % 10 == 0


def supersense_sets(folder: pathlib.Path) -> dict[str, set[str]]:
    """lemma -> its supersenses, over all synsets whose first word it is (all three splits)."""
    sets = collections.defaultdict(set)
    for split in SPLITS:
        lines = (folder / f"{split}.tsv").read_text(encoding="utf-8").splitlines()
        for line in lines[1:]:
            sentence, label = line.split("\t")
            sets[sentence.split(": ", 1)[0]].add(label)
    return sets


def gloss_pairs(path: pathlib.Path) -> list[tuple[str, str]]:
    """(gloss, example sentence) for every question of a tasks/qa file, without repeats."""
    pairs = []
    for article in json.loads(path.read_text(encoding="utf-8"))["data"]:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                gloss = qa["question"].removeprefix("Which word means: ").removesuffix("?")
                pairs.append((gloss, paragraph["context"]))
    return list(dict.fromkeys(pairs))


def _write(path: pathlib.Path, header: str, rows, limit: int = 0) -> int:
    """The rows (every k-th, to at most `limit` when > 0) under a header line."""
    if limit and len(rows) > limit:
        rows = rows[:: -(-len(rows) // limit)]
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [header] + ["\t".join(row) for row in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return len(lines) - 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data")
    parser.add_argument("--out", default="runs/task_kinds_data")
    parser.add_argument("--max_dev", type=int, default=0, help="dev rows kept (every k-th); 0: all")
    args = parser.parse_args()
    data, out = pathlib.Path(args.data), pathlib.Path(args.out)
    sets = supersense_sets(data / "tasks" / "supersense")
    for split, keep in (("train", False), ("dev", True)):
        rows = [(lemma, "|".join(sorted(sets[lemma]))) for lemma in sorted(sets)]
        rows = [row for row in rows if _dev_lemma(row[0]) == keep]
        limit = args.max_dev if split == "dev" else 0
        n = _write(out / "multilabel" / f"{split}.tsv", "sentence\tlabels", rows, limit)
        print(f"multilabel/{split}.tsv: {n} lemmas")
    for split in ("train", "dev"):
        pairs = gloss_pairs(data / "tasks" / "qa" / f"{split}.json")
        limit = args.max_dev if split == "dev" else 0
        n = _write(out / "embedding" / f"{split}.tsv", "sentence1\tsentence2", pairs, limit)
        print(f"embedding/{split}.tsv: {n} pairs")


if __name__ == "__main__":
    main()
