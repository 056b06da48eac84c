r"""Packed pretraining: pretraining at 512 on short documents, packed against one example per row.

  python -m benchmarks.studies.pretrain_packing [--workdir /tmp/bert_jax_packing] [--preset mini] \
      [--seq 512] [--rows 24] [--steps 240] [--block 8] [--eval_batches 40]

Corpus: ../shared/data/zh/corpus/pretrain.txt (People's Daily paragraphs and product reviews, a
review per document; --corpus for another), with an 8000-token WordPiece vocabulary learned from
it, as `python -m bert_jax.data.prepare --train_vocab_size=8000` does, both under --workdir.

Two runs of the same model from the same initial parameters and seeds, the same optimizer,
learning rate and schedule, at max_seq_length --seq:
  unpacked  --rows rows per step, one example per row (the google recipe);
  packed    data.packing: rows of up to max_sequences_per_row examples, as many rows per step as
            hold about as many examples (rows / the measured examples per packed row), and as
            many steps as give the same number of real (non-padding) tokens.
Both runs see the same examples in the same windows (packing only places them; see
bert_jax.data.input_pipeline). The steps alternate in blocks of --block unpacked steps and the
matching share of packed steps, so load from other processes hits both alike; each run's first
step (compilation) is timed apart. Batches are built before each block: the times are the train
step's (wall, and the process's CPU time over all threads). Afterwards both models are evaluated
on the same held-out batches (the validation split, one example per row): masked-LM accuracy and
loss, NSP accuracy.

Prints a Markdown table, the ratios (targets: real tokens/s packed >= 1.6x unpacked; held-out MLM
accuracy within 0.5 point), the machine's load, and writes WORKDIR/results.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import shlex
import sys
import time

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[2]
CORPUS = REPO.parent / "shared" / "data" / "zh" / "corpus" / "pretrain.txt"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", default="/tmp/bert_jax_packing")
    p.add_argument("--corpus", default=str(CORPUS))
    p.add_argument("--vocab_size", type=int, default=8000)
    p.add_argument("--preset", default="mini")
    p.add_argument("--seq", type=int, default=512)
    p.add_argument("--rows", type=int, default=24, help="unpacked rows (= examples) per step")
    p.add_argument("--steps", type=int, default=240, help="unpacked steps")
    p.add_argument("--block", type=int, default=8, help="unpacked steps per alternation block")
    p.add_argument("--max_sequences_per_row", type=int, default=16)
    p.add_argument("--learning_rate", type=float, default=5e-4)
    p.add_argument("--warmup_fraction", type=float, default=0.1)
    p.add_argument("--eval_batches", type=int, default=40)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def prepare(args) -> tuple[str, str]:
    """(vocab file, dataset dir): the vocabulary learned and the corpus prepared on first use."""
    from bert_jax.data import input_pipeline
    from bert_jax.data.corpus import resolve_input_files
    from bert_jax.data.tokenization import WordPieceTokenizer

    workdir = pathlib.Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    vocab = workdir / f"vocab_{args.vocab_size}.txt"
    if not vocab.exists():
        tokenizer = WordPieceTokenizer.train(
            resolve_input_files(args.corpus), args.vocab_size, lowercase=True
        )
        tokenizer.save_vocab(str(vocab))
    from bert_jax.pretraining.config import data_config_dict

    config = data_config_dict()
    config.update(input_files=args.corpus, vocab_file=str(vocab), data_dir=str(workdir / "data"))
    return str(vocab), input_pipeline.prepare_data(config)["dataset_dir"]


def make_config(args, vocab: str, dataset_dir: str, packed: bool, rows: int, steps: int):
    from bert_jax.pretraining.config import pretraining_config, vocab_size

    c = pretraining_config(args.preset, vocab_size=vocab_size(vocab), max_position_embeddings=512)
    c.data.update(
        dataset_dir=dataset_dir,
        vocab_file=vocab,
        max_seq_length=args.seq,
        max_predictions_per_seq=round(args.seq * 0.15),  # google's: 20 at 128, 77 at 512
        packing=packed,
        max_sequences_per_row=args.max_sequences_per_row,
        show_progress=False,
    )
    c.update(
        batch_size=rows,
        num_train_steps=steps,
        warmup_steps=max(1, round(args.warmup_fraction * steps)),
        learning_rate=args.learning_rate,
        seed=args.seed,
    )
    c.mesh.data = 1
    return c


def examples_per_row(config, chunks: int = 32) -> tuple[float, float]:
    """(examples per packed row, real tokens per example) over the first chunks of an epoch."""
    from bert_jax.data import input_pipeline

    stream = input_pipeline.make_example_chunks(config.data, split="train", seed=config.seed)
    parts = [stream[i] for i in range(chunks)]
    examples = sum(float(p["next_sentence_weights"].sum()) for p in parts)
    rows = sum(len(p["input_ids"]) for p in parts)
    tokens = sum(float(p["attention_mask"].sum()) for p in parts)
    return examples / rows, tokens / examples


class Run:
    """One training run, stepped a block at a time."""

    def __init__(self, name: str, config, mesh):
        import jax

        from bert_jax.data import input_pipeline
        from bert_jax.pretraining.step import build_pretrainer

        self.name, self.config, self.mesh = name, config, mesh
        with jax.set_mesh(mesh):
            self.trainer = build_pretrainer(config, mesh)
            self.state = self.trainer.init(jax.random.key(config.seed))
        self.rng = jax.random.key(config.seed + 1)
        self.batches = input_pipeline.make_pretraining_iterator(
            config.data, split="train", global_batch_size=config.batch_size, seed=config.seed
        )
        self.step = 0
        self.compile_s = math.nan
        self.wall = self.cpu = 0.0
        self.timed_steps = 0
        self.sums = {"real_tokens": 0.0, "examples": 0.0, "timed_real_tokens": 0.0}

    def run(self, steps: int) -> None:
        import jax

        steps = min(steps, self.config.num_train_steps - self.step)
        if steps <= 0:
            return
        batches = [self.trainer.shard_batch(next(self.batches)) for _ in range(steps)]
        with jax.set_mesh(self.mesh):
            wall, cpu = time.perf_counter(), time.process_time()
            for batch in batches:
                self.state, metrics = self.trainer.train_step(self.state, batch, self.rng)
                if self.step == 0:  # compilation: timed apart
                    jax.block_until_ready(metrics)
                    self.compile_s = time.perf_counter() - wall
                    self._count(metrics, timed=False)
                    wall, cpu = time.perf_counter(), time.process_time()
                else:
                    self._count(metrics, timed=True)
                self.step += 1
            jax.block_until_ready(self.state.params)
            self.wall += time.perf_counter() - wall
            self.cpu += time.process_time() - cpu

    def _count(self, metrics, timed: bool) -> None:
        real, examples = float(metrics["real_tokens"]), float(metrics["nsp_count"])
        self.sums["real_tokens"] += real
        self.sums["examples"] += examples
        if timed:
            self.sums["timed_real_tokens"] += real
            self.timed_steps += 1

    def evaluate(self, eval_trainer, batches) -> dict:
        import jax

        from bert_jax.pretraining.step import metrics_from_sums

        totals = None
        with jax.set_mesh(self.mesh):
            for batch in batches:
                sums = jax.device_get(eval_trainer.eval_step(self.state.params, batch))
                totals = sums if totals is None else jax.tree.map(np.add, totals, sums)
        return metrics_from_sums(totals, prefix="eval_")

    def row(self) -> dict:
        positions = self.timed_steps * self.config.batch_size * self.config.data.max_seq_length
        return {
            "rows_per_step": self.config.batch_size,
            "steps": self.step,
            "examples_per_step": self.sums["examples"] / max(self.step, 1),
            "real_tokens": self.sums["real_tokens"],
            "padding_fraction": 1 - self.sums["timed_real_tokens"] / max(positions, 1),
            "compile_s": self.compile_s,
            "wall_s": self.wall,
            "cpu_s": self.cpu,
            "tokens_per_sec": positions / self.wall,
            "real_tokens_per_sec": self.sums["timed_real_tokens"] / self.wall,
            "real_tokens_per_cpu_sec": self.sums["timed_real_tokens"] / self.cpu,
        }


def main(argv=None) -> dict:
    args = parse_args(argv)
    import jax

    from bert_jax.data import input_pipeline
    from bert_jax.training import sharding

    load_start = os.getloadavg()
    vocab, dataset_dir = prepare(args)
    packed_probe = make_config(args, vocab, dataset_dir, True, 1, 1)
    per_row, tokens_per_example = examples_per_row(packed_probe)
    packed_rows = max(1, round(args.rows / per_row))
    # As many packed steps as give the unpacked run's real tokens.
    packed_steps = round(args.steps * args.rows / (packed_rows * per_row))
    configs = {
        "unpacked": make_config(args, vocab, dataset_dir, False, args.rows, args.steps),
        "packed": make_config(args, vocab, dataset_dir, True, packed_rows, packed_steps),
    }
    mesh = sharding.make_mesh(configs["unpacked"].mesh, jax.devices()[:1])
    runs = {name: Run(name, config, mesh) for name, config in configs.items()}
    blocks = math.ceil(args.steps / args.block)
    for block in range(blocks):
        for run in runs.values():
            share = run.config.num_train_steps * (block + 1) // blocks - run.step
            run.run(share)
        done = {name: f"{r.step}/{r.config.num_train_steps}" for name, r in runs.items()}
        print(f"block {block + 1}/{blocks}: steps {done}", file=sys.stderr, flush=True)

    eval_trainer = runs["unpacked"].trainer
    validation = input_pipeline.make_pretraining_iterator(
        configs["unpacked"].data,
        split="validation",
        global_batch_size=args.rows,
        seed=args.seed,
        num_epochs=1,
    )
    held_out = [eval_trainer.shard_batch(next(validation)) for _ in range(args.eval_batches)]
    results = {}
    for name, run in runs.items():
        results[name] = {**run.row(), **run.evaluate(eval_trainer, held_out)}
    unpacked, packed = results["unpacked"], results["packed"]
    summary = {
        "real_tokens_per_sec_ratio": (
            packed["real_tokens_per_sec"] / unpacked["real_tokens_per_sec"]
        ),
        "real_tokens_per_cpu_sec_ratio": (
            packed["real_tokens_per_cpu_sec"] / unpacked["real_tokens_per_cpu_sec"]
        ),
        "real_tokens_ratio": packed["real_tokens"] / unpacked["real_tokens"],
        "eval_mlm_accuracy_difference_points": 100
        * (packed["eval_mlm_accuracy"] - unpacked["eval_mlm_accuracy"]),
        "examples_per_packed_row": per_row,
        "real_tokens_per_example": tokens_per_example,
        "held_out_examples": len(held_out) * args.rows,
    }
    report = {
        "command": "python -m benchmarks.studies.pretrain_packing "
        + shlex.join(argv or sys.argv[1:]),
        "args": vars(args),
        "machine": {
            "cores": os.cpu_count(),
            "load_average_start": load_start[0],
            "load_average_end": os.getloadavg()[0],
            "device": str(jax.devices()[0].device_kind),
        },
        "runs": results,
        "summary": summary,
    }
    pathlib.Path(args.workdir, "results.json").write_text(json.dumps(report, indent=1))
    print(format_report(report))
    return report


def format_report(report: dict) -> str:
    args, runs, summary = report["args"], report["runs"], report["summary"]
    lines = [
        f"{report['command']}",
        f"{args['preset']} at {args['seq']}, {summary['examples_per_packed_row']:.2f} examples "
        f"per packed row, {summary['real_tokens_per_example']:.0f} tokens per example; "
        f"held-out: {summary['held_out_examples']} examples",
        "",
        "| run | rows/step | examples/step | steps | real tokens | padding | wall s | CPU s "
        "| padded tokens/s | real tokens/s | real tokens/CPU s | held-out MLM acc | MLM loss "
        "| NSP acc |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in runs.items():
        lines.append(
            f"| {name} | {r['rows_per_step']} | {r['examples_per_step']:.1f} | {r['steps']} "
            f"| {r['real_tokens']:,.0f} | {r['padding_fraction']:.1%} | {r['wall_s']:.0f} "
            f"| {r['cpu_s']:.0f} | {r['tokens_per_sec']:,.0f} | {r['real_tokens_per_sec']:,.0f} "
            f"| {r['real_tokens_per_cpu_sec']:,.0f} | {r['eval_mlm_accuracy']:.4f} "
            f"| {r['eval_mlm_loss']:.3f} | {r['eval_nsp_accuracy']:.3f} |"
        )
    machine = report["machine"]
    lines += [
        "",
        f"real tokens/s, packed / unpacked: {summary['real_tokens_per_sec_ratio']:.2f}x wall, "
        f"{summary['real_tokens_per_cpu_sec_ratio']:.2f}x per CPU second (target >= 1.6x)",
        f"held-out MLM accuracy, packed - unpacked: "
        f"{summary['eval_mlm_accuracy_difference_points']:+.2f} points after "
        f"{summary['real_tokens_ratio']:.3f}x the real tokens (target within 0.5 point)",
        f"machine: {machine['cores']} cores ({machine['device']}), load average "
        f"{machine['load_average_start']:.1f} at the start, {machine['load_average_end']:.1f} at "
        "the end",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
