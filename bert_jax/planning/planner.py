"""Plan a pretraining run on a TPU slice from a machine without one.

Compiles `build_pretrainer(config, mesh).train_step` (the step `bert_jax.pretrain` runs) ahead of
time for a libtpu topology and turns its memory, FLOPs and collectives into a roofline estimate.

    plan = plan_pretraining(config, load_topology("v5e:4x4"))
    print(planning.cli.format_plan(plan))  # the CLI table; plan.to_json() for the numbers
See docs/scaling.md.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import time
from typing import Any

import jax
from jax.extend.core import Literal

from bert_jax.data.packed_examples import batch_predictions, sequences_per_row
from bert_jax.errors import UserError
from bert_jax.planning import breakdown, chips, hlo_costs
from bert_jax.planning.hlo_collectives import parse_collectives, summarize_collectives
from bert_jax.pretraining.config import eval_batch_size, validate_pretraining_config
from bert_jax.pretraining.step import (
    Pretrainer,
    batch_shapes,
    build_pretrainer,
    pretraining_forward,
    pretraining_sums,
    uses_nsp,
)
from bert_jax.training import sharding
from bert_jax.training.metrics import pretraining_flops_per_example

_SLICE = re.compile(r"^(?P<gen>v4|v5e|v5litepod|v5p|v6e)-(?P<count>\d+)$")
_TOPOLOGY = re.compile(r"^(?P<gen>v4|v5e|v5p|v6e):(?P<shape>\d+(?:x\d+){1,2})$")
# Chips -> libtpu topology shape (Cloud accelerator types name v4/v5p by TensorCores).
_SHAPES_2D = {1: "1x1", 4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8", 128: "8x16",
              256: "16x16"}  # fmt: skip
_SHAPES_3D = {4: "2x2x1", 8: "2x2x2", 16: "2x2x4", 32: "2x4x4", 64: "4x4x4", 128: "4x4x8",
              256: "4x8x8", 512: "8x8x8", 1024: "8x8x16", 2048: "8x16x16",
              4096: "16x16x16"}  # fmt: skip
_HBM_EXHAUSTED = re.compile(r"Used ([\d.]+)([KMGT]?) of ([\d.]+)([KMGT]?) hbm")
_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


class MissingLibtpuError(UserError):
    """Compiling for a TPU topology needs the libtpu wheel."""


def libtpu_install_hint() -> str:
    return (
        'pip install -e ".[tpu]" in the repository '
        f'(or: pip install "jax[tpu]=={jax.__version__}"; Linux x86-64, about 700 MB)'
    )


def require_libtpu() -> None:
    if os.environ.get("TPU_LIBRARY_PATH"):
        return
    try:
        import libtpu  # noqa: F401
    except ImportError as err:
        raise MissingLibtpuError(
            "planning for a TPU topology needs libtpu, which is not installed: "
            + libtpu_install_hint()
        ) from err


def configure_libtpu_environment() -> None:
    """Lets libtpu start on a machine that is not a TPU VM: no metadata server to ask, no lock
    shared with other jax processes (it guards real chips; compile-only devices use none)."""
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
    os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
    os.environ.setdefault("TPU_MIN_LOG_LEVEL", "3")


@dataclasses.dataclass(frozen=True)
class Topology:
    name: str  # libtpu's name, e.g. "v5e:4x4"; "2 x v5e:4x4" for two slices joined by DCN
    chip: chips.Chip
    devices: tuple  # compile-only jax devices, one per chip
    num_slices: int = 1


def topology_name(name: str) -> str:
    """'v5e:4x4' as given; Cloud accelerator types ('v5e-16', 'v5litepod-16', 'v5p-32', 'v4-32')
    become libtpu names ('v5e:4x4', 'v5p:2x2x4', 'v4:2x2x4')."""
    name = name.strip().lower()
    if _TOPOLOGY.match(name):
        return name
    if m := _SLICE.match(name):
        gen = "v5e" if m.group("gen") == "v5litepod" else m.group("gen")
        count = int(m.group("count"))
        if gen in ("v4", "v5p"):  # named by TensorCores, two per chip
            shape = _SHAPES_3D.get(count // 2) if count % 2 == 0 else None
        else:
            shape = _SHAPES_2D.get(count)
        if shape:
            return f"{gen}:{shape}"
    raise UserError(
        f"topology {name!r} is not understood; give libtpu's name (v5e:4x4, v5p:2x2x4, v4:2x2x4, "
        "v6e:4x4) or a Cloud accelerator type (v5e-16, v5p-32, v4-32, v6e-16)"
    )


def load_topology(name: str, num_slices: int = 1) -> Topology:
    """The compile-only devices of a TPU slice (or of num_slices of them, a multi-slice job);
    raises MissingLibtpuError without libtpu."""
    name = topology_name(name)
    if num_slices < 1:
        raise UserError(f"num_slices must be >= 1, got {num_slices}")
    require_libtpu()
    configure_libtpu_environment()
    from jax.experimental import topologies

    generation = name.split(":")[0]
    chip = chips.chip_by_name(generation)
    # v4 runs its two TensorCores as one device ("megacore"), as on a real v4 slice.
    kwargs = {"chip_config_name": "megacore"} if generation == "v4" else {}
    if num_slices > 1:
        kwargs["num_slices"] = num_slices
    try:
        desc = topologies.get_topology_desc(topology_name=name, platform="tpu", **kwargs)
    except RuntimeError as err:
        if "not installed" in str(err):
            hint = libtpu_install_hint()
            raise MissingLibtpuError(f"libtpu could not be loaded: {hint}") from err
        raise UserError(f"libtpu rejected topology {name!r}: {str(err).splitlines()[0]}") from err
    label = f"{num_slices} x {name}" if num_slices > 1 else name
    return Topology(name=label, chip=chip, devices=tuple(desc.devices), num_slices=num_slices)


@dataclasses.dataclass
class Plan:
    """What compiling the train step and the eval step says about one (config, topology, mesh).

    Memory is per chip in bytes; FLOPs are per step over all chips; times are seconds. The
    verdict `fits` needs both steps to fit: evaluation runs with the train state resident.
    """

    topology: str
    chip: chips.Chip
    device_kind: str
    num_devices: int
    mesh: dict[str, int]
    batch_size: int
    grad_accum_steps: int
    seq_len: int
    num_params: int
    hbm_bytes: float
    memory: dict[str, float]
    flops_6nt: float  # 6 x non-embedding parameters x tokens
    model_flops_per_step: (
        float  # bert_jax.training.metrics' count, which the training loop's MFU uses
    )
    fits: bool = False
    flops_per_step: float = math.nan  # the compiler's cost analysis
    hbm_traffic_per_device: float = math.nan
    collectives: list[dict] = dataclasses.field(default_factory=list)
    step_time: dict[str, float] = dataclasses.field(default_factory=dict)
    bound: str = ""
    compile_seconds: float = 0.0
    error: str = ""  # the compiler's message when it refused (out of HBM)
    sequences_per_row: int | None = None  # data.packing: up to this many examples per row
    eval_batch_size: int = 0  # global rows per eval step
    eval_memory: dict[str, float] = dataclasses.field(default_factory=dict)
    eval_error: str = ""
    hlo_text: str = dataclasses.field(default="", repr=False)  # the compiled train step
    step_shape: breakdown.StepShape | None = None

    @property
    def microbatch_per_device(self) -> int:
        data_parallel = self.mesh["data"] * self.mesh["fsdp"]
        return self.batch_size // (data_parallel * self.grad_accum_steps)

    @property
    def layout(self) -> str:
        return "x".join(str(self.mesh[a]) for a in sharding.MESH_AXES)

    @property
    def margin_bytes(self) -> float:
        return self.hbm_bytes - self.memory["total"]

    @property
    def eval_margin_bytes(self) -> float:
        return self.hbm_bytes - self.eval_memory.get("total", math.nan)

    @property
    def estimated_step_time_s(self) -> float:
        return self.step_time.get("step", math.nan)

    @property
    def estimated_mfu(self) -> float:
        peak = self.chip.peak_flops * self.num_devices
        return self.model_flops_per_step / (self.estimated_step_time_s * peak)

    @property
    def examples_per_second(self) -> float:
        """Rows per second: examples, or with packing rows of up to sequences_per_row."""
        return self.batch_size / self.estimated_step_time_s

    def to_json(self) -> dict:
        fields = dataclasses.asdict(self)
        fields.pop("hlo_text")
        fields["chip"] = self.chip.name
        for name in ("memory", "eval_memory"):
            fields[f"{name.replace('memory', '')}per_device_memory_bytes"] = {
                k: None if v != v else v for k, v in fields.pop(name).items()
            }
        fields["step_time_breakdown_s"] = fields.pop("step_time")
        for name in ("microbatch_per_device", "margin_bytes", "eval_margin_bytes",
                     "estimated_step_time_s", "estimated_mfu", "examples_per_second"):  # fmt: skip
            fields[name] = getattr(self, name)
        # NaN is not JSON: unknowns (nothing compiled) become null.
        return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in fields.items()}


def _shard_bytes(tree) -> int:
    """Bytes one device holds of a tree of ShapeDtypeStructs with NamedShardings; a dimension
    that does not divide evenly (a 30522-row vocabulary over 4) is padded up, as XLA does."""
    total = 0
    for x in jax.tree.leaves(tree):
        spec, mesh_shape = x.sharding.spec, x.sharding.mesh.shape
        shard = []
        for dim, size in enumerate(x.shape):
            axes = spec[dim] if dim < len(spec) and spec[dim] is not None else ()
            axes = (axes,) if isinstance(axes, str) else axes
            shard.append(-(-size // math.prod(mesh_shape[a] for a in axes)))
        total += math.prod(shard) * x.dtype.itemsize
    return total


def _embedding_param_count(params) -> int:
    """Parameters of the word, position and token-type tables."""
    tables = params["bert"]["embeddings"]
    return sum(x.size for name in tables if name.endswith("_embeddings") for x in
               jax.tree.leaves(tables[name]))  # fmt: skip


def saved_activation_bytes(pretrainer: Pretrainer, rows: int) -> int:
    """Bytes the backward pass keeps from the forward pass of `rows` examples (one device's
    microbatch; tensor parallelism would split part of it): the model's VJP residuals that are not
    parameters, traced, not compiled."""
    params = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), pretrainer.abstract_state.params
    )
    batch = batch_shapes(pretrainer.config, rows)

    def residuals(params, batch, rng):
        def loss(params):
            output = pretraining_forward(pretrainer.model, params, batch, rng)
            sums = pretraining_sums(output, batch, uses_nsp(pretrainer.config))
            return sums["mlm_loss_sum"] + sums.get("nsp_loss_sum", 0.0)

        return jax.vjp(loss, params)[1]

    closed = jax.make_jaxpr(residuals)(params, batch, jax.eval_shape(lambda: jax.random.key(0)))
    jaxpr = closed.jaxpr
    # Residuals computed from the parameters alone (a transposed embedding, say) are not
    # activations: keep only those downstream of the batch or the dropout key.
    downstream = set(jaxpr.invars[len(jax.tree.leaves(params)) :])
    for eqn in jaxpr.eqns:
        if any(not isinstance(v, Literal) and v in downstream for v in eqn.invars):
            downstream.update(eqn.outvars)
    saved = {v for v in jaxpr.outvars if not isinstance(v, Literal) and v in downstream}
    return sum(math.prod(v.aval.shape) * v.aval.dtype.itemsize for v in saved)


def _hbm_exhausted_bytes(message: str) -> float | None:
    """What XLA:TPU says it needed when it refuses to compile ('Used 20.1G of 15.75G hbm')."""
    m = _HBM_EXHAUSTED.search(message)
    return float(m.group(1)) * _UNITS[m.group(2)] if m else None


def roofline(chip: chips.Chip, flops: float, hbm_bytes: float, ici_bytes: float) -> dict:
    """Seconds per step of one chip if each resource ran at its peak and all three overlapped."""
    times = {
        "compute": flops / chip.peak_flops,
        "hbm": hbm_bytes / chip.hbm_bandwidth,
        "collectives": ici_bytes / (chip.interconnect_bandwidth / 2),
    }
    times["step"] = max(times.values())
    return times


def _compile(lowered_fn) -> tuple[Any, float | None, str]:
    """(compiled, None, '') or, when XLA runs out of HBM, (None, bytes it asked for or NaN, why)."""
    try:
        return lowered_fn().compile(), None, ""
    except jax.errors.JaxRuntimeError as err:
        needed = _hbm_exhausted_bytes(str(err))
        if needed is None and "RESOURCE_EXHAUSTED" not in str(err):
            raise
        return None, math.nan if needed is None else needed, " ".join(str(err).split())[:300]


def plan_pretraining(config, topology: Topology, hbm_bytes: float | None = None) -> Plan:
    """Compiles the sharded train and eval steps of `config` for `topology`, reads the
    executables."""
    num_devices = len(topology.devices)
    validate_pretraining_config(config, num_devices, check_files=False)
    mesh = sharding.make_mesh(config.mesh, topology.devices)
    # Built outside the mesh context: its eager setup (PRNG keys) must run on the host, not on
    # compile-only devices. Tracing happens in `lower`, inside the context, as in train_lib.
    pretrainer = build_pretrainer(config, mesh)
    state = pretrainer.abstract_state

    def sharded_batch(rows):
        return {
            key: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=pretrainer.batch_shardings[key])
            for key, x in batch_shapes(config, rows).items()
        }

    batch = sharded_batch(config.batch_size)
    rng_dtype = jax.eval_shape(lambda: jax.random.key(0)).dtype
    rng = jax.ShapeDtypeStruct((), rng_dtype, sharding=sharding.replicated(mesh))
    accum = int(config.get("grad_accum_steps", 1))
    seq_len = int(config.data.max_seq_length)
    rows = config.batch_size // (sharding.data_parallel_size(mesh) * accum)
    num_params = sum(x.size for x in jax.tree.leaves(state.params))
    tokens = config.batch_size * seq_len
    plan = Plan(
        topology=topology.name,
        chip=topology.chip,
        device_kind=topology.devices[0].device_kind,
        num_devices=num_devices,
        mesh=dict(mesh.shape),
        batch_size=int(config.batch_size),
        grad_accum_steps=accum,
        seq_len=seq_len,
        num_params=num_params,
        hbm_bytes=float(hbm_bytes or topology.chip.hbm_bytes),
        memory={
            "parameters": _shard_bytes(state.params),
            "optimizer_state": _shard_bytes(state.opt_state) + _shard_bytes(state.step),
            "batch": _shard_bytes(batch),
            "activations_saved_estimate": saved_activation_bytes(pretrainer, rows),
        },
        flops_6nt=6.0 * (num_params - _embedding_param_count(state.params)) * tokens,
        model_flops_per_step=config.batch_size * pretraining_flops_per_example(
            pretrainer.model_config, seq_len, batch_predictions(config.data)
        ),
        sequences_per_row=sequences_per_row(config.data),
        eval_batch_size=eval_batch_size(config),
    )  # fmt: skip
    started = time.perf_counter()
    with jax.set_mesh(mesh):
        compiled, needed, plan.error = _compile(
            lambda: pretrainer.train_step.lower(state, batch, rng)
        )
    plan.compile_seconds = time.perf_counter() - started
    if compiled is None:
        plan.memory["total"] = needed
        return plan
    stats = compiled.memory_analysis()
    memory = plan.memory
    memory["arguments"] = stats.argument_size_in_bytes  # padded to the chip's tiled layouts
    memory["state_as_compiled"] = stats.argument_size_in_bytes - memory["batch"]
    memory["temporaries"] = stats.temp_size_in_bytes
    memory["outputs_not_aliased"] = max(stats.output_size_in_bytes - stats.alias_size_in_bytes, 0)
    memory["generated_code"] = stats.generated_code_size_in_bytes
    memory["total"] = sum(
        memory[k] for k in ("arguments", "temporaries", "outputs_not_aliased", "generated_code")
    )
    # XLA's own peak figure, kept for reference only: it came out above arguments + temporaries +
    # code even where the donated state aliases its outputs, which the total above accounts for.
    memory["compiler_peak"] = stats.peak_memory_in_bytes
    _plan_eval_step(plan, pretrainer, mesh, sharded_batch(plan.eval_batch_size))
    plan.fits = plan.margin_bytes >= 0 and plan.eval_margin_bytes >= 0
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    plan.flops_per_step = float(cost.get("flops", math.nan)) * num_devices
    plan.hbm_traffic_per_device = float(cost.get("bytes accessed", math.nan))
    plan.hlo_text = compiled.as_text()
    model = pretrainer.model_config
    plan.step_shape = breakdown.StepShape(
        rows=rows * accum,
        seq_len=seq_len,
        predictions=batch_predictions(config.data),
        hidden=model.hidden_size,
        intermediate=model.intermediate_size,
        layers=model.num_hidden_layers,
        vocab=model.padded_vocab_size,
        state_params=_shard_bytes(state.params) / jax.numpy.dtype(model.param_dtype).itemsize,
        compute_bytes=jax.numpy.dtype(model.dtype).itemsize,
    )
    collectives = parse_collectives(plan.hlo_text, num_devices, loop_trip_count=accum)
    plan.collectives = summarize_collectives(collectives)
    ici_bytes = sum(c.bytes_per_device for c in collectives)
    plan.step_time = roofline(
        topology.chip, plan.flops_per_step / num_devices, plan.hbm_traffic_per_device, ici_bytes
    )
    plan.bound = max(("compute", "hbm", "collectives"), key=plan.step_time.get)
    return plan


def step_breakdown(plan: Plan, top: int = 15) -> tuple[str, dict]:
    """The compiled train step's bytes and FLOPs by group beside the analytic floor: the table
    and its numbers (per chip and step; `hbm_bytes_per_token` counts HBM only, not VMEM)."""
    costs = hlo_costs.instruction_costs(plan.hlo_text)
    floor = breakdown.analytic_floor(plan.step_shape)
    tokens = plan.step_shape.rows * plan.seq_len
    groups = hlo_costs.by_group(costs)
    hbm = sum(g["hbm_bytes"] for g in groups.values())
    numbers = {
        "groups": groups,
        "floor_bytes": floor,
        "hbm_bytes_per_token": hbm / tokens,
        "compiler_bytes_per_token": plan.hbm_traffic_per_device / tokens,
    }
    text = breakdown.format_breakdown(
        costs, floor, tokens, plan.hbm_traffic_per_device, plan.chip.hbm_bandwidth, top
    )
    return text, numbers


def _plan_eval_step(plan: Plan, pretrainer: Pretrainer, mesh, batch) -> None:
    """Compiles the eval step on eval_batch_size rows. Evaluation runs between train steps, so
    the optimizer state stays resident beside the eval step's own arguments (parameters and
    batch) and temporaries."""
    params = pretrainer.abstract_state.params
    started = time.perf_counter()
    with jax.set_mesh(mesh):
        compiled, needed, plan.eval_error = _compile(
            lambda: pretrainer.eval_step.lower(params, batch)
        )
    plan.compile_seconds += time.perf_counter() - started
    memory = plan.eval_memory
    memory["batch"] = _shard_bytes(batch)
    memory["optimizer_state_resident"] = plan.memory["optimizer_state"]
    if compiled is None:
        memory["total"] = needed + memory["optimizer_state_resident"]
        return
    stats = compiled.memory_analysis()
    memory["arguments"] = stats.argument_size_in_bytes  # parameters + batch, as compiled
    memory["temporaries"] = stats.temp_size_in_bytes
    memory["outputs"] = stats.output_size_in_bytes
    memory["generated_code"] = stats.generated_code_size_in_bytes
    memory["total"] = sum(
        memory[k]
        for k in (
            "arguments",
            "optimizer_state_resident",
            "temporaries",
            "outputs",
            "generated_code",
        )
    )


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def mesh_layouts(num_devices: int, config, max_tensor: int = 8) -> list[tuple[int, int, int]]:
    """(data, fsdp, tensor) splits of the devices whose tensor size divides heads and mlp."""
    model = config.model
    layouts = []
    for tensor in _divisors(num_devices):
        if tensor > max_tensor or model.num_attention_heads % tensor:
            continue
        if model.intermediate_size % tensor:
            continue
        rest = num_devices // tensor
        layouts += [(rest // fsdp, fsdp, tensor) for fsdp in _divisors(rest)]
    return layouts


def parse_layout(text: str) -> tuple[int, int, int]:
    """'4x2x2' -> (data=4, fsdp=2, tensor=2)."""
    parts = text.lower().split("x")
    if len(parts) != 3 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise UserError(f"mesh layout {text!r} is not DATAxFSDPxTENSOR, e.g. 4x2x2")
    return tuple(int(p) for p in parts)


def _variant(config, layout: tuple[int, int, int], microbatch: int):
    data, fsdp, tensor = layout
    variant = config.copy_and_resolve_references()
    with variant.unlocked():
        variant.mesh.data, variant.mesh.fsdp, variant.mesh.tensor = data, fsdp, tensor
        variant.grad_accum_steps = config.batch_size // (data * fsdp * microbatch)
    return variant


@dataclasses.dataclass
class Sweep:
    plans: list[Plan]  # every compile, in the order tried
    skipped: list[tuple[str, str]]  # (layout, why) for layouts that cannot run the batch
    best: Plan | None  # the highest estimated throughput among plans that fit


def sweep_pretraining(
    config,
    topology: Topology,
    layouts: list[tuple[int, int, int]] | None = None,
    microbatches: list[int] | None = None,
    hbm_bytes: float | None = None,
    progress=None,
) -> Sweep:
    """Per layout, the largest per-device microbatch that fits (the largest candidate first, then
    bisection; gradient accumulation keeps the config's global batch), then the fastest layout.

    `progress(message)` is called before each compile.
    """
    num_devices = len(topology.devices)
    layouts = layouts or mesh_layouts(num_devices, config)
    plans, skipped = [], []
    for layout in layouts:
        name = "x".join(map(str, layout))
        if math.prod(layout) != num_devices:
            skipped.append(
                (name, f"needs {math.prod(layout)} devices, the slice has {num_devices}")
            )
            continue
        dp = layout[0] * layout[1]
        if config.batch_size % dp:
            skipped.append((name, f"batch {config.batch_size} does not split over {dp} devices"))
            continue
        per_device = config.batch_size // dp
        candidates = sorted(
            {b for b in (microbatches or _divisors(per_device)) if per_device % b == 0}
        )
        if not candidates:
            skipped.append((name, f"no candidate microbatch divides {per_device} per device"))
            continue
        # Fitting is monotone in the microbatch: try the largest, then bisect below it.
        low, high = 0, len(candidates) - 1
        mid = high
        while low <= high:
            variant = _variant(config, layout, candidates[mid])
            if progress:
                progress(f"{topology.name} mesh {name} microbatch {candidates[mid]}")
            try:
                plan = plan_pretraining(variant, topology, hbm_bytes)
            except (ValueError, jax.errors.JaxRuntimeError) as err:  # UserError is a ValueError
                skipped.append((name, " ".join(str(err).split())[:300]))
                break
            plans.append(plan)
            if plan.fits:
                low = mid + 1
            else:
                high = mid - 1
            mid = (low + high) // 2
    fitting = [p for p in plans if p.fits]
    best = max(fitting, key=lambda p: p.examples_per_second, default=None)
    return Sweep(plans=plans, skipped=skipped, best=best)
