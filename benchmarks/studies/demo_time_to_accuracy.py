r"""Time to accuracy of the `make demo` config and of the variants it was chosen against.

  python -m benchmarks.studies.demo_time_to_accuracy               # every variant (~1 CPU-hour)
  python -m benchmarks.studies.demo_time_to_accuracy --variants demo,old_demo
  python -m benchmarks.studies.demo_time_to_accuracy --end_to_end  # + `make demo`, timed
  python -m benchmarks.studies.demo_time_to_accuracy --variants demo,modern_demo  # BERT vs modern

Each variant is configs/demo.py with a few keys changed, trained in its own process for a budget
of training CPU-seconds (process CPU time, all threads: the time axis that stays meaningful on a
shared machine), with held-out masked-LM accuracy measured over the whole validation split at
fixed steps (evaluation time is excluded from the training time and reported apart); a variant
whose CONFIG is "modern_demo" starts from configs/modern_demo.py instead. The table gives, per
variant, the CPU-seconds to reach each accuracy threshold, the accuracy at the budget (also at
15% masking), the wall time on this machine (meaningless when shared) and an idle 2-core
estimate, CPU-seconds / 2: XLA runs the step's matmuls on both cores (on an idle machine the
wall column is the truth).

--end_to_end runs what `make demo` runs (pretrain, plot, report) in a fresh workdir and data
directory and reports their wall and CPU time: the figure the README quotes.

Writes benchmarks/results/demo_time_to_accuracy.json and prints the markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[2]
RESULTS_DIR = REPO / "benchmarks" / "results"
THRESHOLDS = (0.15, 0.20, 0.25, 0.30, 0.35)

# configs/demo.py before its retune: post-LN, dropout 0.1, lr 1e-3, batch 32 x 128, 2000 steps.
OLD_DEMO = {
    "model.hidden_dropout_prob": 0.1,
    "model.attention_probs_dropout_prob": 0.1,
    "model.pre_layer_norm": False,
    "model.initializer_range": 0.02,
    "learning_rate": 1e-3,
    "schedule": "trainer",
    "warmup_steps": 100,
    "batch_size": 32,
    "num_train_steps": 2000,
    "data.max_seq_length": 128,
    "data.max_predictions_per_seq": 20,
    "data.masked_lm_prob": 0.15,
    "model.max_position_embeddings": 128,
    "data.vocab_file": "BUNDLED",
}

# name -> (overrides of configs/demo.py, what it tests). "demo" is the shipped config. The r1..r6
# rounds start from the old demo (shorter schedule, no dropout) and change one or two things;
# "vocab N" is a WordPiece vocabulary of N tokens learned from the bundled corpus.
_R1 = {**OLD_DEMO, "num_train_steps": 1600, "warmup_steps": 50}
_NODROP = {"model.hidden_dropout_prob": 0.0, "model.attention_probs_dropout_prob": 0.0}
_S32 = {"batch_size": 64, "data.max_seq_length": 32, "data.max_predictions_per_seq": 5}
_S64 = {"data.max_seq_length": 64, "data.max_predictions_per_seq": 10}


def _r(what: str, **changes) -> tuple[dict, str]:
    """A variant: the round-1 base (old demo, no dropout, 1600 steps) with `changes`."""
    overrides = {**_R1, **_NODROP}
    for key, value in changes.items():
        if isinstance(value, dict):
            overrides.update(value)
        else:
            overrides[key.replace("__", ".")] = value
    return overrides, what


VARIANTS: dict[str, tuple[dict, str]] = {
    "demo": ({}, "the shipped config"),
    "old_demo": (OLD_DEMO, "configs/demo.py before its retune"),
    "r1_post_1e3": _r("post-LN, no dropout, lr 1e-3"),
    "r1_post_3e3": _r("lr 3e-3", learning_rate=3e-3),
    "r1_pre_3e3": _r(
        "pre-LN, lr 3e-3",
        learning_rate=3e-3,
        model__pre_layer_norm=True,
        model__embedding_norm=False,
    ),
    "r1_pre_6e3": _r(
        "pre-LN, lr 6e-3",
        learning_rate=6e-3,
        model__pre_layer_norm=True,
        model__embedding_norm=False,
    ),
    "r1_post_1e3_v4096": _r("vocab 4096", data__vocab_file="VOCAB_4096"),
    "r1_post_1e3_v1024": _r("vocab 1024", data__vocab_file="VOCAB_1024"),
    "r2_seq64": _r("seq 64 (2x steps)", num_train_steps=3200, s=_S64),
    "r2_b16": _r("batch 16 (2x steps)", num_train_steps=3200, batch_size=16),
    "r2_seq32": _r("seq 32, batch 64 (2x steps)", num_train_steps=3200, s=_S32),
    "r3_b16_s64": _r("batch 16 x seq 64 (4x steps)", num_train_steps=6400, batch_size=16, s=_S64),
    "r3_b16_v2048": _r(
        "batch 16, vocab 2048", num_train_steps=3200, batch_size=16, data__vocab_file="VOCAB_2048"
    ),
    "r4_mask30_s64": _r(
        "seq 64, 30% masked",
        num_train_steps=3200,
        s=_S64,
        data__max_predictions_per_seq=19,
        data__masked_lm_prob=0.3,
    ),
    "r4_lr2e3_s32": _r(
        "seq 32 batch 64, lr 2e-3", num_train_steps=3200, s=_S32, learning_rate=2e-3
    ),
    "r5_init06_b16s64": _r(
        "batch 16 x seq 64, init std 0.06",
        num_train_steps=6400,
        batch_size=16,
        s=_S64,
        model__initializer_range=0.06,
    ),
    "r5_init06_s32": _r(
        "seq 32 batch 64, init std 0.06",
        num_train_steps=3200,
        s=_S32,
        model__initializer_range=0.06,
    ),
    "r6_init10_s32": _r(
        "seq 32 batch 64, init std 0.1", num_train_steps=3200, s=_S32, model__initializer_range=0.1
    ),
    "r6_init06_s64": _r(
        "seq 64 batch 32, init std 0.06",
        num_train_steps=3200,
        s=_S64,
        model__initializer_range=0.06,
    ),
    "demo_dropout": (
        {"model.hidden_dropout_prob": 0.1, "model.attention_probs_dropout_prob": 0.1},
        "the shipped config with BERT's dropout 0.1",
    ),
    "demo_bert_schedule": ({"schedule": "bert"}, "the shipped config, google's schedule"),
    "demo_pre_ln": (
        {"model.pre_layer_norm": True, "model.embedding_norm": False},
        "the shipped config, pre-LN",
    ),
    "modern_demo": (
        {"CONFIG": "modern_demo"},
        "configs/modern_demo.py: modern encoder + recipe (30% masked, evaluated at 15%)",
    ),
}


def _vocab(token: str, data_dir: str) -> str:
    """BUNDLED, or VOCAB_N: a vocabulary of N tokens learned from the bundled corpus (cached)."""
    from bert_jax.data.input_pipeline import BUNDLED_CORPUS, BUNDLED_VOCAB

    if token == "BUNDLED":
        return str(BUNDLED_VOCAB)
    if not token.startswith("VOCAB_"):
        return token
    path = pathlib.Path(data_dir) / "vocab" / f"bundled_{token[6:]}.txt"
    if not path.exists():
        from bert_jax.data.tokenization import WordPieceTokenizer

        WordPieceTokenizer.train([BUNDLED_CORPUS], int(token[6:])).save_vocab(path)
    return str(path)


def build_config(overrides: dict, data_dir: str):
    """configs/demo.py (or configs/modern_demo.py with CONFIG "modern_demo") with `overrides`."""
    if overrides.get("CONFIG", "demo") == "modern_demo":
        from configs.modern_demo import get_config
    else:
        from configs.demo import get_config

    config = get_config("demo")
    for key, value in overrides.items():
        if key == "CONFIG":
            continue
        if key == "data.vocab_file":
            from bert_jax.pretraining.config import vocab_size

            config.data.vocab_file = _vocab(value, data_dir)
            config.model.vocab_size = vocab_size(config.data.vocab_file)
            continue
        node = config
        *parents, leaf = key.split(".")
        for parent in parents:
            node = node[parent]
        node[leaf] = value
    return config


def _cpu() -> float:
    return time.process_time()


def train_variant(name: str, overrides: dict, budget_cpu_s: float, evals: int, data_dir: str):
    """Runs in a fresh process: trains for the budget, prints one JSON line per evaluation."""
    import jax
    import numpy as np

    from bert_jax.data import input_pipeline
    from bert_jax.pretraining.config import validate_pretraining_config
    from bert_jax.pretraining.step import build_pretrainer
    from bert_jax.pretraining.train import evaluate
    from bert_jax.training import sharding

    config = build_config(overrides, data_dir)
    config.data.data_dir = data_dir
    config.data.show_progress = False
    config.eval_steps = 10_000  # the whole validation split, whatever the batch size
    validate_pretraining_config(config, jax.device_count())
    input_pipeline.prepare_data(config.data)
    mesh = sharding.make_mesh(config.mesh)
    steps = int(config.num_train_steps)
    eval_at = sorted({max(1, round(steps * (i + 1) / evals)) for i in range(evals)})
    with jax.set_mesh(mesh):
        pretrainer = build_pretrainer(config, mesh)
        train_iter = input_pipeline.make_pretraining_iterator(
            config.data, split="train", global_batch_size=config.batch_size, seed=config.seed
        )
        init_rng, dropout_rng = jax.random.split(jax.random.key(config.seed))
        state = pretrainer.init(init_rng)
        cpu0, wall0 = _cpu(), time.perf_counter()
        state, _ = pretrainer.train_step(
            state, pretrainer.shard_batch(next(train_iter)), dropout_rng
        )
        jax.block_until_ready(state)
        compile_cpu, compile_wall = _cpu() - cpu0, time.perf_counter() - wall0
        train_cpu = train_wall = eval_cpu = 0.0
        step = 1
        for target in eval_at:
            cpu0, wall0 = _cpu(), time.perf_counter()
            while step < target:
                batch = pretrainer.shard_batch(next(train_iter))
                state, metrics = pretrainer.train_step(state, batch, dropout_rng)
                step += 1
            jax.block_until_ready(state)
            train_cpu += _cpu() - cpu0
            train_wall += time.perf_counter() - wall0
            cpu0 = _cpu()
            result = evaluate(pretrainer, state.params, config)
            at_15 = result
            data = config.data
            if (data.get("eval_masked_lm_prob", 0.0) or data.masked_lm_prob) != 0.15:
                standard = config.copy_and_resolve_references()  # also BERT's masking
                standard.data.eval_masked_lm_prob = 0.15
                standard.data.max_predictions_per_seq = max(
                    data.max_predictions_per_seq, round(0.15 * (data.max_seq_length - 3))
                )
                at_15 = evaluate(pretrainer, state.params, standard)
            eval_cpu += _cpu() - cpu0
            record = {
                "variant": name,
                "step": step,
                "train_cpu_s": train_cpu,
                "train_wall_s": train_wall,
                "eval_cpu_s": eval_cpu,
                "compile_cpu_s": compile_cpu,
                "compile_wall_s": compile_wall,
                "eval_mlm_accuracy": float(result["eval_mlm_accuracy"]),
                "eval_mlm_accuracy_at_15": float(at_15["eval_mlm_accuracy"]),
                "eval_nsp_accuracy": float(result.get("eval_nsp_accuracy", float("nan"))),
                "eval_loss": float(result["eval_loss"]),
                "train_loss": float(np.asarray(metrics["mlm_loss_sum"]))
                / max(float(np.asarray(metrics["mlm_weight"])), 1.0),
            }
            print("RECORD " + json.dumps(record), flush=True)
            if train_cpu > budget_cpu_s:
                break


def run_variant(name: str, args) -> list[dict]:
    overrides, _ = VARIANTS[name]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env["XLA_FLAGS"] = " ".join(
        f for f in env.get("XLA_FLAGS", "").split() if "host_platform_device_count" not in f
    )
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.studies.demo_time_to_accuracy",
        "--worker",
        name,
        "--budget_cpu_s",
        str(args.budget_cpu_s),
        "--evals",
        str(args.evals),
        "--data_dir",
        args.data_dir,
    ]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    records = [
        json.loads(line[len("RECORD ") :])
        for line in proc.stdout.splitlines()
        if line.startswith("RECORD ")
    ]
    if proc.returncode != 0:
        print(f"{name} failed:\n{proc.stderr[-3000:]}", file=sys.stderr)
    return records


def summarize(name: str, records: list[dict]) -> dict:
    """CPU-seconds to each threshold (linear interpolation between evaluations)."""
    reach = {}
    previous = {"train_cpu_s": 0.0, "eval_mlm_accuracy": 0.0, "step": 0}
    for record in records:
        for threshold in THRESHOLDS:
            if threshold in reach or record["eval_mlm_accuracy"] < threshold:
                continue
            lo, hi = previous["eval_mlm_accuracy"], record["eval_mlm_accuracy"]
            fraction = (threshold - lo) / (hi - lo) if hi > lo else 1.0
            reach[threshold] = previous["train_cpu_s"] + fraction * (
                record["train_cpu_s"] - previous["train_cpu_s"]
            )
        previous = record
    last = records[-1] if records else {}
    return {
        "variant": name,
        "what": VARIANTS[name][1],
        "overrides": VARIANTS[name][0],
        "steps": last.get("step"),
        "train_cpu_s": last.get("train_cpu_s"),
        "train_wall_s": last.get("train_wall_s"),
        "final_accuracy": last.get("eval_mlm_accuracy"),
        "final_accuracy_at_15": last.get("eval_mlm_accuracy_at_15"),
        "best_accuracy": max((r["eval_mlm_accuracy"] for r in records), default=None),
        "cpu_s_to": {str(t): reach.get(t) for t in THRESHOLDS},
        "curve": [(r["step"], r["train_cpu_s"], r["eval_mlm_accuracy"]) for r in records],
    }


def table(summaries: list[dict]) -> str:
    head = "| variant | what | steps | train CPU-s | idle 2-core s (est.) | wall-s (this machine) "
    head += "| held-out MLM acc | at 15% masked |"
    head += "".join(f" CPU-s to {t:.2f} |" for t in THRESHOLDS)
    rows = [head, "|" + "---|" * (8 + len(THRESHOLDS))]
    for s in summaries:
        cells = [
            s["variant"],
            s["what"],
            str(s["steps"]),
            f"{s['train_cpu_s']:.0f}" if s["train_cpu_s"] is not None else "-",
            f"{s['train_cpu_s'] / 2:.0f}" if s["train_cpu_s"] is not None else "-",
            f"{s['train_wall_s']:.0f}" if s["train_wall_s"] is not None else "-",
            f"{s['final_accuracy']:.3f}" if s["final_accuracy"] is not None else "failed",
            "-" if s.get("final_accuracy_at_15") is None else f"{s['final_accuracy_at_15']:.3f}",
        ]
        for t in THRESHOLDS:
            value = s["cpu_s_to"][str(t)]
            cells.append("-" if value is None else f"{value:.0f}")
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def end_to_end(args) -> dict:
    """`make demo`'s three commands in a fresh workdir: wall and CPU time of each."""
    import resource

    work = pathlib.Path(tempfile.mkdtemp(prefix="demo_e2e_"))
    python = sys.executable
    commands = [
        [python, "-m", "bert_jax.pretrain", "--config", "configs/demo.py",
         "--workdir", str(work / "demo"), f"--config.data.data_dir={work / 'data'}",
         "--config.progress_bar=false"],
        [python, "-m", "bert_jax.plot", str(work / "demo"), "--out", str(work / "curves.png")],
        [python, "-m", "bert_jax.report", str(work / "demo")],
    ]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env["XLA_FLAGS"] = ""
    timings = []
    for cmd in commands:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        timings.append({"command": " ".join(cmd[1:4]), "wall_s": wall, "cpu_s": cpu,
                        "returncode": proc.returncode,
                        "stdout_tail": proc.stdout[-2500:]})  # fmt: skip
    from bert_jax.training.metrics import read_metrics

    curve = [
        (r["step"], r["eval_mlm_accuracy"], r.get("eval_nsp_accuracy"))
        for r in read_metrics(work / "demo")
        if "eval_mlm_accuracy" in r
    ]
    return {"workdir": str(work), "commands": timings, "eval_curve": curve}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.studies.demo_time_to_accuracy")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--budget_cpu_s", type=float, default=900.0)
    parser.add_argument("--evals", type=int, default=8)
    parser.add_argument("--data_dir", default=str(pathlib.Path(tempfile.gettempdir()) / "tta"))
    parser.add_argument("--end_to_end", action="store_true")
    parser.add_argument("--output", default=str(RESULTS_DIR / "demo_time_to_accuracy.json"))
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        train_variant(
            args.worker, VARIANTS[args.worker][0], args.budget_cpu_s, args.evals, args.data_dir
        )
        return 0
    summaries = []
    for name in args.variants.split(","):
        summary = summarize(name, run_variant(name, args))
        summaries.append(summary)
        brief = {k: summary[k] for k in ("steps", "train_cpu_s", "final_accuracy")}
        print(f"{name}: {json.dumps(brief)}", flush=True)
    report = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "load_average": os.getloadavg(),
        "variants": summaries,
    }
    if args.end_to_end:
        report["end_to_end"] = end_to_end(args)
    out = pathlib.Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(table(summaries))
    if args.end_to_end:
        for timing in report["end_to_end"]["commands"]:
            wall, cpu = timing["wall_s"], timing["cpu_s"]
            print(f"{timing['command']}: wall {wall:.0f} s, CPU {cpu:.0f} s")
        curve = report["end_to_end"]["eval_curve"]
        print(
            "held-out (step, MLM, NSP): " + ", ".join(f"{s} {m:.3f} {n:.3f}" for s, m, n in curve)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
