"""Collectives in optimized HLO text: which ones a compiled step runs, how often, how many bytes.

The planner (`plan_lib`) reads a compiled train step's HLO with `parse_collectives` and sums the
bytes each device sends per step (`summarize_collectives`) for its interconnect roofline.
"""

from __future__ import annotations

import dataclasses
import math
import re

from bert_jax.planning import hlo_costs

# Collectives in the compiled HLO. Bytes one device sends per execution, for a ring over a group of
# n devices and a buffer of S bytes (the result; for reduce-scatter, its per-device part):
#   all-reduce 2S(n-1)/n, all-gather S(n-1)/n, reduce-scatter S(n-1), all-to-all S(n-1)/n,
#   collective-permute S.
COLLECTIVE_KINDS = (
    "all-reduce",
    "all-gather",
    "reduce-scatter",
    "all-to-all",
    "collective-permute",
)
_MESH_GROUPS = re.compile(r"replica_groups=mesh\[(?P<axes>[^\]]*)\]\s*\{(?P<used>[^}]*)\}")
_IOTA_GROUPS = re.compile(r"replica_groups=\[(\d+),(\d+)\]<=")
_LIST_GROUPS = re.compile(r"replica_groups=\{\{(?P<first>[\d,]*)\}")


@dataclasses.dataclass(frozen=True)
class Collective:
    kind: str
    group_size: int
    buffer_bytes: int  # S, one execution
    executions: int  # per step: 1, or the trip count of the loop around it

    @property
    def bytes_per_device(self) -> float:
        n, s = self.group_size, self.buffer_bytes
        if self.kind == "collective-permute":
            return float(s * self.executions)
        if n <= 1:
            return 0.0
        factors = {"all-reduce": 2 * (n - 1) / n, "reduce-scatter": n - 1}
        return s * factors.get(self.kind, (n - 1) / n) * self.executions


def _tuple_elements(type_text: str) -> list[str]:
    """'(a, (b, c), d)' -> ['a', '(b, c)', 'd']; a non-tuple type -> [itself]."""
    text = type_text.strip()
    if not text.startswith("("):
        return [text]
    parts, depth, start = [], 0, 1
    for i, ch in enumerate(text):
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        if (ch == "," and depth == 1) or depth == 0:
            parts.append(text[start:i].strip())
            start = i + 1
        if depth == 0:
            break
    return [p for p in parts if p]


def _group_size(line: str, num_devices: int) -> int:
    if m := _MESH_GROUPS.search(line):
        sizes = {a: int(s) for a, s in re.findall(r"'([^']+)'=(\d+)", m.group("axes"))}
        used = re.findall(r"'([^']+)'", m.group("used"))
        return math.prod(sizes.get(a, 1) for a in used) if used else num_devices
    if m := _IOTA_GROUPS.search(line):
        return int(m.group(2))
    if m := _LIST_GROUPS.search(line):
        return len([d for d in m.group("first").split(",") if d]) or num_devices
    return num_devices


def _enter(inst: hlo_costs.Instruction) -> list[str]:
    """What runs when `inst` does: a while's body, what `calls=` names (fusions, async wrappers)."""
    return [
        c
        for attr, c in hlo_costs.callees(inst)
        if attr == "calls" or (attr == "body" and inst.opcode == "while")
    ]


def parse_collectives(
    hlo_text: str, num_devices: int, loop_trip_count: int = 1
) -> list[Collective]:
    """Every collective op in optimized HLO text, with how often it runs per step.

    A computation runs as often as its callers call it: ENTRY once, a fusion (XLA:TPU wraps async
    collectives in fusions) once per call, a while body `known_trip_count` times when the HLO
    records it, else `loop_trip_count` (the train step's only loop is gradient accumulation).
    Async `-done` halves are not counted again.
    """
    computations, entry = hlo_costs.parse_module(hlo_text)
    runs: dict[int, int] = {}  # id(instruction) -> executions per step
    for _, inst, n in hlo_costs.walk(computations, entry, loop_trip_count, _enter):
        if inst.opcode.removesuffix("-start") in COLLECTIVE_KINDS:
            runs[id(inst)] = runs.get(id(inst), 0) + n
    found = []
    for body in computations.values():
        for inst in body:
            if not runs.get(id(inst)):
                continue
            op, type_text = inst.opcode.removesuffix("-start"), inst.type_text
            if inst.opcode.endswith("-start") and op in ("all-gather", "collective-permute"):
                # Async starts return (operands, results, ...): the result is the second element.
                elements = _tuple_elements(type_text)
                type_text = elements[1] if len(elements) > 1 else type_text
            size = sum(s.bytes for s in hlo_costs.parse_shapes(type_text))
            found.append(
                Collective(op, _group_size(inst.attrs, num_devices), int(size), runs[id(inst)])
            )
    return found


def summarize_collectives(collectives: list[Collective]) -> list[dict]:
    """One row per (kind, group size): ops per step, buffer bytes, bytes each device sends."""
    rows: dict[tuple[str, int], dict] = {}
    for c in sorted(collectives, key=lambda c: (COLLECTIVE_KINDS.index(c.kind), c.group_size)):
        row = rows.setdefault(
            (c.kind, c.group_size),
            {"kind": c.kind, "group_size": c.group_size, "ops": 0, "buffer_bytes": 0,
             "bytes_per_device": 0.0},
        )  # fmt: skip
        row["ops"] += c.executions
        row["buffer_bytes"] += c.buffer_bytes * c.executions
        row["bytes_per_device"] += c.bytes_per_device
    return list(rows.values())
