"""Metric writers (metrics.jsonl + TensorBoard, process 0 only), model FLOPs and MFU."""

from __future__ import annotations

import functools
import json
import math
import time

import jax
import numpy as np
from etils import epath

from bert_jax import chips
from bert_jax.modeling import BertConfig

# Dense bf16 peak FLOP/s per device kind: derived from the planner's chip table (bert_jax.chips),
# so the training loop's MFU and the planner's estimates use the same figures.
PEAK_FLOPS_BY_DEVICE_KIND = {
    kind: chip.peak_flops for chip in chips.CHIPS.values() for kind in chip.device_kinds
}


def peak_flops_per_device(device=None, cpu_peak_flops: float = 0.0) -> float:
    """Peak FLOP/s of one device: a table for accelerators; for CPUs cpu_peak_flops, or when that
    is 0 the host's fp32 matmul rate measured now (`measured_cpu_matmul_flops`)."""
    device = device or jax.devices()[0]
    if device.platform == "cpu":
        host = cpu_peak_flops or measured_cpu_matmul_flops()
        # Fake host devices (xla_force_host_platform_device_count) share the same cores.
        return host / max(jax.local_device_count(), 1)
    chip = chips.chip_for_device_kind(getattr(device, "device_kind", ""))
    return chip.peak_flops if chip is not None else float("nan")


@functools.cache
def measured_cpu_matmul_flops(size: int = 2048, repeats: int = 10) -> float:
    """This host's fp32 matmul rate, FLOP/s: the fastest of `repeats` size^3 JAX matmuls (about
    half a second). CPU peaks differ by vector width and clock more than a table can follow: a
    2-core AVX-512 EPYC VM measures ~470 GFLOP/s, over twice the 195 GFLOP/s once assumed here."""
    # On this process's own CPU device, outside any active mesh: in a multi-process job the mesh
    # spans the other processes' devices, and this must stay a local, collective-free program.
    device = jax.local_devices(backend="cpu")[0]
    with jax.set_mesh(None):
        a = jax.device_put(np.ones((size, size), np.float32), device)
        matmul = jax.jit(lambda x: x @ x)
        matmul(a).block_until_ready()
        best = math.inf
        for _ in range(repeats):
            start = time.perf_counter()
            matmul(a).block_until_ready()
            best = min(best, time.perf_counter() - start)
    return 2.0 * size**3 / best


def pretraining_flops_per_example(config: BertConfig, seq_len: int, num_predictions: int) -> float:
    """Model FLOPs of one training example (forward + backward = 3x forward), matmuls only.

    Encoder: 2 FLOPs per multiply-add over the layer weights at every position, plus attention
    scores and context (2 * 2 * T^2 * H per layer). Sparse MLM head at num_predictions positions.
    """
    h, f, v, t = config.hidden_size, config.intermediate_size, config.vocab_size, seq_len
    per_token_layer = 2 * (4 * h * h + 2 * h * f)
    attention = 2 * 2 * t * t * h
    encoder = config.num_hidden_layers * (t * per_token_layer + attention)
    heads = 2 * num_predictions * (h * h + h * v) + 2 * (h * h + 2 * h)
    return 3.0 * (encoder + heads)


def _is_local(path) -> bool:
    return "://" not in str(path)


class MetricWriter:
    """Writes scalars to WORKDIR/metrics.jsonl and TensorBoard; a no-op except on process 0."""

    def __init__(self, workdir, enabled: bool | None = None):
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self.workdir = epath.Path(workdir)
        self._jsonl = None
        self._lines: list[str] | None = None  # object stores (gs://) cannot append
        self._tb = None
        if self.enabled:
            self.workdir.mkdir(parents=True, exist_ok=True)
            path = self.workdir / "metrics.jsonl"
            if _is_local(self.workdir):
                self._jsonl = open(path, "a", encoding="utf-8")
            else:
                self._lines = path.read_text().splitlines(keepends=True) if path.exists() else []
            try:
                from tensorboardX import SummaryWriter

                self._tb = SummaryWriter(str(self.workdir / "tensorboard"))
            except ImportError:  # TensorBoard is optional; metrics.jsonl always exists
                self._tb = None

    def write(self, step: int, scalars: dict[str, float]) -> None:
        if not self.enabled:
            return
        clean = {k: float(v) for k, v in scalars.items() if v is not None}
        record = {
            "step": int(step),
            **{k: (v if math.isfinite(v) else None) for k, v in clean.items()},
        }
        line = json.dumps(record) + "\n"
        if self._jsonl is not None:
            self._jsonl.write(line)
            self._jsonl.flush()
        else:
            self._lines.append(line)
            (self.workdir / "metrics.jsonl").write_text("".join(self._lines))
        if self._tb is not None:
            for key, value in clean.items():
                if math.isfinite(value):
                    self._tb.add_scalar(key, value, int(step))
            self._tb.flush()

    def close(self) -> None:
        if self._jsonl:
            self._jsonl.close()
        if self._tb is not None:
            self._tb.close()


def read_metrics(workdir) -> list[dict]:
    """Records of WORKDIR/metrics.jsonl; a resumed run may repeat steps, the last one wins."""
    path = epath.Path(workdir) / "metrics.jsonl"
    if not path.exists():
        return []
    by_step: dict[tuple[int, bool], dict] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        record = json.loads(line)
        is_eval = any(k.startswith("eval_") for k in record)
        by_step[(record["step"], is_eval)] = record
    return [by_step[k] for k in sorted(by_step)]
