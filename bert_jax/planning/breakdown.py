"""The compiled step's bytes and FLOPs per group (attention, MLP, ..., optimizer) beside an
analytic floor per group computed from shapes: `python -m bert_jax.plan --breakdown`.

The compiled side comes from planning.hlo_costs; the floor's assumptions (each tensor moved once
per pass, fused attention, AdamW with float32 moments) are in docs/scaling.md, "Where the bytes
go".
"""

from __future__ import annotations

import dataclasses

from bert_jax.planning import hlo_costs

GROUPS = ("attention", "MLP", "LayerNorm", "embedding", "loss and heads", "optimizer",
          "gradient reduction")  # fmt: skip


@dataclasses.dataclass(frozen=True)
class StepShape:
    """What one chip computes per step: `rows` sequences of `seq_len` (all microbatches), with
    `predictions` masked-LM slots per row; `state_params` the parameters whose update it runs
    (replicated over data parallelism, split by fsdp and tensor)."""

    rows: int
    seq_len: int
    predictions: int
    hidden: int
    intermediate: int
    layers: int
    vocab: int  # padded rows of the word table
    state_params: float
    compute_bytes: int = 2  # bfloat16 activations and weight copies


def analytic_floor(s: StepShape) -> dict[str, float]:
    """Bytes per chip and step that each group cannot avoid moving, by the rules in
    docs/scaling.md: every activation written once and read once in forward and in backward
    (4 passes), every weight cast once (f32 -> compute dtype: 6 B), read twice (forward, input
    gradient) and its float32 gradient written once; fused attention (no [T, T] tensor)."""
    c, h, f, tokens = s.compute_bytes, s.hidden, s.intermediate, s.rows * s.seq_len
    weight = 4 + 2 + 2 * c + 4  # cast (read f32, write compute), two reads, f32 gradient

    def acts(elements_per_token: float) -> float:
        return 4 * c * elements_per_token * tokens * s.layers

    preds = s.rows * s.predictions
    return {
        "attention": acts(5 * h) + s.layers * 4 * h * h * weight,  # x, q, k, v, context
        "MLP": acts(2 * h + 2 * f) + s.layers * 2 * h * f * weight,
        "LayerNorm": acts(4 * h),  # two norms, input and output each
        "embedding": s.vocab * h * weight + 2 * tokens * h * c,  # table; lookup out and grad
        "loss and heads": 4 * 4 * preds * s.vocab + h * h * weight,  # f32 logits, 4 passes
        "optimizer": 28 * s.state_params,  # read p, m, v, g; write p, m, v: float32
        "gradient reduction": 8 * s.state_params,  # read and write the float32 gradients
    }


def format_breakdown(
    costs: list[hlo_costs.OpCost],
    floor: dict[str, float],
    tokens: int,
    compiler_bytes: float,
    hbm_bandwidth: float,
    top: int = 15,
) -> str:
    """The per-group table and the `top` instructions by HBM bytes."""
    groups = hlo_costs.by_group(costs)
    hbm = sum(g["hbm_bytes"] for g in groups.values())
    vmem = sum(g["vmem_bytes"] for g in groups.values())
    lines = [
        "where the bytes go (per chip and step; HLO instructions as scheduled, loops x trips)",
        f"  compiler's 'bytes accessed' {compiler_bytes / 1e9:.2f} GB; the instructions' "
        f"operands + outputs: {hbm / 1e9:.2f} GB in HBM, {vmem / 1e9:.2f} GB in VMEM "
        f"(on chip); {hbm / tokens / 1e3:.1f} kB of HBM per token",
        f"  HBM time at {hbm_bandwidth / 1e9:.0f} GB/s: {hbm / hbm_bandwidth * 1e3:.1f} ms by the "
        f"HBM-only count, {compiler_bytes / hbm_bandwidth * 1e3:.1f} ms by the compiler's "
        "(the roofline above uses the compiler's)",
        f"  {'group':<20}{'HBM GB':>9}{'VMEM GB':>9}{'analytic':>10}{'x':>7}"
        f"{'GFLOP':>10}{'ops':>7}",
    ]
    names = list(GROUPS) + [g for g in groups if g not in GROUPS]
    for name in names:
        g = groups.get(name, {"hbm_bytes": 0.0, "vmem_bytes": 0.0, "flops": 0.0, "ops": 0})
        bound = floor.get(name, 0.0)
        ratio = f"{g['hbm_bytes'] / bound:>7.2f}" if bound else f"{'-':>7}"
        lines.append(
            f"  {name:<20}{g['hbm_bytes'] / 1e9:>9.3f}{g['vmem_bytes'] / 1e9:>9.3f}"
            f"{bound / 1e9:>10.3f}{ratio}{g['flops'] / 1e9:>10.1f}{int(g['ops']):>7}"
        )
    total_floor = sum(floor.values())
    lines.append(f"  {'total':<20}{hbm / 1e9:>9.3f}{vmem / 1e9:>9.3f}{total_floor / 1e9:>10.3f}"
                 f"{hbm / total_floor:>7.2f}")  # fmt: skip
    lines.append(
        "  analytic: HBM bytes if every tensor crossed HBM once per pass (docs/scaling.md); "
        "x = HBM / analytic"
    )
    lines += ["", f"top {top} instructions by HBM bytes (x executions)"]
    for c in sorted(costs, key=lambda c: -c.hbm_bytes * c.executions)[:top]:
        scope = c.op_name.removeprefix("jit(train_step)/")
        lines.append(
            f"  {c.hbm_bytes * c.executions / 1e6:>9.1f} MB  {c.opcode:<12} {c.group:<20} "
            f"{scope[-70:]}"
        )
    return "\n".join(lines)
