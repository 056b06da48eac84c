r"""Trains bert_jax and its peers side by side and reports throughput, memory and MFU.

  python -m benchmarks.run_all              # what `make bench` runs (CPU: ~15 min on 2 cores)
  python -m benchmarks.run_all --tiny       # a tiny model, seconds: the harness end to end
  python -m benchmarks.run_all --mfu        # bert_jax alone, bf16, base/large at 128/512 (gpu.sh)

Every trainer (`benchmarks.peers`) runs in its own process, so each peak RSS is its own. All of
them are built and compiled first, then timed in alternation -- block k runs `--steps` steps of
each trainer in a rotated order -- for `--reps` blocks; each figure is the median over the blocks
and compilation is reported apart (first step minus the median step). MFU counts the model FLOPs
that each trainer performs (`bert_jax.training.metrics.pretraining_flops_per_example`; the
Hugging Face heads compute vocabulary logits at all T positions, bert_jax's at the P masked ones).

Writes benchmarks/results/{results.json, results.md, throughput.png} (with --mfu: mfu.json and
mfu.md), and, when
benchmarks/data_throughput.py and ../shared/data exist, the data-pipeline throughput beside them.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import platform
import statistics
import subprocess
import sys
from typing import Any

from tqdm.auto import tqdm

from benchmarks.peers import DEFAULT_OPTIMIZER, FRAMEWORKS

REPO = pathlib.Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO / "benchmarks" / "results"

# (preset, batch size, sequence length): the CPU comparison, and its GPU MFU table.
CPU_SUITE = (("mini", 32, 128), ("base", 8, 128))
TINY_SUITE = (("tiny", 4, 128),)
MFU_SUITE = (("base", 256, 128), ("large", 256, 128), ("base", 64, 512), ("large", 32, 512))
MFU_TINY_SUITE = (("tiny", 8, 128), ("tiny", 2, 512))

LABELS = {"bert_jax": "bert_jax", "hf_flax": "HF Flax", "hf_torch": "HF PyTorch"}


def predictions_per_seq(seq_len: int, masked_lm_prob: float = 0.15) -> int:
    """google-research/bert's max_predictions_per_seq: 20 at 128, 80 at 512."""
    needed = max(1, round((seq_len - 3) * masked_lm_prob))
    return -(-needed // 20) * 20 if seq_len >= 128 else needed


def worker_env(platform_name: str | None) -> dict[str, str]:
    """The environment of a trainer process: one host device (the tests force eight)."""
    env = dict(os.environ)
    flags = [f for f in env.get("XLA_FLAGS", "").split() if "host_platform_device_count" not in f]
    env["XLA_FLAGS"] = " ".join(flags)
    if platform_name:
        env["JAX_PLATFORMS"] = platform_name
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")]))
    return env


class Worker:
    """One trainer process (`python -m benchmarks.peers SPEC`) and its JSON-line channel."""

    def __init__(self, spec: dict[str, Any], python: str, env: dict[str, str], log_path):
        self.spec = spec
        self.log_path = pathlib.Path(log_path)
        self._log = open(self.log_path, "w", encoding="utf-8")
        self.process = subprocess.Popen(
            [python, "-m", "benchmarks.peers", json.dumps(spec)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            env=env,
            cwd=REPO,
        )
        self.ready = self._receive()

    def _receive(self) -> dict[str, Any]:
        line = self.process.stdout.readline()
        if not line:
            self.process.wait()
            self._log.flush()
            tail = self.log_path.read_text(encoding="utf-8", errors="replace").strip().splitlines()
            raise RuntimeError(
                f"{self.spec['framework']} exited with status {self.process.returncode}: "
                + (tail[-1] if tail else "no output")
                + f" (log: {self.log_path})"
            )
        return json.loads(line)

    def request(self, **command) -> dict[str, Any]:
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()
        return self._receive()

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        self._log.close()


def make_spec(framework: str, preset: str, batch_size: int, seq_len: int, args) -> dict[str, Any]:
    from bert_jax.model.modeling import BertConfig

    overrides = dict(max_position_embeddings=max(512, seq_len), dtype=args.dtype)
    if args.remat != "none":
        overrides["remat_policy"] = args.remat
    model = BertConfig.preset(preset, **overrides)
    return dict(
        framework=framework,
        preset=preset,
        model_overrides=overrides,
        model=model.to_dict(),
        batch_size=batch_size,
        seq_len=seq_len,
        num_predictions=predictions_per_seq(seq_len),
        optimizer=dict(DEFAULT_OPTIMIZER),
        warmup_steps=args.warmup,
        seed=args.seed,
    )


def _flops_per_example(spec: dict[str, Any]) -> float:
    from bert_jax.model.modeling import BertConfig
    from bert_jax.training.metrics import pretraining_flops_per_example

    predicted = spec["num_predictions"] if spec["framework"] == "bert_jax" else spec["seq_len"]
    config = BertConfig.from_dict(spec["model"])
    return pretraining_flops_per_example(config, spec["seq_len"], predicted)


def _summarise(spec, ready, blocks, finish, peak_flops: float) -> dict[str, Any]:
    step_s = [b["wall_s"] / b["steps"] for b in blocks]
    cpu_s = [b["cpu_s"] / b["steps"] for b in blocks]
    median_step = statistics.median(step_s)
    tokens_per_step = spec["batch_size"] * spec["seq_len"]
    flops = _flops_per_example(spec)
    return dict(
        tokens_per_s=tokens_per_step / median_step,
        step_s=median_step,
        step_s_blocks=step_s,
        cpu_s_per_step=statistics.median(cpu_s),
        compile_s=max(ready["first_step_s"] - median_step, 0.0),
        first_step_s=ready["first_step_s"],
        setup_s=ready["setup_s"],
        peak_rss_mib=finish["peak_rss_mib"],
        flops_per_example=flops,
        mfu=spec["batch_size"] * flops / median_step / peak_flops,
        loss_first=ready["loss"],
        loss_last=blocks[-1]["loss"],
    )


def run_case(preset, batch_size, seq_len, args, log_dir) -> dict[str, Any]:
    """Builds every framework's trainer for one case, then times them in alternation."""
    case = dict(preset=preset, batch_size=batch_size, seq_len=seq_len, frameworks={}, errors={})
    workers: dict[str, Worker] = {}
    specs = {}
    try:
        for framework in args.frameworks:
            spec = make_spec(framework, preset, batch_size, seq_len, args)
            python = args.peer_python.get(framework, sys.executable)
            log = log_dir / f"{preset}_b{batch_size}_t{seq_len}_{framework}.log"
            tqdm.write(f"[{preset} b{batch_size} t{seq_len}] building and compiling {framework}")
            try:
                workers[framework] = Worker(spec, python, worker_env(args.platform), log)
                specs[framework] = spec
            except RuntimeError as error:
                case["errors"][framework] = str(error)
                tqdm.write(f"  {framework} failed: {error}")
        names = list(workers)
        blocks = {name: [] for name in names}
        bar = tqdm(total=args.reps * len(names), desc=f"{preset} b{batch_size} t{seq_len}")
        for rep in range(args.reps):
            for name in names[rep % len(names) :] + names[: rep % len(names)] if names else []:
                blocks[name].append(workers[name].request(cmd="run", steps=args.steps))
                bar.update(1)
        bar.close()
        for name in names:
            finish = workers[name].request(cmd="finish")
            case["frameworks"][name] = _summarise(
                specs[name], workers[name].ready, blocks[name], finish, args.peak_flops
            )
    finally:
        for worker in workers.values():
            worker.close()
    ours = case["frameworks"].get("bert_jax")
    case["ratios"] = {}
    for name, result in case["frameworks"].items():
        if ours and name != "bert_jax":
            case["ratios"][name] = dict(
                tokens_per_s=ours["tokens_per_s"] / result["tokens_per_s"],
                cpu_s_per_step=result["cpu_s_per_step"] / ours["cpu_s_per_step"],
                peak_rss=ours["peak_rss_mib"] / result["peak_rss_mib"],
            )
    return case


def _relative(path: pathlib.Path) -> str:
    """`path` relative to the repository, or its name when it lies elsewhere."""
    path = pathlib.Path(path).resolve()
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else path.name


def run_data_throughput(out_dir: pathlib.Path) -> dict[str, Any]:
    """benchmarks/data_throughput.py (the data pipeline against the reference), if present."""
    script = REPO / "benchmarks" / "data_throughput.py"
    if not script.exists():
        return dict(skipped=f"{_relative(script)} not found")
    shared = REPO.parent / "shared" / "data"
    if not shared.is_dir():
        return dict(
            skipped="../shared/data not found: the data benchmark reads its corpus and vocab"
        )
    out = out_dir / "data_throughput.json"
    command = [sys.executable, str(script), f"--json={out}"]
    # As recorded (and published): relative to the repository, no path of this machine.
    shown = f"python {_relative(script)} --json={_relative(out)}"
    tqdm.write("data pipeline: " + shown)
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, env=worker_env(None))
    lines = done.stdout.strip().splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("measurement")), 0)
    table = "\n".join(line for line in lines[start:] if not line.startswith("{"))  # no JSON line
    result = dict(command=shown, returncode=done.returncode, table=table.strip())
    if done.returncode == 0 and out.exists():
        result["result"] = json.loads(out.read_text(encoding="utf-8"))
    else:
        result["stderr_tail"] = done.stderr.strip()[-2000:]
    return result


