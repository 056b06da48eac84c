"""The gs:// flow N times against a GCS that fails: does anything get lost?

  python -m benchmarks.studies.gcs_stress --runs 5

fake-gcs-server on 127.0.0.1 (tests/fake_gcs.py) with `FaultProxy` in front: a share of requests
answered 503 or 429 or cut off, and whole checkpoint saves refused (403) for a few seconds. Each
flow: prepare from gs:// text, pretrain 20 steps into a gs:// workdir, resume to 30, fine-tune
gs:// -> gs://, export. A command that stops with status 75 (a save that kept failing) is run
again, as a launcher would. Every flow's logged metrics and fine-tuning results must equal those
of the same flow without faults (run first). Prints the tally; docs/pretraining.md has results.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))
import fake_gcs  # noqa: E402

BUCKET = "bert-jax-stress"
TIMING = {"steps_per_sec", "tokens_per_sec", "real_tokens_per_sec", "examples_per_sec", "mfu"}
KINDS = ("503", "429", "reset")
# The checkpoint requests refused for --refuse_seconds in each stage, from the first for: step
# 10's arrays (written in the background: found failed at the next save), the final save (30),
# a fine-tuning save (4).
FINAL = {"pretrain_20": "run/checkpoints/20", "resume_30": "run/checkpoints/30"}
FINAL["finetune"] = "ft/checkpoints/6"
REFUSED = {
    "pretrain_20": ("run", "10/state/"),
    "resume_30": ("run", "30/"),
    "finetune": ("ft", "4/"),
}


def _commands(prefix: str, local: pathlib.Path) -> list[tuple[str, list[str]]]:
    from bert_jax.data import input_pipeline

    tasks = REPO / "tests" / "data" / "tasks" / "sentiment"
    run = f"{prefix}/run"
    pretrain = ["-m", "bert_jax.pretrain", "--config", "configs/demo.py:test", f"--workdir={run}"]
    pretrain += [f"--config.data.data_dir={prefix}/data", "--config.data.show_progress=False"]
    pretrain += [f"--config.data.input_files={prefix}/corpus/*.txt"]
    pretrain += ["--config.checkpoint_every_steps=5", "--config.log_every_steps=5"]
    pretrain += ["--config.eval_every_steps=10"]
    return [
        ("prepare", ["-m", "bert_jax.data.prepare", f"--input_files={prefix}/corpus/*.txt"]
         + [f"--vocab_file={input_pipeline.BUNDLED_VOCAB}"]
         + [f"--data_dir={prefix}/data"]),
        ("pretrain_20", pretrain + ["--config.num_train_steps=20"]),
        ("resume_30", pretrain + ["--config.num_train_steps=30"]),
        ("finetune", ["-m", "bert_jax.finetune", "--config"]
         + ["configs/finetune/classification.py:test", f"--config.init_checkpoint={run}"]
         + [f"--workdir={prefix}/ft"]
         + [f"--config.task.train_file={tasks / 'train.tsv'}"]
         + [f"--config.task.dev_file={tasks / 'dev.tsv'}", "--config.num_train_steps=6"]
         + ["--config.checkpoint_every_steps=2", "--config.eval_every_steps=3"]),
        ("export", ["-m", "bert_jax.export", run, f"--out={local / 'exported'}"]),
    ]  # fmt: skip


def _upload_corpus(prefix: str) -> None:
    from etils import epath

    from bert_jax.data import input_pipeline

    with gzip.open(input_pipeline.BUNDLED_CORPUS, "rt", encoding="utf-8") as f:
        lines = f.read().splitlines(keepends=True)
    half = len(lines) // 2
    while lines[half].strip():
        half += 1
    epath.Path(f"{prefix}/corpus/part-0.txt").write_text("".join(lines[:half]))
    epath.Path(f"{prefix}/corpus/part-1.txt").write_text("".join(lines[half:]))


def _outcome(prefix: str) -> dict:
    """What a flow produced: the pretraining run's metrics and the fine-tuning results."""
    from etils import epath

    from bert_jax.training.metrics import read_metrics

    records = [
        {k: v for k, v in r.items() if k not in TIMING} for r in read_metrics(f"{prefix}/run")
    ]
    results = json.loads(epath.Path(f"{prefix}/ft/eval_results.json").read_text())
    return {"metrics": records, "finetune": results}


