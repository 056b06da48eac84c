"""The `python -m bert_jax.plan` command: its flags, compiling the plan or sweep with the
planner, and printing memory per chip, FLOPs, collectives and the roofline as a table."""

import json
import math
import os
import sys

from absl import app, flags
from ml_collections import config_flags

from bert_jax import entry
from bert_jax.errors import UserError


def define_flags() -> None:
    """Defines the command's flags: called by its entry module, so importing this module
    for its functions defines none (absl flags are global to the process)."""
    global _CONFIG, _TOPOLOGY, _OUT, _SWEEP, _LAYOUTS, _MICROBATCHES, _NUM_SLICES, _HBM_GIB
    global _BREAKDOWN
    _CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a config file.")
    _TOPOLOGY = flags.DEFINE_string("topology", None, "TPU slice, e.g. v5e:4x4 or v5p-32.")
    _OUT = flags.DEFINE_string("out", None, "Write the plan (or the sweep's choice) as JSON here.")
    _SWEEP = flags.DEFINE_bool(
        "sweep", False, "Try mesh layouts and microbatches; pick the fastest."
    )
    _LAYOUTS = flags.DEFINE_list(
        "sweep_layouts",
        None,
        "DATAxFSDPxTENSOR layouts to sweep (default: every split, tensor <= 8).",
    )
    _MICROBATCHES = flags.DEFINE_list(
        "sweep_microbatches", None, "Per-device microbatch sizes to try (default: every divisor)."
    )
    _NUM_SLICES = flags.DEFINE_integer(
        "num_slices", 1, "Slices of --topology joined by DCN (a multi-slice job; mesh.dcn_* apply)."
    )
    _HBM_GIB = flags.DEFINE_float(
        "hbm_gib",
        None,
        "HBM per chip to plan against, GiB (default: the chip's; less keeps headroom).",
    )
    _BREAKDOWN = flags.DEFINE_bool(
        "breakdown",
        False,
        "Also list the train step's bytes and FLOPs by group (attention, MLP, optimizer, ...) "
        "beside an analytic floor, and its top instructions (docs/scaling.md).",
    )
    flags.mark_flags_as_required(["config", "topology"])


GIB = 2**30


def _si(value: float, unit: str = "") -> str:
    for scale, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.2f} {prefix}{unit}"
    return f"{value:.0f} {unit}".rstrip()


def _seconds(value: float) -> str:
    if value < 1e-3:
        return f"{value * 1e6:.0f} us"
    return f"{value * 1e3:.1f} ms" if value < 1 else f"{value:.2f} s"


def format_plan(plan) -> str:
    """The planner's table for one compile."""
    chip = plan.chip
    mesh = " ".join(f"{k}={v}" for k, v in plan.mesh.items())
    lines = [
        f"topology   {plan.topology}: {plan.num_devices} x {plan.device_kind} ({chip.name}: "
        f"{_si(chip.peak_flops, 'FLOP/s')} bf16, HBM {plan.hbm_bytes / GIB:.2f} GiB at "
        f"{_si(chip.hbm_bandwidth, 'B/s')}, interconnect "
        f"{_si(chip.interconnect_bandwidth, 'B/s')})",
        f"mesh       {mesh}",
        f"batch      {plan.batch_size} x {plan.seq_len} tokens, grad_accum_steps "
        f"{plan.grad_accum_steps}: microbatch {plan.microbatch_per_device} per device; "
        f"{plan.num_params / 1e6:.1f}M parameters",
        "",
        f"{'memory per chip':<52}{'GiB':>9}{'of HBM':>9}",
    ]
    rows = [
        ("parameters (sharded shapes)", "parameters"),
        ("optimizer state (sharded shapes)", "optimizer_state"),
        ("batch", "batch"),
        ("arguments as compiled (state + batch, padded)", "arguments"),
        ("temporaries: activations, gradients, workspace", "temporaries"),
        ("autodiff residuals, traced before XLA fusion/remat", "activations_saved_estimate"),
        ("outputs not aliased to inputs", "outputs_not_aliased"),
        ("generated code", "generated_code"),
        ("total", "total"),
    ]
    for label, key in rows:
        if key in plan.memory:
            value = plan.memory[key]
            if value != value:  # NaN: the compiler refused before saying how much
                continue
            lines.append(f"  {label:<50}{value / GIB:>9.3f}{value / plan.hbm_bytes:>9.1%}")
    lines += _eval_lines(plan)
    if plan.error:
        needed = plan.memory["total"]
        lines += [
            "verdict    DOES NOT FIT: the compiler ran out of HBM"
            + (f" (needs {needed / GIB:.2f} GiB)" if needed == needed else ""),
            f"compiler   {plan.error}",
        ]
        return "\n".join(lines)
    margin = min(plan.margin_bytes, plan.eval_margin_bytes) / GIB
    verdict = f"FITS with {margin:.2f} GiB to spare" if plan.fits else (
        f"DOES NOT FIT: {-margin:.2f} GiB over")  # fmt: skip
    if not plan.fits and plan.margin_bytes >= 0:
        verdict += f" in the eval step (lower --config.eval_batch_size={plan.eval_batch_size})"
    lines += [
        f"verdict    {verdict}",
        "",
        "FLOPs per step (all chips)",
        f"  compiler cost analysis                         {plan.flops_per_step:.3e}",
        f"  6 * N * tokens (N = non-embedding parameters)  {plan.flops_6nt:.3e}",
        f"  model FLOPs (training.metrics, for MFU)          {plan.model_flops_per_step:.3e}",
        f"  HBM traffic per chip (compiler)                {_si(plan.hbm_traffic_per_device, 'B')}",
        "",
        f"{'collectives per step':<30}{'ops':>6}{'buffers':>14}{'sent per chip':>16}",
    ]
    for row in plan.collectives:
        lines.append(
            f"  {row['kind'] + ' over ' + str(row['group_size']):<28}{row['ops']:>6}"
            f"{_si(row['buffer_bytes'], 'B'):>14}{_si(row['bytes_per_device'], 'B'):>16}"
        )
    if not plan.collectives:
        lines.append("  none")
    t = plan.step_time
    lines += [
        "",
        f"step time  roofline estimate: compute {_seconds(t['compute'])}, HBM {_seconds(t['hbm'])},"
        f" collectives {_seconds(t['collectives'])} -> {_seconds(t['step'])} ({plan.bound}-bound)",
        f"estimate   {plan.examples_per_second:,.0f} {_rows(plan)}/s, MFU {plan.estimated_mfu:.1%} "
        f"(peak {_si(chip.peak_flops * plan.num_devices, 'FLOP/s')}); compiled in "
        f"{plan.compile_seconds:.0f} s",
    ]
    return "\n".join(lines)


