"""Where a compiled step's HBM traffic and FLOPs go, read from its optimized HLO text.

Each executed instruction (the entry computation and the bodies of its loops and calls, not the
inside of fusions) costs what XLA's HloCostAnalysis charges a fusion: the bytes of its operands
plus its outputs, and 2 FLOPs per multiply-add of the dots and convolutions it contains (a
Pallas kernel: its own cost estimate, e.g. model/tpu_attention.py's). Bytes in
a TPU's on-chip memory (layout memory space S(1), VMEM) are counted apart: they never reach HBM.
Instructions are grouped by the name scope in their metadata (attention, MLP, ...): see
docs/scaling.md, "Where the bytes go".
"""

from __future__ import annotations

import collections
import dataclasses
import json
import math
import re
from collections.abc import Callable, Iterator

_DTYPE_BYTES = {"pred": 1, "s4": 0.5, "u4": 0.5, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2,
                "bf16": 2, "s32": 4, "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8,
                "c128": 16}  # fmt: skip
_SHAPE = re.compile(r"\b([a-z]+\d*(?:e\d+m\d+\w*)?)\[([\d,]*)\](\{[^}]*\})?")
_HEADER = re.compile(r"^(ENTRY )?%(\S+) \(")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%(\S+) = ")
_OP_NAME = re.compile(r'op_name="([^"]*)"')
_CALLS = re.compile(
    r"\b(calls|body|condition|to_apply|true_computation|false_computation)=%([\w.\-]+)"
)
_BRANCHES = re.compile(r"branch_computations=\{([^}]*)\}")
_TRIPS = re.compile(r'"known_trip_count":\{"n":"(\d+)"')
_CONTRACT = re.compile(r"lhs_contracting_dims=\{([\d,]*)\}")
_WINDOW = re.compile(r"window=\{size=([\dx]+)[^}]*\}")
_LHS_DILATE = re.compile(r"lhs_dilate=([\dx]+)")
_DIM_LABELS = re.compile(r"dim_labels=(\w+)_(\w+)->(\w+)")
# Instructions that move no data of their own (their loops' and calls' bodies are counted).
_FREE = {"parameter", "constant", "tuple", "get-tuple-element", "bitcast", "while", "call",
         "conditional", "after-all", "partition-id", "replica-id", "copy-done", "slice-done",
         "all-gather-done", "all-reduce-done", "collective-permute-done", "send-done",
         "recv-done", "async-done", "async-update"}  # fmt: skip
# (dst, src, context) for copy-start, ((operand), dst, context) for slice-start: which is written.
_ASYNC_DESTINATION = {"copy-start": 0, "slice-start": 1}
# XLA:TPU's concatenation of adjacent buffers by reinterpretation: no data moves.
_FREE_TARGETS = ('custom_call_target="ConcatBitcast"',)
_SLICES = {"slice", "slice-start", "dynamic-slice"}
# A Pallas kernel's pl.CostEstimate, in its custom call's backend_config (XLA's cost analysis
# counts it too): the bytes its blocks move and its FLOPs, which its operands and outputs do not
# tell; the bytes split between HBM and VMEM as its operands and outputs lie.
_COST_ESTIMATE = re.compile(r'"cost_estimate":(\{[^}]*\})')
COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")

# (group, substrings of the op_name scope), first match wins; see group_of.
GROUP_RULES = (
    ("gradient reduction", ("all-reduce", "reduce-scatter", "all-gather", "all-to-all",
                            "collective-permute")),
    ("embedding", ("/embeddings/",)),
    ("LayerNorm", ("layer_norm", "LayerNorm", "/norm/")),
    ("attention", ("/attention/",)),
    ("MLP", ("/intermediate/", "/output/dense", "/output/")),
    ("loss and heads", ("/loss/", "/cls/", "/predictions", "/pooler", "mlm", "nsp",
                        "log_softmax")),
    ("optimizer", ("/optimizer/",)),
)  # fmt: skip
# Ops a layer runs outside its submodules: the feed-forward activation, dropout, residual adds.
_LAYER_GLUE = re.compile(r"/layer_\d+/[^/]+$")


@dataclasses.dataclass
class Shape:
    dtype: str
    dims: tuple[int, ...]
    memory_space: int  # layout S(n); 0 is HBM, 1 is a TPU core's VMEM

    @property
    def bytes(self) -> float:
        return math.prod(self.dims) * _DTYPE_BYTES.get(self.dtype, 4)


def parse_shapes(text: str) -> list[Shape]:
    shapes = []
    for dtype, dims, layout in _SHAPE.findall(text):
        if dtype not in _DTYPE_BYTES:
            continue
        space = re.search(r"S\((\d+)\)", layout or "")
        dims = tuple(int(d) for d in dims.split(",") if d)
        shapes.append(Shape(dtype, dims, int(space.group(1)) if space else 0))
    return shapes


