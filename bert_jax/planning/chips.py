"""Accelerator chips for the planner: peak dense bf16 FLOP/s, HBM size and bandwidth, interconnect.

Figures are the vendors' published per-chip numbers (sources in `Chip.source`, listed in
docs/scaling.md). HBM sizes are taken in the unit the page states (GB = 1e9 bytes, GiB = 2**30
bytes), so the fit verdict errs on the safe side where a page rounds. `interconnect_bandwidth` is
the chip's total bidirectional chip-to-chip bandwidth (TPU ICI, NVIDIA NVLink); the planner's
collective-time estimate lets a chip send at half of it.
"""

from __future__ import annotations

import dataclasses

from bert_jax.errors import UserError

GB = 1e9
GIB = 2**30


@dataclasses.dataclass(frozen=True)
class Chip:
    name: str
    peak_flops: float  # dense bf16 FLOP/s per chip (no sparsity)
    hbm_bytes: float
    hbm_bandwidth: float  # bytes/s
    interconnect_bandwidth: float  # bytes/s per chip, both directions, all links together
    source: str
    device_kinds: tuple[str, ...] = ()  # jax Device.device_kind prefixes naming this chip
    cores_per_chip: int = 1  # TensorCores; v4 and v5p run both as one JAX device (megacore)


_TPU_DOCS = "https://cloud.google.com/tpu/docs/"

CHIPS: dict[str, Chip] = {
    chip.name: chip
    for chip in (
        Chip(
            "v4",
            peak_flops=275e12,
            hbm_bytes=32 * GIB,
            hbm_bandwidth=1200 * GB,
            # The v4 page gives no per-chip ICI figure: 6 links x 45 GB/s each way, from the
            # JAX scaling book (jax-ml.github.io/scaling-book/tpus).
            interconnect_bandwidth=6 * 2 * 45 * GB,
            source=_TPU_DOCS + "v4 (ICI: jax-ml.github.io/scaling-book/tpus)",
            device_kinds=("TPU v4",),
            cores_per_chip=2,
        ),
        Chip(
            "v5e",
            peak_flops=197e12,
            hbm_bytes=16 * GB,
            hbm_bandwidth=819 * GB,
            interconnect_bandwidth=400 * GB,
            source=_TPU_DOCS + "v5e",
            device_kinds=("TPU v5 lite", "TPU v5e"),
        ),
        Chip(
            "v5p",
            peak_flops=459e12,
            hbm_bytes=95 * GIB,
            hbm_bandwidth=2765 * GB,
            interconnect_bandwidth=1200 * GB,
            source=_TPU_DOCS + "v5p",
            device_kinds=("TPU v5p", "TPU v5"),
            cores_per_chip=2,
        ),
        Chip(
            "v6e",
            peak_flops=918e12,
            hbm_bytes=32 * GB,
            hbm_bandwidth=1640 * GB,
            interconnect_bandwidth=800 * GB,
            source=_TPU_DOCS + "v6e",
            device_kinds=("TPU v6 lite", "TPU v6e"),
        ),
        Chip(
            "h100",
            peak_flops=989e12,
            hbm_bytes=80 * GB,
            hbm_bandwidth=3350 * GB,
            interconnect_bandwidth=900 * GB,
            source="https://www.nvidia.com/en-us/data-center/h100/ (H100 SXM datasheet)",
            device_kinds=("NVIDIA H100",),
        ),
        Chip(
            "h200",
            peak_flops=989e12,
            hbm_bytes=141 * GB,
            hbm_bandwidth=4800 * GB,
            interconnect_bandwidth=900 * GB,
            source="https://www.nvidia.com/en-us/data-center/h200/ (H200 SXM datasheet)",
            device_kinds=("NVIDIA H200",),
        ),
        Chip(
            "a100",
            peak_flops=312e12,
            hbm_bytes=80 * GB,
            hbm_bandwidth=2039 * GB,
            interconnect_bandwidth=600 * GB,
            source="https://www.nvidia.com/en-us/data-center/a100/ (A100 80GB SXM datasheet)",
            device_kinds=("NVIDIA A100",),
        ),
    )
}


def chip_by_name(name: str) -> Chip:
    key = name.strip().lower()
    if key not in CHIPS:
        raise UserError(f"unknown chip {name!r}; choose one of {sorted(CHIPS)}")
    return CHIPS[key]


def chip_for_device_kind(device_kind: str) -> Chip | None:
    """The chip whose device-kind prefix is the longest match ("TPU v5 lite" is v5e, not v5p)."""
    best, best_len = None, -1
    for chip in CHIPS.values():
        for prefix in chip.device_kinds:
            if device_kind.startswith(prefix) and len(prefix) > best_len:
                best, best_len = chip, len(prefix)
    return best