def _rows(plan) -> str:
    """What a batch row is: an example, or packed rows of several."""
    if plan.sequences_per_row is None:
        return "examples"
    return f"packed rows (up to {plan.sequences_per_row} examples each)"


def _eval_lines(plan) -> list[str]:
    """The eval step's memory (it runs with the train state resident)."""
    memory = plan.eval_memory
    if "total" not in memory:
        return []
    rows = [
        ("parameters + batch as compiled", "arguments"),
        ("optimizer state, resident during evaluation", "optimizer_state_resident"),
        ("temporaries: activations, logits, workspace", "temporaries"),
        ("outputs and generated code", None),
        ("total", "total"),
    ]
    lines = [
        "",
        f"{'eval step: ' + str(plan.eval_batch_size) + ' rows per step (eval_batch_size)':<52}"
        f"{'GiB':>9}{'of HBM':>9}",
    ]
    for label, key in rows:
        value = (
            memory.get("outputs", math.nan) + memory.get("generated_code", 0)
            if key is None
            else memory.get(key, math.nan)
        )
        if value == value:
            lines.append(f"  {label:<50}{value / GIB:>9.3f}{value / plan.hbm_bytes:>9.1%}")
    if plan.eval_error:
        lines.append(f"eval       DOES NOT FIT: {plan.eval_error}")
    return lines


def format_sweep(sweep) -> str:
    """One row per compile, the recommendation last."""
    header = (
        f"{'mesh DxFxT':<12}{'micro':>6}{'accum':>6}{'GiB/chip':>10}{'fits':>6}"
        f"{'step':>11}{'bound':>13}{'examples/s':>12}{'MFU':>7}"
    )
    lines = [header]
    for p in sweep.plans:
        timing = (
            f"{_seconds(p.estimated_step_time_s):>11}{p.bound:>13}{p.examples_per_second:>12,.0f}"
            f"{p.estimated_mfu:>7.1%}"
            if not p.error
            else f"{'-':>11}{'-':>13}{'-':>12}{'-':>7}"
        )
        lines.append(
            f"{p.layout:<12}{p.microbatch_per_device:>6}{p.grad_accum_steps:>6}"
            f"{p.memory['total'] / GIB:>10.2f}{'yes' if p.fits else 'no':>6}{timing}"
        )
    for layout, why in sweep.skipped:
        lines.append(f"{layout:<12} skipped: {why}")
    if sweep.best is None:
        lines.append("recommendation: nothing fits; use more chips or a smaller microbatch/model")
    else:
        b = sweep.best
        lines.append(
            f"recommendation: mesh {b.layout} (data x fsdp x tensor), microbatch "
            f"{b.microbatch_per_device} per device, grad_accum_steps {b.grad_accum_steps}: "
            f"{_seconds(b.estimated_step_time_s)} per step, MFU {b.estimated_mfu:.1%}"
        )
    return "\n".join(lines)


def _progress(message: str) -> None:
    print(f"compiling {message} ...", file=sys.stderr, flush=True)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    entry.check_output_file(_OUT.value, "--out")  # before minutes of compiling, not after
    import jax

    from bert_jax.planning import planner

    if not os.environ.get("JAX_PLATFORMS"):
        # Planning needs the host CPU and libtpu's compiler only: local accelerators stay closed.
        jax.config.update("jax_platforms", "cpu")

    try:
        topology = planner.load_topology(_TOPOLOGY.value, _NUM_SLICES.value)
        hbm = _HBM_GIB.value * GIB if _HBM_GIB.value else None
        config = _CONFIG.value
        if _SWEEP.value:
            layouts = [planner.parse_layout(x) for x in _LAYOUTS.value or []] or None
            try:
                microbatches = [int(x) for x in _MICROBATCHES.value or []] or None
            except ValueError as err:
                raise UserError(f"--sweep_microbatches takes integers: {err}") from err
            sweep = planner.sweep_pretraining(
                config, topology, layouts, microbatches, hbm, progress=_progress
            )
            print(format_sweep(sweep))
            plan = sweep.best
            if plan is not None:
                print()
                print(format_plan(plan))
            result = dict(plan.to_json()) if plan else {"fits": False}
            result["sweep"] = [p.to_json() for p in sweep.plans]
            result["sweep_skipped"] = [{"layout": a, "why": b} for a, b in sweep.skipped]
        else:
            _progress(f"{topology.name} for the config's mesh")
            plan = planner.plan_pretraining(config, topology, hbm)
            print(format_plan(plan))
            result = plan.to_json()
        if _BREAKDOWN.value and plan is not None and plan.hlo_text:
            text, result["breakdown"] = planner.step_breakdown(plan)
            print()
            print(text)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    if _OUT.value:
        with open(_OUT.value, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)
        print(f"wrote {_OUT.value}")