def _split_type(rest: str) -> tuple[str, str]:
    """'TYPE opcode(...)...' -> (TYPE, 'opcode(...)...'); TYPE may be a parenthesised tuple."""
    if rest.startswith("("):
        depth = 0
        for i, ch in enumerate(rest):
            depth += ch == "("
            depth -= ch == ")"
            if depth == 0:
                return rest[: i + 1], rest[i + 1 :].lstrip()
    head, _, tail = rest.partition(" ")
    return head, tail


def _operands(call: str) -> tuple[str, list[str], str]:
    """'opcode(%a, %b), attrs' -> (opcode, ['a', 'b'], attrs)."""
    opcode, _, rest = call.partition("(")
    depth, end = 1, len(rest)
    for i, ch in enumerate(rest):
        depth += ch == "("
        depth -= ch == ")"
        if depth == 0:
            end = i
            break
    return opcode, re.findall(r"%([\w.\-]+)", rest[:end]), rest[end + 1 :]


@dataclasses.dataclass
class Instruction:
    name: str
    opcode: str
    result: list[Shape]
    operands: list[str]
    attrs: str
    op_name: str
    type_text: str = ""  # the result type as written, tuples and layouts included


def parse_module(hlo_text: str) -> tuple[dict[str, list[Instruction]], str]:
    """Computations by name, each a list of instructions; and the entry computation's name."""
    computations: dict[str, list[Instruction]] = {}
    entry, current = "", None
    for line in hlo_text.splitlines():
        if m := _HEADER.match(line):
            current = computations.setdefault(m.group(2), [])
            if m.group(1):
                entry = m.group(2)
            # Parameters declared in the header: "(p: f32[2], q: bf16[3])".
            header = line[m.end() :].split(") -> ")[0]
            for pname, ptype in re.findall(r"([\w.\-]+): ((?:\([^)]*\))|[^,]+)", header):
                current.append(
                    Instruction(pname, "parameter", parse_shapes(ptype), [], "", "", ptype)
                )
            continue
        m = _INSTRUCTION.match(line)
        if m is None or current is None:
            continue
        type_text, call = _split_type(line[m.end() :])
        opcode, operands, attrs = _operands(call)
        op_name = _OP_NAME.search(attrs)
        current.append(
            Instruction(
                m.group(1),
                opcode,
                parse_shapes(type_text),
                operands,
                attrs,
                op_name.group(1) if op_name else "",
                type_text,
            )  # fmt: skip
        )
    return computations, entry


