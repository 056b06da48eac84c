"""Metric writers (metrics.jsonl + TensorBoard, process 0 only) and readers, model FLOPs and MFU."""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import pathlib
import shutil
import sys
import tempfile
import time

import jax
import numpy as np
from etils import epath

from bert_jax.model.modeling import BertConfig
from bert_jax.paths import is_remote
from bert_jax.planning import chips

# Dense bf16 peak FLOP/s per device kind: derived from the planner's chip table
# (bert_jax.planning.chips), so the training loop's MFU and the planner's estimates use the
# same figures.
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
def measured_cpu_matmul_flops(size: int = 1024, repeats: int = 10) -> float:
    """This host's fp32 matmul rate, FLOP/s: the fastest of `repeats` size^3 JAX matmuls (about
    a quarter of a second; 2048^3 ones measure no higher and take ten times as long). CPU peaks
    differ by vector width and clock more than a table can follow: a 2-core AVX-512 EPYC VM
    measures ~470 GFLOP/s, over twice the 195 GFLOP/s once assumed here."""
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

    Encoder: 2 FLOPs per multiply-add over the layer weights at every position (a gated
    feed-forward, geglu / swiglu, has a third F x H matrix), plus attention scores and context,
    2 * 2 * T * K * H per layer, K the keys a query attends (T; window + 1 on a sliding-window
    layer). Sparse MLM head at num_predictions positions.
    """
    h, f, v, t = config.hidden_size, config.intermediate_size, config.vocab_size, seq_len
    ffn_matrices = 2 if config.ffn_type == "mlp" else 3
    per_token_layer = 2 * (4 * h * h + ffn_matrices * h * f)
    encoder = 0
    for layer in range(config.num_hidden_layers):
        window = config.layer_window(layer)
        keys = min(t, window + 1) if window else t
        encoder += t * per_token_layer + 2 * 2 * t * keys * h
    heads = 2 * num_predictions * (h * h + h * v) + 2 * (h * h + 2 * h)
    return 3.0 * (encoder + heads)


def throughput(steps_per_sec: float, steps: int, counts: dict[str, float]) -> dict[str, float]:
    """Rates at `steps_per_sec` from counts summed over `steps` steps: counts["examples"] (several
    per packed row), counts["tokens"] (rows x row length, padding included) and
    counts["real_tokens"]; padding_fraction is the share of positions that are padding."""
    per_second = steps_per_sec / max(steps, 1)
    return {
        "steps_per_sec": steps_per_sec,
        "examples_per_sec": counts["examples"] * per_second,
        "tokens_per_sec": counts["tokens"] * per_second,
        "real_tokens_per_sec": counts["real_tokens"] * per_second,
        "padding_fraction": 1.0 - counts["real_tokens"] / max(counts["tokens"], 1.0),
    }


METRICS_FILE = "metrics.jsonl"  # a local workdir: one file, appended a line per record
METRICS_PARTS = "metrics"  # gs:// and other object stores: metrics/part-NNNNN.jsonl
RECORDS_PER_PART = 256  # a part is rewritten whole at each record, so this bounds every write


def _part_name(index: int) -> str:
    return f"part-{index:05d}.jsonl"


def _part_index(path) -> int | None:
    name = epath.Path(path).name
    digits = name.removeprefix("part-").removesuffix(".jsonl")
    return int(digits) if name.startswith("part-") and digits.isdigit() else None


def metrics_files(workdir) -> list[epath.Path]:
    """WORKDIR's metrics files in the order they were written: metrics.jsonl, then the parts."""
    workdir = epath.Path(workdir)
    files = [workdir / METRICS_FILE] if (workdir / METRICS_FILE).exists() else []
    parts_dir = workdir / METRICS_PARTS
    if parts_dir.is_dir():
        parts = [(_part_index(p), p) for p in parts_dir.iterdir()]
        files += [p for index, p in sorted((i, p) for i, p in parts if i is not None)]
    return files


def _summary_writer_class():
    """tensorboardX's SummaryWriter, imported without torch: tensorboardX imports torch, when it is
    installed, only to accept torch tensors (1-2 s of every run's start-up); these are floats."""
    blocked = "torch" not in sys.modules
    if blocked:
        sys.modules["torch"] = None  # `import torch` raises ImportError while this entry is None
    try:
        from tensorboardX import SummaryWriter
    finally:
        if blocked:
            del sys.modules["torch"]
    return SummaryWriter


