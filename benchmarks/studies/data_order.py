r"""Pretraining-data order and example throughput, one code tree or several side by side.

  python benchmarks/studies/data_order.py                        # this tree
  python benchmarks/studies/data_order.py --trees=/tmp/old,.     # an older checkout beside this one

Two tables, over the KJV corpus (../shared/data/corpora/kjv.txt with bert-base-uncased, or the
bundled KJV and its vocabulary when ../shared/data is absent), batches of 256 at 128:

  * throughput: dynamic masking, plain and whole-word, over --epochs epochs (after one untimed
    epoch; the median of three passes): examples/s and tokens/s per wall second and per CPU
    second of the process (all its threads);
  * data order, on a tagged copy of the corpus -- the same documents, sentences and sentence
    lengths, but every token of document d is the word "d<d>" -- so each row's documents are
    read off its tokens exactly: distinct documents of segment A per batch (mean and minimum),
    random-next rows whose B comes from A's own document, and the random-next share, over two
    epochs (the first epoch's final chunk is then never the dropped remainder). Cases: the
    default settings; the first 1153 chapters (64 x 18 + 1: a one-document final chunk where
    examples are built per 64-document chunk); the smallest setting (documents_per_chunk=1, or
    documents_per_window=2 in trees that have windows).

Each tree runs in its own process (PYTHONPATH=<tree>); with several trees and --repeats > 1 the
runs alternate (A B A B ...), and the table shows the median. Wall time on a shared machine is
noisy: compare the CPU columns.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared" / "data"
BATCH, LENGTH = 256, 128


def _corpus_and_vocab() -> tuple[str, str]:
    if (SHARED / "corpora" / "kjv.txt").exists():
        return str(SHARED / "corpora" / "kjv.txt"), str(
            SHARED / "vocab" / "bert-base-uncased-vocab.txt"
        )
    from bert_jax.data import input_pipeline

    return input_pipeline.BUNDLED_CORPUS, input_pipeline.BUNDLED_VOCAB


def _config(input_files: str, vocab: str, data_dir: str, **overrides):
    """A data config for these files (prepared on first use): one epoch holds every document."""
    from bert_jax.data import input_pipeline
    from bert_jax.pretraining.config import data_config_dict

    config = data_config_dict()
    config.update(
        input_files=input_files,
        vocab_file=vocab,
        data_dir=data_dir,
        validation_fraction=0.0,
        show_progress=False,
        max_seq_length=LENGTH,
        max_predictions_per_seq=20,
    )
    config.update(overrides)
    input_pipeline.prepare_data(config)
    return config


def _batches(config, num_epochs: int):
    from bert_jax.data import input_pipeline

    return input_pipeline.make_pretraining_iterator(
        config, split="train", global_batch_size=BATCH, seed=0, num_epochs=num_epochs
    )


def throughput(scratch: str, epochs: int, runs: int = 3) -> dict:
    """Dynamic masking, plain and whole-word: `runs` timed passes of `epochs` epochs after one
    untimed epoch (the process warms up), each over a new iterator; medians."""
    corpus, vocab = _corpus_and_vocab()
    results = {}
    for whole_word in (False, True):
        config = _config(corpus, vocab, scratch, whole_word_masking=whole_word)
        sum(1 for _ in _batches(config, 1))  # warm-up
        times = []
        for _ in range(runs):
            wall, cpu = time.perf_counter(), time.process_time()
            examples = tokens = 0
            for batch in _batches(config, epochs):
                examples += len(batch["input_ids"])
                tokens += int(batch["attention_mask"].sum())
            times.append((time.perf_counter() - wall, time.process_time() - cpu))
        results["whole_word" if whole_word else "plain"] = {
            "examples": examples,
            "tokens": tokens,
            "wall": statistics.median(t[0] for t in times),
            "cpu": statistics.median(t[1] for t in times),
        }
    return results


def write_tagged_corpus(directory, sentence_lengths: list) -> tuple[str, str]:
    """A corpus whose document d has sentences of sentence_lengths[d] tokens, every token the
    word "d<d>", and its vocabulary (id of "d<d>": d + 5); returns (text path, vocab path)."""
    text = pathlib.Path(directory, "tagged.txt")
    with open(text, "w") as f:
        for d, lengths in enumerate(sentence_lengths):
            f.writelines(" ".join([f"d{d}"] * int(n)) + "\n" for n in lengths)
            f.write("\n")
    vocab = pathlib.Path(directory, "tagged_vocab.txt")
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab.write_text(
        "".join(w + "\n" for w in words + [f"d{d}" for d in range(len(sentence_lengths))])
    )
    return str(text), str(vocab)


def row_documents(batch: dict) -> tuple[np.ndarray, np.ndarray]:
    """Documents of segments A and B per row of a tagged-corpus batch (masks undone)."""
    ids = _original_ids(batch)
    first_sep = np.argmax(ids == 3, axis=1)  # A starts at position 1, B after the first [SEP]
    return ids[:, 1] - 5, ids[np.arange(len(ids)), first_sep + 1] - 5


def _original_ids(batch: dict) -> np.ndarray:
    """input_ids with the masked positions restored (the library's helper where it has one)."""
    from bert_jax.data import examples as pretraining

    if hasattr(pretraining, "original_ids"):
        return pretraining.original_ids(batch)
    ids = batch["input_ids"].copy()  # older trees, for --trees comparisons
    rows, cols = np.nonzero(batch["masked_lm_weights"])
    ids[rows, batch["masked_lm_positions"][rows, cols]] = batch["masked_lm_ids"][rows, cols]
    return ids


def order_statistics(batches) -> dict:
    """Documents per batch, same-document random-next rows and the random-next share."""
    per_batch, same, random_next, rows = [], 0, 0, 0
    for batch in batches:
        a_doc, b_doc = row_documents(batch)
        label = batch["next_sentence_labels"] == 1
        per_batch.append(len(np.unique(a_doc)))
        same += int(np.sum(label & (a_doc == b_doc)))
        random_next += int(label.sum())
        rows += len(label)
    return {
        "batches": len(per_batch),
        "documents_per_batch": per_batch,
        "same_document_random_next": same,
        "random_next_fraction": random_next / rows,
    }


def _kjv_shape() -> list:
    """Sentence lengths (tokens) of each KJV chapter."""
    from bert_jax.data import corpus
    from bert_jax.data.tokenization import WordPieceTokenizer

    text, vocab = _corpus_and_vocab()
    tokenizer = WordPieceTokenizer.from_vocab(vocab)
    documents, _ = corpus.read_corpus([text], tokenizer, show_progress=False)
    sizes = np.asarray(documents.document_sizes)
    return np.split(np.asarray(documents.sentence_lengths), np.cumsum(sizes)[:-1])


# (name, documents, documents_per_window or _per_chunk, whichever the tree has; None: default)
ORDER_CASES = (
    ("default", None, None),
    ("1153 docs", 1153, None),  # 18 chunks of 64 and a final chunk of one document
    ("smallest", None, 1),  # one-document chunks; windows of 2 documents
)


def data_order(scratch: str) -> dict:
    shape = _kjv_shape()
    results = {}
    for name, documents, size in ORDER_CASES:
        directory = pathlib.Path(scratch, name.replace(" ", "_"))
        directory.mkdir()
        text, vocab = write_tagged_corpus(directory, shape[:documents])
        config = _config(text, vocab, str(directory))
        key = "documents_per_window" if "documents_per_window" in config else "documents_per_chunk"
        if size is not None:
            config[key] = max(size, 2) if key == "documents_per_window" else size
        stats = order_statistics(_batches(config, 2))
        per_batch = stats.pop("documents_per_batch")
        results[name] = {
            "documents": len(shape[:documents]),
            "setting": f"{key.removeprefix('documents_per_')}={config[key]}",
            "documents_per_batch_mean": float(np.mean(per_batch)),
            "documents_per_batch_min": int(np.min(per_batch)),
            **stats,
        }
    return results


def measure(epochs: int) -> dict:
    with tempfile.TemporaryDirectory() as scratch:
        return {"throughput": throughput(scratch, epochs), "order": data_order(scratch)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trees", default=str(REPO), help="Comma-separated code trees.")
    parser.add_argument("--repeats", type=int, default=1, help="Alternating runs per tree.")
    parser.add_argument("--epochs", type=int, default=4, help="Epochs of the throughput runs.")
    parser.add_argument("--json", help="Also write the results to this file.")
    parser.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:  # one tree, in this process
        print(json.dumps(measure(args.epochs)))
        return
    trees = [os.path.abspath(t) for t in args.trees.split(",")]
    runs: dict[str, list[dict]] = {t: [] for t in trees}
    for repeat in range(args.repeats):
        for tree in trees if repeat % 2 == 0 else trees[::-1]:
            env = dict(os.environ, PYTHONPATH=tree)
            command = [sys.executable, __file__, "--measure", f"--epochs={args.epochs}"]
            done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
            if done.returncode:
                sys.exit(f"{tree} failed:\n{done.stderr[-3000:]}")
            runs[tree].append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(f"{tree}: run {repeat + 1} done", file=sys.stderr, flush=True)
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}\n")

    print(
        f"throughput: dynamic masking, kjv, batch {BATCH} x {LENGTH}, {args.epochs} epochs, ",
        end="",
    )
    print(f"median of 3 passes x {args.repeats} process(es)")
    print(f"{'tree':<28}{'masking':<12}{'examples':>9}{'ex/s':>9}{'ex/CPU-s':>10}", end="")
    print(f"{'Mtok/s':>8}{'Mtok/CPU-s':>11}")
    for tree in trees:
        for kind in ("plain", "whole_word"):
            got = [r["throughput"][kind] for r in runs[tree]]
            wall = statistics.median(g["wall"] for g in got)
            cpu = statistics.median(g["cpu"] for g in got)
            examples, tokens = got[0]["examples"], got[0]["tokens"]
            print(
                f"{_short(tree):<28}{kind:<12}{examples:>9,}{examples / wall:>9,.0f}"
                f"{examples / cpu:>10,.0f}{tokens / wall / 1e6:>8.2f}{tokens / cpu / 1e6:>11.2f}"
            )
    order = {tree: runs[tree][0]["order"] for tree in trees}
    print(f"\ndata order: tagged kjv, batch {BATCH} x {LENGTH}, two epochs")
    print(f"{'tree':<28}{'case':<11}{'docs':>6}{'setting':>12}{'docs/batch':>11}{'min':>5}", end="")
    print(f"{'same-doc random B':>18}{'random share':>13}")
    for tree in trees:
        for name, _, _ in ORDER_CASES:
            r = order[tree][name]
            print(
                f"{_short(tree):<28}{name:<11}{r['documents']:>6}{r['setting']:>12}"
                f"{r['documents_per_batch_mean']:>11.1f}{r['documents_per_batch_min']:>5}"
                f"{r['same_document_random_next']:>18,}{r['random_next_fraction']:>13.3f}"
            )
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(runs, indent=2))


def _short(tree: str) -> str:
    return tree if len(tree) <= 27 else "..." + tree[-24:]


if __name__ == "__main__":
    main()
