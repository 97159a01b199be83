"""Table 1 of the paper, measured in the guest: what a splice adds to a kernel path.

The path is the getpid system call, timed by the guest's init with ``rdtsc`` around
``int $0x80`` (``bench getpid N``). Rows, all at the entry of ``sys_getpid`` (a 5-byte ``mov``,
so a ``jmp rel32`` fits and every variant is possible at the very same point):

* the unspliced baseline;
* a ``jmp rel32`` splice, and forced chains ``jmp rel8`` -> k springboards (k = 1, 2, 3) in the
  kernel's inter-function padding, the last one a ``jmp rel32``;
* the trap splice (``int $n`` to the repository handler, which looks the return EIP up and
  ``iret``s into the patch);
* floors measured in the same boot in kernel mode (see :mod:`rig.bench.floors`).

Patches are ``PatchKind.EMPTY`` (the displaced ``mov`` and the jump back), so the overhead is
the bare branch mechanism; ``counter=True`` adds the same rows with the counting probe.
Overhead = row - baseline; relative cost = overhead / overhead of the jmp rel32 splice.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rig.bench import floors
from rig.bench.stats import STATS, across_runs, summarize
from rig.errors import RigError
from rig.guest.machine import QemuMachine
from rig.instrument import Instrumenter
from rig.splicer import idt
from rig.splicer.memory import MemoryWrite
from rig.splicer.plan import PatchKind
from rig.splicer.repository import Mode, Policy
from rig.instrument.transaction import apply_writes

FUNCTION = "sys_getpid"
PAPER = {"cpu": "Pentium 4 1.4 GHz", "kernel": "Linux 2.4.20", "compiler": "gcc 3.2",
         "jmp_cycles": 84.0012, "trap_cycles": 1613.5124, "ratio": "1:19"}
GUEST_TIMEOUT_S = 300.0

Progress = Callable[[str], None]


@dataclass(frozen=True)
class SpliceRow:
    key: str
    label: str
    mode: Mode
    springboards: int | None
    patch_kind: PatchKind
    own_vector: bool = False  # trap: a vector of its own (no table lookup) instead of the shared one


def splice_rows(chains: tuple[int, ...] = (1, 2, 3), counter: bool = False) -> list[SpliceRow]:
    kinds = [PatchKind.EMPTY] + ([PatchKind.COUNTER] if counter else [])
    rows: list[SpliceRow] = []
    for kind in kinds:
        suffix = "" if kind is PatchKind.EMPTY else "+counter"
        probe = "" if kind is PatchKind.EMPTY else ", counting probe"
        rows.append(SpliceRow(f"jmp{suffix}", f"jmp rel32 splice{probe}", Mode.JMP, 0, kind))
        rows += [SpliceRow(f"jmp-sb{k}{suffix}", f"jmp rel8 + {k} springboard(s){probe}", Mode.JMP, k, kind)
                 for k in chains]
        rows.append(SpliceRow(f"trap{suffix}", f"trap splice (int $n){probe}", Mode.TRAP, None, kind))
        rows.append(SpliceRow(f"trap-own{suffix}", f"trap splice, own vector (no lookup){probe}", Mode.TRAP,
                              None, kind, own_vector=True))
        rows.append(SpliceRow(f"int3{suffix}", f"int3 splice (1 byte){probe}", Mode.INT3, None, kind))
    return rows


def _getpid_runs(machine: QemuMachine, n: int, runs: int) -> list[dict[str, int]]:
    out = []
    for _ in range(runs):
        reply = machine.console.request(f"bench getpid {n}", timeout=GUEST_TIMEOUT_S)
        if not reply.bool_field("pid_ok"):
            raise RigError("getpid returned different pids inside one run: the spliced path is broken",
                           hint="look at the splice (invoke splices) and reboot the guest")
        out.append({key: reply.int_field(key) for key in ("n", *STATS, "tsc_overhead")})
    return out


def _row(key: str, label: str, kind: str, runs: list[dict[str, int]], **extra: Any) -> dict[str, Any]:
    return {"key": key, "label": label, "kind": kind, "runs": runs, "stats": across_runs(runs), **extra}


def measure_paths(machine: QemuMachine, instr: Instrumenter, n: int, runs: int,
                  rows: list[SpliceRow], progress: Progress | None = None) -> list[dict[str, Any]]:
    """Baseline and every splice row, interleaved: each round runs the baseline and then every row
    once (splice, ``bench getpid N``, unsplice), so a drift of the host clock hits all rows alike."""
    note = progress or (lambda _: None)
    base_runs: list[dict[str, int]] = []
    measured: dict[str, list[dict[str, int]]] = {row.key: [] for row in rows}
    facts: dict[str, dict[str, Any]] = {}
    for round_ in range(runs):
        note(f"round {round_ + 1}/{runs}: baseline")
        base_runs += _getpid_runs(machine, n, 1)
        for row in rows:
            note(f"round {round_ + 1}/{runs}: {row.label}")
            spliced = instr.splice(FUNCTION, mode=row.mode, policy=Policy.SINGLE, patch_kind=row.patch_kind,
                                   springboards=row.springboards, own_vector=row.own_vector)
            try:
                measured[row.key] += _getpid_runs(machine, n, 1)
            finally:
                undone = instr.unsplice(spliced.plan.slot)
            plan = spliced.plan
            fact = facts.setdefault(row.key, {
                "mode": plan.mode.name.lower(), "hops": plan.hops, "point": plan.point,
                "springboards": [b.address for b in plan.springboards], "window": plan.window.length,
                "patch": row.patch_kind.value, "vector": spliced.vector if plan.mode is not Mode.JMP else None,
                "splice_stall_s": [], "unsplice_stall_s": []})
            fact["splice_stall_s"].append(spliced.stall_s)
            fact["unsplice_stall_s"].append(undone.stall_s)
    results = [_row("baseline", "unspliced getpid", "path", base_runs)]
    results += [_row(row.key, row.label, "path", measured[row.key], **facts[row.key]) for row in rows]
    return results


def measure_floors(machine: QemuMachine, instr: Instrumenter, n: int, runs: int,
                   progress: Progress | None = None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Kernel-mode floors through the sampler (see rig.bench.floors); everything undone after."""
    note = progress or (lambda _: None)
    note("floors")
    instr.prep()  # installs the repository (and checks its memory is reserved) if not yet there
    sampler = floors.SamplerLayout.of(instr.layout, n)
    gdb = instr.gdb
    idt_base = instr.image.symbol("idt_table").address
    with gdb.stopped():
        table = gdb.read_memory(idt_base, 256 * idt.GATE_SIZE)
        vector = idt.find_free_vector(table, instr.image.symbol("ignore_int").address, prefer=0x82)
        old_gate = table[vector * idt.GATE_SIZE:(vector + 1) * idt.GATE_SIZE]
        gate = MemoryWrite(idt_base + vector * idt.GATE_SIZE, idt.make_trap_gate(sampler.iret_stub).encode(),
                           "floor-gate", expect=old_gate)
        apply_writes(gdb, instr.layout, "install the bench's floor sampler",
                     [floors.install_writes(sampler, vector), [gate]])
    samples: dict[str, list[dict[str, int]]] = {floor: [] for floor in floors.FLOORS}
    spliced = None
    try:
        spliced = instr.splice(FUNCTION, mode=Mode.JMP, policy=Policy.SINGLE, patch_kind=PatchKind.CALL,
                               call_target=sampler.entry)
        for _ in range(runs):
            with gdb.stopped():
                apply_writes(gdb, instr.layout, "reset the floor sampler",
                             [[MemoryWrite(sampler.index, floors.reset_bytes(sampler), "floor-index")]])
            machine.console.request(f"bench getpid {n}", timeout=GUEST_TIMEOUT_S)
            with gdb.stopped():
                taken = int.from_bytes(gdb.read_memory(sampler.index, 4), "little")
                raws = gdb.read_many([(sampler.array(f), 4 * taken) for f in floors.FLOORS])
            if taken < n:
                raise RigError(f"the floor sampler ran {taken} times for {n} getpid calls",
                               hint="the sampler splice did not stay in place; reboot the guest")
            for floor, raw in zip(floors.FLOORS, raws):
                samples[floor].append(summarize(floors.decode_samples(sampler, raw, taken)))
    finally:
        if spliced is not None:
            instr.unsplice(spliced.plan.slot)
        with gdb.stopped():
            gate_back = MemoryWrite(idt_base + vector * idt.GATE_SIZE, old_gate, "floor-gate")
            apply_writes(gdb, instr.layout, "remove the bench's floor sampler",
                         [[gate_back], [MemoryWrite(sampler.base, bytes(floors.ARRAYS_OFFSET), "floor-sampler")]],
                         commit=gate_back)
    labels = {"null": "rdtsc pair (kernel)", "jmp": "bare taken jmp (kernel)",
              "jmp-far": "jmp rel32 out + back, another page (kernel)", "int": "bare int $n -> iret (kernel)"}
    rows = [_row(f"floor-{floor}", labels[floor], "floor", samples[floor]) for floor in floors.FLOORS]
    return rows, {"vector": vector, "sampler": sampler.entry, "iret_stub": sampler.iret_stub,
                  "hook": f"jmp/call splice at {FUNCTION}+0"}