def _flops(inst: Instruction, shapes: dict[str, list[Shape]], computations) -> float:
    """2 x multiply-adds of the dots and convolutions in `inst` (or in its fused computation)."""
    if inst.opcode == "fusion":
        called = _CALLS.search(inst.attrs)
        body = computations.get(called.group(2), []) if called else []
        local = {i.name: i.result for i in body}
        return sum(_flops(i, local, computations) for i in body)
    if not inst.result:
        return 0.0
    out = math.prod(inst.result[0].dims)
    if inst.opcode == "dot":
        lhs = shapes.get(inst.operands[0], [])
        m = _CONTRACT.search(inst.attrs)
        if not lhs or not m:
            return 0.0
        k = math.prod(lhs[0].dims[int(d)] for d in m.group(1).split(",") if d)
        return 2.0 * out * k
    if inst.opcode == "convolution" and len(inst.operands) > 1:
        kernel = shapes.get(inst.operands[1], [])
        labels = _DIM_LABELS.search(inst.attrs)
        if not kernel or not labels:
            return 0.0
        # Contracted: the input-feature dim and, per spatial dim, the window taps that meet an
        # input element; XLA:TPU writes batched dots as windows with lhs_dilate = size (one tap).
        taps = kernel[0].dims[labels.group(2).index("i")]
        window = _WINDOW.search(inst.attrs)
        if window:
            sizes = [int(x) for x in window.group(1).split("x")]
            dilate = _LHS_DILATE.search(window.group(0))
            dilations = [int(x) for x in dilate.group(1).split("x")] if dilate else [1] * len(sizes)
            taps *= math.prod(-(-s // d) for s, d in zip(sizes, dilations, strict=True))
        return 2.0 * out * taps
    return 0.0


@dataclasses.dataclass
class OpCost:
    name: str
    opcode: str
    op_name: str
    executions: int
    hbm_bytes: float  # per execution, operands + outputs outside VMEM
    vmem_bytes: float  # per execution, operands + outputs in VMEM (S(1)): no HBM traffic
    flops: float  # per execution

    @property
    def group(self) -> str:
        return group_of(self.opcode, self.op_name)


def group_of(opcode: str, op_name: str) -> str:
    """What an instruction belongs to, from its opcode and its metadata's name scope."""
    if opcode.removesuffix("-start") in COLLECTIVES:
        return "gradient reduction"
    for group, keys in GROUP_RULES[1:]:
        if any(k in op_name for k in keys):
            return group
    if _LAYER_GLUE.search(op_name):
        return "layer glue"
    if not op_name:
        return "unnamed"
    if "jvp(" in op_name or "transpose(" in op_name:
        return "model, other ops"
    return "optimizer"


def _scope(inst: Instruction, by_name: dict[str, Instruction], depth: int = 0) -> str:
    # Copies and slices the scheduler adds carry no metadata: they take their source's.
    if inst.op_name or depth > 8:
        return inst.op_name
    for operand in inst.operands:
        if operand in by_name and (found := _scope(by_name[operand], by_name, depth + 1)):
            return found
    return ""


def callees(inst: Instruction) -> list[tuple[str, str]]:
    """(attribute, computation) for each computation `inst` names, e.g. ('body', 'loop_body')."""
    found = _CALLS.findall(inst.attrs)
    if b := _BRANCHES.search(inst.attrs):
        found += [("branch_computations", c) for c in re.findall(r"%([\w.\-]+)", b.group(1))]
    return found


def _control_flow(inst: Instruction) -> list[str]:
    if inst.opcode not in ("while", "call", "conditional"):
        return []
    return [c for _, c in callees(inst)]


def walk(
    computations: dict[str, list[Instruction]],
    entry: str,
    untold_trips: int = 1,
    enter: Callable[[Instruction], list[str]] = _control_flow,
) -> Iterator[tuple[str, Instruction, int]]:
    """(computation, instruction, executions) for each instruction the step runs, depth first.

    ENTRY runs once; the computations `enter(instruction)` names (by default those of while, call
    and conditional) as often as that instruction, times a while's `known_trip_count` when the
    HLO records it, else `untold_trips`. Each instruction is yielded before what it calls.
    """

    def visit(name: str, executions: int, seen: tuple[str, ...]):
        for inst in computations.get(name, []):
            yield name, inst, executions
            called = enter(inst)
            n = executions
            if called and inst.opcode == "while":
                trips = _TRIPS.search(inst.attrs)
                n *= int(trips.group(1)) if trips else untold_trips
            for c in called:
                if c not in seen:
                    yield from visit(c, n, (*seen, c))

    yield from visit(entry, 1, (entry,))


def instruction_costs(hlo_text: str) -> list[OpCost]:
    """One OpCost per executed instruction of the module, loop bodies weighted by trip count."""
    computations, entry = parse_module(hlo_text)
    costs: list[OpCost] = []
    tables: dict[str, tuple[dict, dict]] = {}

    for name, inst, executions in walk(computations, entry):
        if inst.opcode in _FREE or any(t in inst.attrs for t in _FREE_TARGETS):
            continue  # while, call and conditional among them: walk enters their computations
        if name not in tables:
            body = computations[name]
            tables[name] = ({i.name: i.result for i in body}, {i.name: i for i in body})
        shapes, by_name = tables[name]
        touched = list(inst.result)
        if inst.opcode in _ASYNC_DESTINATION:  # its result tuple repeats the operand
            touched = touched[_ASYNC_DESTINATION[inst.opcode] :][:1]
        if inst.opcode in _SLICES:  # reads what it writes, not the whole operand
            source = shapes.get(inst.operands[0], []) if inst.operands else []
            space = source[0].memory_space if source else 0
            touched += [dataclasses.replace(x, memory_space=space) for x in touched]
        else:
            for operand in inst.operands:
                touched += shapes.get(operand, [])
        hbm = sum(s.bytes for s in touched if s.memory_space != 1)
        vmem = sum(s.bytes for s in touched if s.memory_space == 1)
        flops = _flops(inst, shapes, computations)
        if inst.opcode == "custom-call" and (estimate := _COST_ESTIMATE.search(inst.attrs)):
            told = json.loads(estimate.group(1))  # split as its operands and outputs lie
            moved, flops = float(told.get("bytes_accessed", 0)), float(told.get("flops", 0))
            share = hbm / (hbm + vmem) if hbm + vmem else 1.0
            hbm, vmem = moved * share, moved * (1.0 - share)
        costs.append(
            OpCost(
                inst.name,
                inst.opcode,
                _scope(inst, by_name),
                executions,
                hbm,
                vmem,
                flops,
            )  # fmt: skip
        )
    return costs


def by_group(costs: list[OpCost]) -> dict[str, dict[str, float]]:
    """{group: {'hbm_bytes', 'vmem_bytes', 'flops', 'ops'}} over all executions."""
    groups: dict[str, dict[str, float]] = collections.defaultdict(
        lambda: {"hbm_bytes": 0.0, "vmem_bytes": 0.0, "flops": 0.0, "ops": 0}
    )
    for c in costs:
        g = groups[c.group]
        g["hbm_bytes"] += c.hbm_bytes * c.executions
        g["vmem_bytes"] += c.vmem_bytes * c.executions
        g["flops"] += c.flops * c.executions
        g["ops"] += c.executions
    return dict(sorted(groups.items(), key=lambda kv: -kv[1]["hbm_bytes"]))