def _versions() -> dict[str, str]:
    from importlib import metadata

    versions = {}
    for package in ("jax", "jaxlib", "flax", "optax", "transformers", "torch"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "absent"
    return versions


def markdown_report(report: dict[str, Any]) -> str:
    lines = [
        f"# Training throughput, {report['date']}",
        "",
        f"`{report['command']}` on {report['host']['cpu']} ({report['host']['cores']} cores); "
        f"{report['settings']}. Load average {report['host']['load_average_at_start']:.1f} at "
        f"the start, {report['host']['load_average_at_end']:.1f} at the end: where other "
        "processes share the cores, the CPU-time ratios are the steadier measure. MFU: model "
        f"FLOPs per second over {report['host']['peak_flops'] / 1e9:,.0f} GFLOP/s (on a CPU, "
        "its fp32 matmul rate measured at the start by a 2048^3 JAX matmul).",
        "",
        "| model | batch | seq | framework | tokens/s | step ms | CPU s/step | compile s "
        "| peak RSS MiB | MFU % |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for case in report["cases"]:
        for name, r in case["frameworks"].items():
            lines.append(
                f"| {case['preset']} | {case['batch_size']} | {case['seq_len']} | {LABELS[name]} "
                f"| {r['tokens_per_s']:,.0f} | {1e3 * r['step_s']:,.0f} "
                f"| {r['cpu_s_per_step']:.2f} | {r['compile_s']:.1f} "
                f"| {r['peak_rss_mib']:,.0f} | {100 * r['mfu']:.1f} |"
            )
        for name, error in case["errors"].items():
            lines.append(
                f"| {case['preset']} | {case['batch_size']} | {case['seq_len']} "
                f"| {LABELS[name]} | failed: {error} | | | | | |"
            )
    lines += [
        "",
        "Ratios bert_jax / peer (throughput: higher is better; memory: lower is better):",
        "",
        "| model | batch | peer | tokens/s | CPU time per step | peak RSS |",
        "|---|---:|---|---:|---:|---:|",
    ]
    for case in report["cases"]:
        for name, ratio in case["ratios"].items():
            lines.append(
                f"| {case['preset']} | {case['batch_size']} | {LABELS[name]} "
                f"| {ratio['tokens_per_s']:.2f}x | {ratio['cpu_s_per_step']:.2f}x "
                f"| {ratio['peak_rss']:.2f}x |"
            )
    data = report.get("data_pipeline")
    if data:
        lines += ["", "## Data pipeline", ""]
        if "skipped" in data:
            lines.append(f"skipped: {data['skipped']}")
        else:
            lines += [f"`{data['command']}`", "", "```", data.get("table", ""), "```"]
    return "\n".join(lines) + "\n"


def plot(report: dict[str, Any], path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = report["cases"]
    fig, axes = plt.subplots(1, len(cases), figsize=(4.5 * len(cases), 3.6), squeeze=False)
    colors = {"bert_jax": "#d62728", "hf_flax": "#1f77b4", "hf_torch": "#7f7f7f"}
    for ax, case in zip(axes[0], cases, strict=True):
        names = list(case["frameworks"])
        values = [case["frameworks"][n]["tokens_per_s"] for n in names]
        bars = ax.bar([LABELS[n] for n in names], values, color=[colors[n] for n in names])
        ax.bar_label(bars, fmt="%.0f")
        ax.margins(y=0.12)
        ax.set_title(f"bert-{case['preset']}, batch {case['batch_size']}, seq {case['seq_len']}")
        ax.set_ylabel("training tokens/s")
    fig.suptitle(f"{report['host']['cpu']}, {report['settings']}", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def mfu_table(report: dict[str, Any]) -> str:
    rows = [
        f"bert_jax pretraining step, {report['settings']}, on {report['host']['device']}",
        f"{'model':<8}{'seq':>5}{'batch':>7}{'seq/s':>10}{'tokens/s':>12}{'step ms':>10}"
        f"{'compile s':>11}{'MFU %':>8}",
    ]
    for case in report["cases"]:
        r = case["frameworks"].get("bert_jax")
        if r is None:
            rows.append(
                f"{case['preset']:<8}{case['seq_len']:>5}{case['batch_size']:>7}  failed: "
                + "; ".join(case["errors"].values())
            )
            continue
        rows.append(
            f"{case['preset']:<8}{case['seq_len']:>5}{case['batch_size']:>7}"
            f"{case['batch_size'] / r['step_s']:>10,.0f}{r['tokens_per_s']:>12,.0f}"
            f"{1e3 * r['step_s']:>10.1f}{r['compile_s']:>11.1f}{100 * r['mfu']:>8.1f}"
        )
    return "\n".join(rows)


_DEVICE_PROBE = """
import json
import jax
from bert_jax.training.metrics import measured_cpu_matmul_flops, peak_flops_per_device
d = jax.devices()
matmul = measured_cpu_matmul_flops() if d[0].platform == "cpu" else None
print(json.dumps([f"{len(d)} x {d[0].device_kind}", d[0].platform,
                  peak_flops_per_device(d[0]) * len(d), matmul]))
"""


def _device_description(platform_name: str | None) -> tuple[str, float]:
    """(device name, peak FLOP/s of all devices) as JAX sees them, in a child process: an
    accelerator's bf16 peak from bert_jax.planning.chips, or on a CPU the fp32 matmul rate measured
    now (a 2048^3 JAX matmul, best of 10), since CPU peaks differ by machine and vector width."""
    done = subprocess.run(
        [sys.executable, "-c", _DEVICE_PROBE],
        capture_output=True,
        text=True,
        env=worker_env(platform_name),
    )
    if done.returncode:
        raise RuntimeError("JAX could not list its devices: " + done.stderr.strip()[-500:])
    name, device_platform, peak, matmul = json.loads(done.stdout.strip().splitlines()[-1])
    return name, (matmul if device_platform == "cpu" else peak)


def _cpu_name() -> str:
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="a tiny model (bert-tiny, batch 4)")
    parser.add_argument("--mfu", action="store_true", help="bert_jax alone: the bf16 MFU table")
    parser.add_argument("--frameworks", default=",".join(FRAMEWORKS))
    parser.add_argument("--reps", type=int, default=None, help="timed blocks per trainer")
    parser.add_argument("--steps", type=int, default=None, help="steps per timed block")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps after compiling")
    parser.add_argument("--dtype", default=None, help="compute dtype (default float32; --mfu bf16)")
    parser.add_argument("--remat", default="none", help="bert_jax remat policy")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--cpu-peak-flops",
        type=float,
        default=0.0,
        help="fp32 peak FLOP/s for the CPU MFU column (default: measured by a 2048^3 matmul)",
    )
    parser.add_argument(
        "--peer-python",
        action="append",
        default=[],
        metavar="FRAMEWORK=PATH",
        help="interpreter for one framework (a peer in its own venv)",
    )
    parser.add_argument("--no-data", action="store_true", help="skip the data-pipeline benchmark")
    parser.add_argument("--output-dir", default=str(RESULTS_DIR))
    args = parser.parse_args(argv)
    args.frameworks = ["bert_jax"] if args.mfu else args.frameworks.split(",")
    unknown = set(args.frameworks) - set(FRAMEWORKS)
    if unknown:
        parser.error(f"unknown frameworks {sorted(unknown)}; choose from {FRAMEWORKS}")
    args.peer_python = dict(item.split("=", 1) for item in args.peer_python)
    args.dtype = args.dtype or ("bfloat16" if args.mfu and not args.tiny else "float32")
    if args.mfu:
        args.suite = MFU_TINY_SUITE if args.tiny else MFU_SUITE
        args.platform = "cpu" if args.tiny else None
    else:
        args.suite = TINY_SUITE if args.tiny else CPU_SUITE
        args.platform = "cpu"
    args.reps = args.reps or (2 if args.tiny else 3)
    args.steps = args.steps or (2 if args.tiny else 10 if args.mfu else 4)
    return args


def main(argv=None) -> dict[str, Any]:
    args = parse_args(argv)
    out_dir = pathlib.Path(args.output_dir)
    log_dir = out_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    device, measured_peak = _device_description(args.platform)
    cpu = args.platform == "cpu" or "cpu" in device.lower()
    args.peak_flops = (args.cpu_peak_flops or measured_peak) if cpu else measured_peak
    tqdm.write(f"{device}: MFU against {args.peak_flops / 1e9:,.0f} GFLOP/s")
    report = dict(
        date=datetime.datetime.now().isoformat(timespec="seconds"),
        command=" ".join(
            ["python -m benchmarks.run_all", *(sys.argv[1:] if argv is None else argv)]
        ),
        host=dict(
            cpu=_cpu_name(),
            cores=os.cpu_count(),
            device=device,
            peak_flops=args.peak_flops,
            load_average_at_start=os.getloadavg()[0],
        ),
        versions=_versions(),
        settings=(
            f"{args.dtype}, dropout 0.1, AdamW, median of {args.reps} blocks of {args.steps} steps"
        ),
        cases=[run_case(*case, args, log_dir) for case in args.suite],
    )
    # Other processes on the machine slow the trainers unevenly: see the CPU-time ratios too.
    report["host"]["load_average_at_end"] = os.getloadavg()[0]
    if not args.mfu and not args.tiny and not args.no_data:
        report["data_pipeline"] = run_data_throughput(out_dir)
    stem = "mfu" if args.mfu else "results"
    (out_dir / f"{stem}.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    if args.mfu:
        table = mfu_table(report)
        (out_dir / "mfu.md").write_text("```\n" + table + "\n```\n", encoding="utf-8")
        print(table)
    else:
        markdown = markdown_report(report)
        (out_dir / "results.md").write_text(markdown, encoding="utf-8")
        plot(report, out_dir / "throughput.png")
        print(markdown)
    print(f"wrote {out_dir}")
    return report


if __name__ == "__main__":
    main()