def _flow(name: str, env: dict, local: pathlib.Path, proxy, args, log) -> dict:
    """Runs the flow's commands (each again after status 75); returns what happened."""
    prefix = f"gs://{BUCKET}/{name}"
    _upload_corpus(prefix)
    report = {"name": name, "restarts": 0, "failed": None, "lost": None, "seconds": {}}
    for stage, command in _commands(prefix, local):
        if proxy is not None and stage in REFUSED and args.refuse_seconds > 0:
            workdir, step = REFUSED[stage]  # a whole save refused (403) for a while
            within = f"{name}/{workdir}/checkpoints/"
            proxy.outage(args.refuse_seconds, f"{within}{step}", 403, within=within)
        started = time.perf_counter()
        for attempt in range(args.max_restarts + 1):
            result = subprocess.run(
                [sys.executable, *command], cwd=REPO, env=env, capture_output=True, text=True,
                timeout=args.timeout,
            )  # fmt: skip
            log.write(f"=== {name} {stage} attempt {attempt}: status {result.returncode}\n")
            log.write(result.stdout + result.stderr)
            if result.returncode != 75:
                break
            report["restarts"] += 1
        report["seconds"][stage] = round(time.perf_counter() - started, 1)
        if result.returncode != 0:
            tail = (result.stderr.strip().splitlines() or ["?"])[-1]
            report["failed"] = f"{stage}: status {result.returncode}: {tail[:300]}"
            return report
        if "Traceback" in result.stderr:
            report["failed"] = f"{stage}: a traceback on stderr"
            return report
        if stage in FINAL:  # the run said it finished: its last checkpoint must be intact
            from bert_jax.checkpoints.sealing import checkpoint_problem

            problem = checkpoint_problem(f"{prefix}/{FINAL[stage]}")
            if problem is not None:
                report["lost"] = f"{stage}: {prefix}/{FINAL[stage]}: {problem}"
                return report
    report["outcome"] = _outcome(prefix)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--rate", type=float, default=0.03, help="share of requests failed")
    parser.add_argument("--max_faults", type=int, default=40, help="random faults per flow")
    parser.add_argument(
        "--refuse_seconds", type=float, default=3.0,
        help="how long one checkpoint per stage is refused (403); 0: never",
    )  # fmt: skip
    parser.add_argument("--max_restarts", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=600, help="seconds per command")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="a folder for the log (default: a temp dir)")
    args = parser.parse_args()

    local = pathlib.Path(args.out or tempfile.mkdtemp(prefix="gcs_stress_"))
    local.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with fake_gcs.FakeGcs(BUCKET, local / "fake-gcs-server.log") as server:
        env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")
        env.pop("GOOGLE_APPLICATION_CREDENTIALS", None)
        env.update(fake_gcs.client_env(server.url, str(local / "no_gcloud")))
        env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"
        env["JAX_COMPILATION_CACHE_DIR"] = str(local / "jax_cache")
        os.environ.update(fake_gcs.client_env(server.url, str(local / "no_gcloud")))
        with open(local / "commands.log", "w") as log:
            reference = _flow("reference", env, local / "reference", None, args, log)
            if reference["failed"]:
                sys.exit(f"the flow without faults failed: {reference['failed']} ({log.name})")
            print(f"reference flow (no faults): {reference['seconds']}", flush=True)
            reports = []
            for i in range(args.runs):
                faults = dict(rate=args.rate, seed=args.seed + i, max_faults=args.max_faults)
                lifetime = 6 * args.timeout  # bounded: the proxy stops by itself
                with fake_gcs.FaultProxy(server.url, lifetime=lifetime, **faults) as proxy:
                    proxy_env = dict(env, **fake_gcs.client_env(proxy.url, env["CLOUDSDK_CONFIG"]))
                    report = _flow(f"flow{i}", proxy_env, local / f"flow{i}", proxy, args, log)
                report["faults"], report["requests"] = dict(proxy.counts), proxy.requests
                done = not (report["failed"] or report["lost"])
                if done and report["outcome"] != reference["outcome"]:
                    report["lost"] = (
                        "metrics or fine-tuning results differ from a flow without faults"
                    )
                reports.append(report)
                state = report["failed"] or report["lost"] or "green"
                print(f"{report['name']}: {state}; {proxy.tally()}; restarts "
                      f"{report['restarts']}; seconds {report['seconds']}", flush=True)  # fmt: skip
    faults = {k: sum(r["faults"][k] for r in reports) for k in (*KINDS, "outage")}
    green = sum(not r["failed"] and not r["lost"] for r in reports)
    summary = {
        "runs": args.runs, "green": green, "failed": [r["failed"] for r in reports if r["failed"]],
        "lost": [r["lost"] for r in reports if r["lost"]], "faults": faults,
        "restarts": sum(r["restarts"] for r in reports),
        "requests": sum(r["requests"] for r in reports),
        "wall_seconds": round(time.perf_counter() - started), "load": os.getloadavg()[0],
    }  # fmt: skip
    (local / "summary.json").write_text(
        json.dumps({"summary": summary, "flows": reports}, indent=1)
    )
    print(json.dumps(summary))
    print(f"log: {local / 'commands.log'}")
    sys.exit(0 if green == args.runs else 1)


if __name__ == "__main__":
    main()
