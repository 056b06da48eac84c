r"""The character CRF baseline for Chinese NER: what a fine-tuned BERT must beat.

  python -m benchmarks.studies.zh_crf [--train_sentences=8000] [--seed=0] [--workdir=runs/zh_crf]

A linear-chain CRF (python-crfsuite, L-BFGS with L1 + L2) over character features: the
character itself and its neighbours at -2..+2 (unigrams) and the bigrams over that window, plus
whether the character is a CJK ideograph, a digit or punctuation. Trained on
`--train_sentences` seeded random sentences of ../shared/data/zh/ner/train.conll (0 = all
37,657) and scored on the whole dev.conll with bert_jax.finetuning.scores (seqeval's default-mode
chunking; cross-checked against seqeval here when it is installed). Prints entity precision,
recall and F1 per type (PER, LOC, ORG) and overall, and the training time (wall and process CPU;
the machine may be shared). python-crfsuite is a benchmark dependency only.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[2]
SHARED_ZH = REPO.parent / "shared" / "data" / "zh"


def read_sentences(path: pathlib.Path) -> list[tuple[list[str], list[str]]]:
    """(characters, tags) per sentence of a `char<TAB>tag` CoNLL file (bert_jax's reader)."""
    from bert_jax.finetuning.tasks.readers import read_conll

    return [(e.words, e.tags) for e in read_conll(path, labeled=True).examples]


def subsample_conll(source: pathlib.Path, target: pathlib.Path, count: int, seed: int) -> int:
    """`count` seeded random sentences of a CoNLL file (0 = all), in file order; -> count written.

    The end-to-end benchmark trains BERT and the CRF on the file this writes, so both see the
    same rows.
    """
    sentences = read_sentences(source)
    if 0 < count < len(sentences):
        keep = np.sort(np.random.default_rng(seed).choice(len(sentences), count, replace=False))
        sentences = [sentences[i] for i in keep]
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target, "w", encoding="utf-8", newline="\n") as f:
        for chars, tags in sentences:
            f.writelines(f"{c}\t{t}\n" for c, t in zip(chars, tags, strict=True))
            f.write("\n")
    return len(sentences)


def _kind(char: str) -> str:
    if "\u4e00" <= char <= "\u9fff" or "\u3400" <= char <= "\u4dbf":
        return "cjk"
    if char.isdigit():
        return "digit"
    if char.isalpha():
        return "alpha"
    return "other"


def char_features(chars: list[str]) -> list[list[str]]:
    """crfsuite feature strings per position: unigrams at -2..+2, bigrams within that window."""
    padded = ["<s2>", "<s1>", *chars, "</s1>", "</s2>"]
    features = []
    for i in range(len(chars)):
        window = padded[i : i + 5]  # positions -2..+2
        row = ["bias", f"kind={_kind(chars[i])}"]
        row += [f"u{o}={window[o + 2]}" for o in range(-2, 3)]
        row += [f"b{o}={window[o + 2]}{window[o + 3]}" for o in range(-2, 2)]
        features.append(row)
    return features


def train_crf(sentences, model_path: pathlib.Path, c1: float, c2: float, iterations: int):
    import pycrfsuite

    trainer = pycrfsuite.Trainer(verbose=False)
    for chars, tags in sentences:
        trainer.append(char_features(chars), tags)
    trainer.set_params(
        {"c1": c1, "c2": c2, "max_iterations": iterations, "feature.possible_transitions": True}
    )
    model_path.parent.mkdir(parents=True, exist_ok=True)
    trainer.train(str(model_path))
    tagger = pycrfsuite.Tagger()
    tagger.open(str(model_path))
    return tagger


def entity_scores(gold: list[list[str]], predicted: list[list[str]]) -> dict:
    """{"overall": {precision, recall, f1}, "PER": {...}, ...} from bert_jax's metrics."""
    from bert_jax.finetuning.scores import entity_scores_by_type

    return entity_scores_by_type(gold, predicted)


def seqeval_scores(gold, predicted) -> dict | None:
    """The same table from seqeval (default mode), or None when seqeval is not installed."""
    try:
        from seqeval.metrics import classification_report
    except ImportError:
        return None
    report = classification_report(gold, predicted, output_dict=True, zero_division=0)
    table = {
        name: {k: float(row[k]) for k in ("precision", "recall", "f1-score")}
        for name, row in report.items()
        if name not in ("macro avg", "weighted avg", "micro avg")
    }
    table = {n: {"precision": r["precision"], "recall": r["recall"], "f1": r["f1-score"]}
             for n, r in table.items()}  # fmt: skip
    micro = report["micro avg"]
    table["overall"] = {
        "precision": float(micro["precision"]),
        "recall": float(micro["recall"]),
        "f1": float(micro["f1-score"]),
    }
    return table


def run_crf(train_file: pathlib.Path, dev_file: pathlib.Path, workdir: pathlib.Path,
            c1: float = 0.05, c2: float = 0.01, iterations: int = 100) -> dict:  # fmt: skip
    """Trains on train_file, tags dev_file; -> scores, seqeval's, timings, sentence counts."""
    train = read_sentences(train_file)
    dev = read_sentences(dev_file)
    wall, cpu = time.perf_counter(), time.process_time()
    tagger = train_crf(train, workdir / "crf.model", c1, c2, iterations)
    train_wall, train_cpu = time.perf_counter() - wall, time.process_time() - cpu
    predicted = [tagger.tag(char_features(chars)) for chars, _ in dev]
    gold = [tags for _, tags in dev]
    return {
        "train_sentences": len(train),
        "dev_sentences": len(dev),
        "scores": entity_scores(gold, predicted),
        "seqeval": seqeval_scores(gold, predicted),
        "train_seconds": train_wall,
        "train_cpu_seconds": train_cpu,
    }


def format_scores(scores: dict) -> str:
    lines = ["| type | precision | recall | F1 |", "|---|---|---|---|"]
    for name in [*sorted(k for k in scores if k != "overall"), "overall"]:
        row = scores[name]
        lines.append(f"| {name} | {row['precision']:.4f} | {row['recall']:.4f} | {row['f1']:.4f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", default="runs/zh_crf")
    parser.add_argument("--train_sentences", type=int, default=8000, help="0 = all")
    parser.add_argument("--seed", type=int, default=0, help="which training sentences")
    parser.add_argument("--c1", type=float, default=0.05)
    parser.add_argument("--c2", type=float, default=0.01)
    parser.add_argument("--iterations", type=int, default=100)
    args = parser.parse_args(argv)
    if not SHARED_ZH.is_dir():
        print(
            f"{SHARED_ZH} not found: this benchmark needs the shared Chinese data", file=sys.stderr
        )
        return 2
    workdir = pathlib.Path(args.workdir)
    train = workdir / "ner_train.conll"
    subsample_conll(SHARED_ZH / "ner" / "train.conll", train, args.train_sentences, args.seed)
    result = run_crf(train, SHARED_ZH / "ner" / "dev.conll", workdir, args.c1, args.c2,
                     args.iterations)  # fmt: skip
    result["settings"] = vars(args)
    (workdir / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"character CRF, {result['train_sentences']} training sentences, dev "
        f"{result['dev_sentences']} sentences; trained in {result['train_seconds']:.1f} s wall, "
        f"{result['train_cpu_seconds']:.1f} s CPU"
    )
    print(format_scores(result["scores"]))
    if result["seqeval"] is not None:
        same = all(
            abs(result["seqeval"][k]["f1"] - result["scores"][k]["f1"]) < 1e-9
            for k in result["scores"]
        )
        print(f"seqeval agrees on every F1: {same}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
