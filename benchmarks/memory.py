r"""How large a batch trains: compiled memory estimates, and one real step to confirm.

  python -m benchmarks.memory                  # both questions below, ~10 min on 2 cores
  python -m benchmarks.memory --skip-gpu       # only the CPU search

1. The largest bert-base batch (seq 128, float32, AdamW) that trains on this machine: a search
   over batch sizes on XLA's buffer assignment for the compiled train step (`memory_analysis`:
   arguments + outputs - donated aliases + temporaries), then real steps in their own processes
   around that answer (down while a batch dies, up while RAM is left), whose peak RSS is reported.
2. bert-large at seq 512, batch 32, bf16, per accelerator: the same estimate for each remat
   policy against an 80 GB budget. It is compiled for the local backend, so on a CPU it is an
   upper bound on the GPU's need: XLA:CPU keeps f32 copies around bf16 matmuls, and its buffer
   assignment barely credits remat (measured: bert-mini@512 temporaries 3.60 GiB without remat,
   3.47 GiB with full remat), so run it on the accelerator for the remat savings.

Writes benchmarks/results/memory.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
from typing import Any

from tqdm.auto import tqdm

GIB = 2**30
RUNTIME_GIB = 2.0  # what a training process holds besides XLA's buffers (measured: 0.6-1.5 GiB)


def available_gib() -> float:
    """MemAvailable: what can be allocated now without swapping (other processes included)."""
    for line in pathlib.Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 2**20
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES") / GIB


def _config(preset: str, batch_size: int, seq_len: int, dtype: str, remat: str):
    from benchmarks.run_all import predictions_per_seq
    from bert_jax.pretraining.config import pretraining_config

    config = pretraining_config(
        preset, dtype=dtype, remat_policy=remat, max_position_embeddings=max(512, seq_len)
    )
    config.batch_size = batch_size
    config.data.max_seq_length = seq_len
    config.data.max_predictions_per_seq = predictions_per_seq(seq_len)
    config.mesh.data = 1
    return config


def step_memory(
    preset: str, batch_size: int, seq_len: int, dtype: str = "float32", remat: str = "none"
) -> dict[str, float]:
    """Compiled buffer sizes (bytes) of one train step on the first local device."""
    import jax

    from bert_jax.pretraining.step import batch_shapes, build_pretrainer
    from bert_jax.training import sharding

    config = _config(preset, batch_size, seq_len, dtype, remat)
    mesh = sharding.make_mesh(config.mesh, jax.devices()[:1])
    with jax.set_mesh(mesh):
        pretrainer = build_pretrainer(config, mesh)
        batch = {
            k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=pretrainer.batch_shardings[k])
            for k, v in batch_shapes(config).items()
        }
        compiled = pretrainer.train_step.lower(
            pretrainer.abstract_state, batch, jax.random.key(0)
        ).compile()
    analysis = compiled.memory_analysis()
    sizes = dict(
        arguments=analysis.argument_size_in_bytes,
        outputs=analysis.output_size_in_bytes,
        aliased=analysis.alias_size_in_bytes,
        temporaries=analysis.temp_size_in_bytes,
    )
    sizes["peak"] = sizes["arguments"] + sizes["outputs"] - sizes["aliased"] + sizes["temporaries"]
    return sizes


def largest_batch(
    preset: str, seq_len: int, budget_bytes: float, multiple: int = 8, limit: int = 4096, **kw
) -> tuple[int, dict[int, float]]:
    """The largest multiple of `multiple` whose estimated peak fits the budget (0 if none)."""
    peaks: dict[int, float] = {}

    def fits(batch: int) -> bool:
        if batch not in peaks:
            peaks[batch] = step_memory(preset, batch, seq_len, **kw)["peak"]
            tqdm.write(f"  batch {batch}: {peaks[batch] / GIB:.1f} GiB")
        return peaks[batch] <= budget_bytes

    low, high = 0, multiple
    while high <= limit and fits(high):
        low, high = high, high * 2
    while high - low > multiple:
        middle = (low + high) // 2 // multiple * multiple
        low, high = (middle, high) if fits(middle) else (low, middle)
    return low, peaks


def run_steps(preset: str, batch_size: int, seq_len: int, log_dir: pathlib.Path) -> float | None:
    """Peak RSS (MiB) of a process that builds bert_jax and trains two steps at this batch (the
    compiling one and a steady one), or None when it dies (out of memory: the kernel kills it)."""
    from benchmarks.run_all import Worker, make_spec, parse_args, worker_env

    args = parse_args(["--warmup", "0"])
    spec = make_spec("bert_jax", preset, batch_size, seq_len, args)
    log = log_dir / f"memory_{preset}_b{batch_size}.log"
    worker = None
    try:
        worker = Worker(spec, sys.executable, worker_env("cpu"), log)
        worker.request(cmd="run", steps=1)
        return worker.request(cmd="finish")["peak_rss_mib"]
    except RuntimeError as err:
        tqdm.write(f"  batch {batch_size} did not train: {err}")
        return None
    finally:
        if worker is not None:
            worker.close()


def confirm_largest(
    preset: str, estimate: int, seq_len: int, ram_gib: float, step_gib: float, log_dir, multiple=8
) -> dict[str, Any]:
    """Real steps around the estimated answer: down by `multiple` while a batch dies, then one
    batch up when the last one left more than `step_gib` (the estimated cost of `multiple`
    rows) of RAM unused. Returns the largest batch that trained, the peak RSS of every try."""
    tried: dict[int, float | None] = {}
    batch = estimate
    # Stops at a batch already tried: the one above the largest that trained died, or the one
    # below the smallest that died trained.
    while batch > 0 and batch not in tried:
        tqdm.write(f"  training two steps at batch {batch}")
        rss = tried[batch] = run_steps(preset, batch, seq_len, log_dir)
        if rss is None:
            batch -= multiple
        elif ram_gib - rss / 1024 > step_gib:
            batch += multiple
        else:
            break
    trained = [b for b, rss in tried.items() if rss is not None]
    return dict(
        largest_trained=max(trained) if trained else 0,
        peak_rss_gib={b: None if rss is None else rss / 1024 for b, rss in sorted(tried.items())},
    )


def main(argv=None) -> dict[str, Any]:
    from benchmarks.run_all import RESULTS_DIR

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ram_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GIB
    parser.add_argument("--preset", default="base")
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument(
        "--budget-gib",
        type=float,
        default=round(ram_gib - RUNTIME_GIB, 1),
        help=f"host memory the step's buffers may use (default: RAM less {RUNTIME_GIB} GiB for "
        "the interpreter, libraries and compiler)",
    )
    parser.add_argument("--skip-verify", action="store_true", help="estimate only, run no step")
    parser.add_argument("--skip-gpu", action="store_true", help="skip the bert-large@512 estimate")
    parser.add_argument("--gpu-budget-gib", type=float, default=80 * 1e9 / GIB)
    parser.add_argument("--gpu-preset", default="large")
    parser.add_argument("--gpu-batch", type=int, default=32)
    parser.add_argument("--gpu-seq-len", type=int, default=512)
    parser.add_argument("--output-dir", default=str(RESULTS_DIR))
    args = parser.parse_args(argv)
    out_dir = pathlib.Path(args.output_dir)
    (out_dir / "logs").mkdir(parents=True, exist_ok=True)

    tqdm.write(
        f"bert-{args.preset} seq {args.seq_len}: largest batch within "
        f"{args.budget_gib:.1f} GiB (RAM {ram_gib:.1f} GiB)"
    )
    batch, peaks = largest_batch(args.preset, args.seq_len, args.budget_gib * GIB)
    cpu = dict(
        preset=args.preset,
        seq_len=args.seq_len,
        dtype="float32",
        ram_gib=ram_gib,
        budget_gib=args.budget_gib,
        largest_batch=batch,
        estimated_peak_gib={b: p / GIB for b, p in sorted(peaks.items())},
    )
    needed_gib = peaks.get(batch, 0) / GIB
    if batch and not args.skip_verify and available_gib() < needed_gib:
        cpu["verify_skipped"] = (
            f"only {available_gib():.1f} GiB available now, {needed_gib:.1f} GiB needed: "
            "rerun on an idle machine"
        )
        tqdm.write(f"  not training: {cpu['verify_skipped']}")
    elif batch and not args.skip_verify:
        step_gib = (peaks[batch] - peaks.get(batch - 8, peaks[batch] * (batch - 8) / batch)) / GIB
        cpu.update(
            confirm_largest(
                args.preset, batch, args.seq_len, available_gib(), step_gib, out_dir / "logs"
            )
        )
    report: dict[str, Any] = dict(cpu=cpu)
    if "largest_trained" in cpu:
        measured = ", ".join(
            f"{b}: " + ("died" if rss is None else f"{rss:.1f} GiB")
            for b, rss in cpu["peak_rss_gib"].items()
        )
        outcome = f"trained {cpu['largest_trained']} (peak RSS by batch: {measured})"
    else:
        outcome = cpu.get("verify_skipped", "not run")
    lines = [
        f"largest bert-{args.preset} batch at seq {args.seq_len}, float32, on {ram_gib:.0f} GiB: "
        f"estimated {batch} ({peaks.get(batch, 0) / GIB:.1f} GiB of XLA buffers); {outcome}"
    ]
    if not args.skip_gpu:
        gpu = []
        for remat in ("none", "dots_no_batch", "full"):
            tqdm.write(
                f"bert-{args.gpu_preset}@{args.gpu_seq_len} batch {args.gpu_batch} bf16, "
                f"remat {remat}"
            )
            sizes = step_memory(
                args.gpu_preset, args.gpu_batch, args.gpu_seq_len, dtype="bfloat16", remat=remat
            )
            gpu.append(
                dict(
                    remat=remat,
                    **{k: v / GIB for k, v in sizes.items()},
                    fits=sizes["peak"] <= args.gpu_budget_gib * GIB,
                )
            )
        report["accelerator"] = dict(
            preset=args.gpu_preset,
            seq_len=args.gpu_seq_len,
            batch_size=args.gpu_batch,
            dtype="bfloat16",
            budget_gib=args.gpu_budget_gib,
            by_remat=gpu,
        )
        lines.append(
            f"bert-{args.gpu_preset}@{args.gpu_seq_len}, batch {args.gpu_batch}, bf16, "
            f"against {args.gpu_budget_gib:.1f} GiB (80 GB):"
        )
        lines += [
            f"  remat {g['remat']:<14} estimated {g['peak']:6.1f} GiB "
            f"(temporaries {g['temporaries']:.1f}) {'fits' if g['fits'] else 'does not fit'}"
            for g in gpu
        ]
    (out_dir / "memory.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    print("\n".join(lines))
    return report


if __name__ == "__main__":
    main()
