"""Collectives in optimized HLO text: which ones a compiled step runs, how often, how many bytes.

The planner (`plan_lib`) reads a compiled train step's HLO with `parse_collectives` and sums the
bytes each device sends per step (`summarize_collectives`) for its interconnect roofline.
"""

from __future__ import annotations

import dataclasses
import math
import re

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
_DTYPE_BYTES = {
    "pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4, "u32": 4,
    "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16,
}  # fmt: skip
_ARRAY = re.compile(r"\b([a-z]+\d+|pred)\[([\d,]*)\]")
_INSTRUCTION = re.compile(
    r"^\s*(?:ROOT\s+)?%[\w.\-]+ = (?P<type>.+?) "
    r"(?P<op>all-reduce|all-gather|reduce-scatter|all-to-all|collective-permute)(?P<start>-start)?\("
)
_COMPUTATION = re.compile(r"^(?P<entry>ENTRY\s+)?%(?P<name>[\w.\-]+) .*\{\s*$")
_WHILE = re.compile(r"\bwhile\(.*\bbody=%(?P<body>[\w.\-]+)")
_CALLS = re.compile(r"\bcalls=%([\w.\-]+)")
_TRIP_COUNT = re.compile(r'"known_trip_count":\{"n":"(\d+)"\}')
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


def _array_bytes(type_text: str) -> int:
    return sum(
        _DTYPE_BYTES.get(dtype, 0) * math.prod(int(d) for d in dims.split(",") if d)
        for dtype, dims in _ARRAY.findall(type_text)
    )


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


def parse_collectives(
    hlo_text: str, num_devices: int, loop_trip_count: int = 1
) -> list[Collective]:
    """Every collective op in optimized HLO text, with how often it runs per step.

    A computation runs as often as its callers call it: ENTRY once, a fusion (XLA:TPU wraps async
    collectives in fusions) once per call, a while body `known_trip_count` times when the HLO
    records it, else `loop_trip_count` (the train step's only loop is gradient accumulation).
    Async `-done` halves are not counted again.
    """
    lines = hlo_text.splitlines()
    callers: dict[str, list[tuple[str, int]]] = {}
    computation, entry = None, None
    for line in lines:
        if m := _COMPUTATION.match(line):
            computation = m.group("name")
            entry = computation if m.group("entry") else entry
            continue
        if not computation:
            continue
        if w := _WHILE.search(line):
            trips = _TRIP_COUNT.search(line)
            runs = int(trips.group(1)) if trips else loop_trip_count
            callers.setdefault(w.group("body"), []).append((computation, runs))
        for callee in _CALLS.findall(line):
            callers.setdefault(callee, []).append((computation, 1))

    memo: dict[str, int] = {}

    def executions(name: str, depth: int = 0) -> int:
        if name == entry:
            return 1
        if name not in memo:
            memo[name] = (
                0
                if depth > 64
                else sum(
                    runs * executions(caller, depth + 1) for caller, runs in callers.get(name, ())
                )
            )
        return memo[name]

    found, runs = [], 0
    for line in lines:
        if m := _COMPUTATION.match(line):
            runs = executions(m.group("name"))
            continue
        m = _INSTRUCTION.match(line)
        if not m or runs == 0:
            continue
        op, type_text = m.group("op"), m.group("type")
        if m.group("start") and op in ("all-gather", "collective-permute"):
            # Async starts return (operands, results, ...): the result is the second element.
            elements = _tuple_elements(type_text)
            type_text = elements[1] if len(elements) > 1 else type_text
        found.append(Collective(op, _group_size(line, num_devices), _array_bytes(type_text), runs))
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