def derive(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Overheads against the baseline, relative costs against the jmp splice, floor ratios."""
    by_key = {row["key"]: row for row in rows}
    base = by_key["baseline"]["stats"]
    null = by_key.get("floor-null", {}).get("stats")
    for row in rows:
        stats = row["stats"]
        if row["kind"] == "path" and row["key"] != "baseline":
            row["overhead"] = {s: stats[s] - base[s] for s in ("min", "median", "mean")}
        elif row["kind"] == "floor" and null is not None and row["key"] != "floor-null":
            row["overhead"] = {s: stats[s] - null[s] for s in ("min", "median", "mean")}
    jmp = by_key.get("jmp", {}).get("overhead")
    for row in rows:
        if jmp and "overhead" in row:
            # A jmp overhead the clock cannot resolve (<= 0: host-time noise under TCG) makes no unit.
            row["relative"] = {s: (row["overhead"][s] / jmp[s] if jmp[s] > 0 else None) for s in ("min", "median")}
    summary: dict[str, Any] = {}
    for stat in ("min", "median"):
        ratios: dict[str, float | None] = {}
        for trap in ("trap", "trap-own"):
            if trap in by_key and "jmp" in by_key:
                j, t = by_key["jmp"]["overhead"][stat], by_key[trap]["overhead"][stat]
                ratios[f"{trap.replace('-', '_')}_to_jmp"] = t / j if j > 0 else None
        for splice, floor in (("trap", "floor-int"), ("trap-own", "floor-int"), ("jmp", "floor-jmp-far")):
            if splice in by_key and floor in by_key and "overhead" in by_key[floor]:
                f = by_key[floor]["overhead"][stat]
                ratios[f"{splice}_to_{floor.removeprefix('floor-')}_floor"] = (
                    by_key[splice]["overhead"][stat] / f if f > 0 else None)
        summary[stat] = ratios
    return summary


def measure(machine: QemuMachine, instr: Instrumenter, n: int, runs: int, counter: bool = False,
            chains: tuple[int, ...] = (1, 2, 3), progress: Progress | None = None) -> dict[str, Any]:
    started = time.monotonic()
    rows = measure_paths(machine, instr, n, runs, splice_rows(chains, counter), progress)
    floor_rows, floor_info = measure_floors(machine, instr, n, runs, progress)
    rows += floor_rows
    summary = derive(rows)
    return {"function": FUNCTION, "n": n, "runs": runs, "rows": rows, "floors": floor_info,
            "summary": summary, "paper": PAPER, "seconds": round(time.monotonic() - started, 3)}