class MetricWriter:
    """Writes scalars to WORKDIR's metrics files and TensorBoard; a no-op except on process 0.

    A local workdir gets one `metrics.jsonl`, appended and flushed a line at a time (`tail -f`
    follows it). Object stores (gs://) cannot append, and rewriting one growing file at every log
    costs O(records) per write; there each record goes to the newest of `metrics/part-NNNNN.jsonl`,
    rewritten whole (so every record is stored as soon as it is logged) until it holds
    `records_per_part` records, then a new part starts. A resumed run starts a new part; readers
    (`read_metrics`) merge them in order. TensorBoard's event file is rotated the same way there.

    A process killed mid-line leaves a torn last line in metrics.jsonl; the next writer ends it
    with a newline first, so it never merges with the next run's first record, and readers skip
    (and count) it.
    """

    def __init__(self, workdir, enabled: bool | None = None, records_per_part=RECORDS_PER_PART):
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self.workdir = epath.Path(workdir)
        self.records_per_part = int(records_per_part)
        self._remote = is_remote(self.workdir)
        self._jsonl = None
        self._part: list[str] = []  # object stores: the records of the current part
        self._part_index = 0
        self._tb = None
        self._tb_records = 0
        self._tb_part = 0
        if not self.enabled:
            return
        self.workdir.mkdir(parents=True, exist_ok=True)
        if not self._remote:
            self._jsonl = open(self.workdir / METRICS_FILE, "a+b")
            self._end_torn_line()
        else:
            written = [_part_index(p) for p in metrics_files(self.workdir)]
            self._part_index = max((i for i in written if i is not None), default=-1) + 1
            self._tb_part = self._part_index
        self._open_tensorboard()

    def _end_torn_line(self) -> None:
        """A previous process killed mid-write left a line without its newline: end it."""
        size = self._jsonl.seek(0, 2)
        if size:
            self._jsonl.seek(size - 1)
            if self._jsonl.read(1) != b"\n":
                self._jsonl.write(b"\n")
                self._jsonl.flush()

    def _open_tensorboard(self) -> None:
        try:
            SummaryWriter = _summary_writer_class()
        except ImportError:  # TensorBoard is optional; the metrics files always exist
            return
        if not self._remote:
            self._tb = SummaryWriter(str(self.workdir / "tensorboard"))
            return
        # Remote: tensorboardX would re-upload its whole event file at every flush (and again
        # when garbage-collected). Write each part's events locally and upload that file; the
        # suffix keeps part files apart (the timestamp in their names is in whole seconds).
        self._tb_local = pathlib.Path(tempfile.mkdtemp(prefix="bert_jax_tensorboard_"))
        self._tb = SummaryWriter(str(self._tb_local), filename_suffix=f".part{self._tb_part:05d}")

    def _upload_tensorboard(self) -> None:
        remote = self.workdir / "tensorboard"
        remote.mkdir(parents=True, exist_ok=True)
        for event_file in self._tb_local.iterdir():
            (remote / event_file.name).write_bytes(event_file.read_bytes())

    def _close_tensorboard(self) -> None:
        self._tb.close()
        self._tb = None
        if self._remote:
            self._upload_tensorboard()
            shutil.rmtree(self._tb_local, ignore_errors=True)

    def write(self, step: int, scalars: dict[str, float]) -> None:
        if not self.enabled:
            return
        clean = {k: float(v) for k, v in scalars.items() if v is not None}
        record = {
            "step": int(step),
            **{k: (v if math.isfinite(v) else None) for k, v in clean.items()},
        }
        line = json.dumps(record) + "\n"
        if not self._remote:
            self._jsonl.write(line.encode("utf-8"))  # one write: a line is whole or torn
            self._jsonl.flush()
        else:
            self._write_part(line)
        if self._tb is not None:
            for key, value in clean.items():
                if math.isfinite(value):
                    self._tb.add_scalar(key, value, int(step))
            self._tb.flush()
            if self._remote:
                self._tb_records += 1
                if self._tb_records < self.records_per_part:
                    self._upload_tensorboard()
                else:
                    self._close_tensorboard()
                    self._tb_records, self._tb_part = 0, self._tb_part + 1
                    self._open_tensorboard()

    def _write_part(self, line: str) -> None:
        if len(self._part) >= self.records_per_part:
            self._part, self._part_index = [], self._part_index + 1
        self._part.append(line)
        parts_dir = self.workdir / METRICS_PARTS
        parts_dir.mkdir(parents=True, exist_ok=True)
        # An object is replaced atomically: a crash leaves the previous version, never half.
        (parts_dir / _part_name(self._part_index)).write_text("".join(self._part))

    def close(self) -> None:
        if self._jsonl:
            self._jsonl.close()
            self._jsonl = None
        if self._tb is not None:
            self._close_tensorboard()


@dataclasses.dataclass
class MetricsLog:
    """What `load_metrics` read: the records (a step logged twice keeps its later record) and
    the lines it skipped because they were not a JSON record with a step."""

    records: list[dict]
    malformed: dict[str, int]  # file -> lines skipped

    @property
    def malformed_lines(self) -> int:
        return sum(self.malformed.values())

    def warning(self) -> str | None:
        if not self.malformed:
            return None
        where = ", ".join(f"{n} in {path}" for path, n in self.malformed.items())
        return (
            f"skipped {self.malformed_lines} malformed metrics line(s) ({where}): "
            "a process killed mid-write leaves one"
        )


def load_metrics(workdir) -> MetricsLog:
    """Records of WORKDIR's metrics files (metrics.jsonl and metrics/part-*.jsonl, in order);
    a resumed run may repeat steps, the last one wins. Malformed lines are skipped and counted."""
    by_step: dict[tuple[int, bool], dict] = {}
    malformed: dict[str, int] = {}
    for path in metrics_files(workdir):
        for line in path.read_bytes().decode("utf-8", "replace").splitlines():
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                step = record["step"]
                if not isinstance(step, int):
                    raise TypeError(step)
            except (ValueError, KeyError, TypeError):
                malformed[str(path)] = malformed.get(str(path), 0) + 1
                continue
            is_eval = any(k.startswith("eval_") for k in record)
            by_step[(step, is_eval)] = record
    return MetricsLog([by_step[k] for k in sorted(by_step)], malformed)


def read_metrics(workdir) -> list[dict]:
    """The records of `load_metrics(workdir)`."""
    return load_metrics(workdir).records
