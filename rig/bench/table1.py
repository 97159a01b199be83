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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from rig.bench import floors
from rig.bench.figure import pyplot, save_figure
from rig.bench.part import ClockRun, Guest, GuestPart, Progress, ReportContext
from rig.bench.sections import Section, Table
from rig.bench.stats import STATS, across_runs
from rig.errors import RigError
from rig.guest.machine import QemuMachine
from rig.instrument import Instrumenter
from rig.splicer.kinds import Mode, PatchKind, Policy

FUNCTION = "sys_getpid"
PAPER = {"cpu": "Pentium 4 1.4 GHz", "kernel": "Linux 2.4.20", "compiler": "gcc 3.2",
         "jmp_cycles": 84.0012, "trap_cycles": 1613.5124, "ratio": "1:19"}
PAPER_TRAP_RELATIVE = PAPER["trap_cycles"] / PAPER["jmp_cycles"]
GUEST_TIMEOUT_S = 300.0
DEFAULT_N = 10_000
DEFAULT_RUNS = 5
MAX_N = 64_512  # samples per run the guest's buffer holds, and the floor sampler (floors.MAX_SAMPLES)

# Row keys, the one spelling that derive, the report and Fig. 5 share.
BASELINE = "baseline"
JMP = "jmp"
TRAP = "trap"
TRAP_OWN = "trap-own"
INT3 = "int3"


def floor_key(floor: str) -> str:
    return f"floor-{floor}"


FLOOR_NULL, FLOOR_JMP, FLOOR_JMP_FAR, FLOOR_INT = (floor_key(f) for f in floors.FLOORS)
FLOOR_LABELS = {FLOOR_NULL: "rdtsc pair (kernel)", FLOOR_JMP: "bare taken jmp (kernel)",
                FLOOR_JMP_FAR: "jmp rel32 out + back, another page (kernel)", FLOOR_INT: "bare int $n -> iret (kernel)"}
PATH, FLOOR = "path", "floor"                 # row kinds: a timed getpid path, a kernel-mode floor
OVERHEAD_STATS = ("min", "median", "mean")    # statistics an overhead is given for
RATIO_STATS = ("min", "median")               # statistics ratios are given for

RunStats = dict[str, int]    # one guest run: n, min, median, mean, p95, max, tsc_overhead
Stats = dict[str, float]     # by statistic


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
        rows.append(SpliceRow(f"{JMP}{suffix}", f"jmp rel32 splice{probe}", Mode.JMP, 0, kind))
        rows += [SpliceRow(f"{JMP}-sb{k}{suffix}", f"jmp rel8 + {k} springboard(s){probe}", Mode.JMP, k, kind)
                 for k in chains]
        rows.append(SpliceRow(f"{TRAP}{suffix}", f"trap splice (int $n){probe}", Mode.TRAP, None, kind))
        rows.append(SpliceRow(f"{TRAP_OWN}{suffix}", f"trap splice, own vector (no lookup){probe}", Mode.TRAP,
                              None, kind, own_vector=True))
        rows.append(SpliceRow(f"{INT3}{suffix}", f"int3 splice (1 byte){probe}", Mode.INT3, None, kind))
    return rows


@dataclass
class SpliceFacts:
    """What the splicer did for a row (the same in every round)."""

    mode: str
    hops: int
    point: int
    springboards: list[int]
    window: int
    patch: str
    vector: int | None
    splice_stall_s: list[float] = field(default_factory=list)
    unsplice_stall_s: list[float] = field(default_factory=list)


@dataclass
class Row:
    key: str
    label: str
    kind: str                                   # PATH or FLOOR
    runs: list[RunStats]
    stats: Stats                                # across the runs (rig.bench.stats.across_runs)
    overhead: Stats | None = None               # row - baseline (paths), - rdtsc pair (floors)
    relative: dict[str, float | None] | None = None  # overhead / the jmp splice's overhead
    splice: SpliceFacts | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"key": self.key, "label": self.label, "kind": self.kind, "runs": self.runs,
                               "stats": self.stats}
        if self.overhead is not None:
            out["overhead"] = self.overhead
        if self.relative is not None:
            out["relative"] = self.relative
        if self.splice is not None:
            out.update(asdict(self.splice))
        return out


@dataclass(frozen=True)
class Ratios:
    """One statistic's ratios of overheads; None where a row is missing or the divisor is not > 0."""

    trap_to_jmp: float | None = None
    trap_own_to_jmp: float | None = None
    trap_to_int_floor: float | None = None
    trap_own_to_int_floor: float | None = None
    jmp_to_jmp_far_floor: float | None = None


@dataclass
class Table1Result:
    """Table 1 in one guest."""

    function: str
    n: int
    runs: int
    rows: list[Row]
    floors: floors.FloorSampler
    summary: dict[str, Ratios]   # by statistic (RATIO_STATS)
    seconds: float

    def row(self, key: str) -> Row | None:
        return next((row for row in self.rows if row.key == key), None)

    @property
    def identical_across_runs(self) -> dict[str, bool]:
        """Per statistic: did every run of every row give the same figure in this boot?"""
        return {stat: all(len({run[stat] for run in row.runs}) == 1 for row in self.rows) for stat in STATS}

    def to_json(self) -> dict[str, Any]:
        return {"function": self.function, "n": self.n, "runs": self.runs, "rows": [r.to_json() for r in self.rows],
                "floors": self.floors.to_json(), "summary": {s: asdict(r) for s, r in self.summary.items()},
                "paper": PAPER, "seconds": self.seconds, "identical_across_runs": self.identical_across_runs}


@dataclass
class ClockTable1:
    """Table 1 in the guest of one clock."""

    clock: ClockRun
    table: Table1Result

    def to_json(self) -> dict[str, Any]:
        return {**self.clock.to_json(), **self.table.to_json()}


# ---- measurement ---------------------------------------------------------------------------------
def _getpid_runs(machine: QemuMachine, n: int, runs: int) -> list[RunStats]:
    out = []
    for _ in range(runs):
        reply = machine.console.request(f"bench getpid {n}", timeout=GUEST_TIMEOUT_S)
        if not reply.bool_field("pid_ok"):
            raise RigError("getpid returned different pids inside one run: the spliced path is broken",
                           hint="look at the splice (invoke splices) and reboot the guest")
        out.append({key: reply.int_field(key) for key in ("n", *STATS, "tsc_overhead")})
    return out


def measure_paths(machine: QemuMachine, instr: Instrumenter, n: int, runs: int,
                  rows: list[SpliceRow], progress: Progress | None = None) -> list[Row]:
    """Baseline and every splice row, interleaved: each round runs the baseline and then every row
    once (splice, ``bench getpid N``, unsplice), so a drift of the host clock hits all rows alike."""
    note = progress or (lambda _: None)
    base_runs: list[RunStats] = []
    measured: dict[str, list[RunStats]] = {row.key: [] for row in rows}
    facts: dict[str, SpliceFacts] = {}
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
            fact = facts.setdefault(row.key, SpliceFacts(
                mode=plan.mode.name.lower(), hops=plan.hops, point=plan.point,
                springboards=[b.address for b in plan.springboards], window=plan.window.length,
                patch=row.patch_kind.value, vector=spliced.vector if plan.mode is not Mode.JMP else None))
            fact.splice_stall_s.append(spliced.stall_s)
            fact.unsplice_stall_s.append(undone.stall_s)
    results = [Row(BASELINE, "unspliced getpid", PATH, base_runs, across_runs(base_runs))]
    results += [Row(row.key, row.label, PATH, measured[row.key], across_runs(measured[row.key]), splice=facts[row.key])
                for row in rows]
    return results


def measure_floors(machine: QemuMachine, instr: Instrumenter, n: int, runs: int,
                   progress: Progress | None = None) -> tuple[list[Row], floors.FloorSampler]:
    """Kernel-mode floors through the sampler (see rig.bench.floors); everything undone after."""
    (progress or (lambda _: None))("floors")
    sampled = floors.measure(machine, instr, n, runs, FUNCTION, GUEST_TIMEOUT_S)
    rows = [Row(floor_key(floor), FLOOR_LABELS[floor_key(floor)], FLOOR, sampled.runs[floor],
                across_runs(sampled.runs[floor])) for floor in floors.FLOORS]
    return rows, sampled.sampler


def derive(rows: list[Row]) -> dict[str, Ratios]:
    """Overheads against the baseline, relative costs against the jmp splice (set on the rows),
    and the ratios of the summary, by statistic."""
    by_key = {row.key: row for row in rows}
    base = by_key[BASELINE].stats
    null = by_key.get(FLOOR_NULL)
    for row in rows:
        if row.kind == PATH and row.key != BASELINE:
            row.overhead = {s: row.stats[s] - base[s] for s in OVERHEAD_STATS}
        elif row.kind == FLOOR and null is not None and row.key != FLOOR_NULL:
            row.overhead = {s: row.stats[s] - null.stats[s] for s in OVERHEAD_STATS}
    jmp_row = by_key.get(JMP)
    jmp = jmp_row.overhead if jmp_row is not None else None
    for row in rows:
        if jmp and row.overhead is not None:
            # A jmp overhead the clock cannot resolve (<= 0: host-time noise under TCG) makes no unit.
            row.relative = {s: (row.overhead[s] / jmp[s] if jmp[s] > 0 else None) for s in RATIO_STATS}

    def ratio(numerator: str, denominator: str, stat: str) -> float | None:
        top, bottom = by_key.get(numerator), by_key.get(denominator)
        if top is None or bottom is None or top.overhead is None or bottom.overhead is None:
            return None
        return top.overhead[stat] / bottom.overhead[stat] if bottom.overhead[stat] > 0 else None

    return {stat: Ratios(trap_to_jmp=ratio(TRAP, JMP, stat), trap_own_to_jmp=ratio(TRAP_OWN, JMP, stat),
                         trap_to_int_floor=ratio(TRAP, FLOOR_INT, stat),
                         trap_own_to_int_floor=ratio(TRAP_OWN, FLOOR_INT, stat),
                         jmp_to_jmp_far_floor=ratio(JMP, FLOOR_JMP_FAR, stat))
            for stat in RATIO_STATS}


def measure(machine: QemuMachine, instr: Instrumenter, n: int, runs: int, counter: bool = False,
            chains: tuple[int, ...] = (1, 2, 3), progress: Progress | None = None) -> Table1Result:
    started = time.monotonic()
    rows = measure_paths(machine, instr, n, runs, splice_rows(chains, counter), progress)
    floor_rows, sampler = measure_floors(machine, instr, n, runs, progress)
    rows += floor_rows
    summary = derive(rows)
    return Table1Result(FUNCTION, n, runs, rows, sampler, summary, round(time.monotonic() - started, 3))


# ---- report --------------------------------------------------------------------------------------
def _paper_cell(key: str) -> str:
    if key == JMP:
        return f"{PAPER['jmp_cycles']} cycles (1)"
    if key == TRAP:
        return f"{PAPER['trap_cycles']} cycles ({PAPER_TRAP_RELATIVE:.1f})"
    return ""


def _ratio(value: float | None) -> str:
    return "" if value is None else f"{value:.3g}"


def table1_table(result: ClockTable1) -> Table:
    """Cells in the clock's unit: raw TSC divided by its ticks per unit."""
    clock, table = result.clock.clock, result.table
    unit = clock.tsc_per_unit

    def u(value: float | None) -> float | str:
        return "" if value is None else (value / unit if unit != 1 else value)

    header = ["row", "jmps", "min", "median", "mean", "p95", "max", "overhead (min)", "overhead (median)",
              "x jmp splice (min)", "x jmp splice (median)", "paper (P4 1.4 GHz)"]
    rows = []
    for row in table.rows:
        stats, overhead, relative = row.stats, row.overhead or {}, row.relative or {}
        rows.append([row.label, row.splice.hops if row.splice else "", u(stats["min"]), u(stats["median"]),
                     u(stats["mean"]), u(stats["p95"]), u(stats["max"]), u(overhead.get("min")),
                     u(overhead.get("median")), *(_ratio(relative.get(stat)) for stat in RATIO_STATS),
                     _paper_cell(row.key)])
    return Table(f"Table 1 ({clock.name}; unit: {clock.unit}): getpid with splices at "
                 f"{table.function}+0, {table.n} calls x {table.runs} runs; floors in "
                 "kernel mode, overhead = row - unspliced (paths) or - rdtsc pair (floors)", header, rows)


def table1_notes(result: ClockTable1) -> list[str]:
    clock = result.clock
    notes = [f"Clock {clock.name}: {clock.clock.meaning}. Accelerator choice: {clock.accel_reason}."]
    for stat, s in result.table.summary.items():
        parts = []
        if s.trap_to_jmp is not None:
            parts.append(f"jmp : trap splice overhead = 1 : {_ratio(s.trap_to_jmp)} "
                         f"(paper 1 : {PAPER_TRAP_RELATIVE:.1f} in P4 cycles)")
        if s.trap_to_int_floor is not None:
            parts.append(f"trap splice / bare int->iret floor = {_ratio(s.trap_to_int_floor)} "
                         "(target <= 1.2 in real cycles)")
        if s.trap_own_to_jmp is not None:
            parts.append(f"with a vector of its own (no table lookup): jmp : trap = 1 : {_ratio(s.trap_own_to_jmp)}, "
                         f"trap / bare int->iret floor = {_ratio(s.trap_own_to_int_floor)}")
        if s.jmp_to_jmp_far_floor is not None:
            parts.append(f"jmp splice / bare jmp out+back floor = {_ratio(s.jmp_to_jmp_far_floor)}")
        notes.append(f"by the {stat}: " + "; ".join(parts) + ".")
    same = [k for k, v in result.table.identical_across_runs.items() if v]
    notes.append(f"Statistics identical in every run of this boot: {', '.join(same) or 'none'}.")
    return notes


def plot_table1(results: list[ClockTable1], out_png: Path, caption: str) -> Path:
    """Overheads by the minimum, one panel per clock in its own unit, and the paper's cycles.

    Absolute, not normalised: under plain TCG the jmp splice's few ticks can vanish into host-time
    noise, which would make every ratio meaningless. Overheads the clock cannot resolve (<= 0) get
    a marker at the axis instead of a bar."""
    plt = pyplot()
    panels = len(results) + 1
    fig, axes = plt.subplots(1, panels, figsize=(4.6 * panels, 4.8), squeeze=False, sharey=True)
    labels: list[str] = []
    for result in results:
        for row in result.table.rows:
            if row.overhead is not None and row.label not in labels:
                labels.append(row.label)
    ys = list(range(len(labels)))
    for ax, result in zip(axes[0], results):
        clock = result.clock.clock
        over = {row.label: row.overhead["min"] / clock.tsc_per_unit for row in result.table.rows
                if row.overhead is not None}
        shown = [(y, over[label]) for y, label in zip(ys, labels) if over.get(label, 0) > 0]
        hidden = [y for y, label in zip(ys, labels) if label in over and over[label] <= 0]
        ax.barh([y for y, _ in shown], [v for _, v in shown], 0.6)
        if hidden:
            ax.plot([0.5] * len(hidden), hidden, "x", color="red", label="<= 0: below the clock's resolution")
            ax.legend(fontsize=7, loc="lower right")
        ax.set_xscale("log")
        ax.set_xlim(left=0.4)
        ax.set_title(f"{clock.name}", fontsize=9)
        ax.set_xlabel(f"overhead, {clock.unit} (min)", fontsize=8)
        ax.grid(axis="x", which="both", alpha=0.3)
    keys = {row.label: row.key for result in results for row in result.table.rows}
    paper = [(y, PAPER["jmp_cycles"] if keys[label] == JMP else PAPER["trap_cycles"])
             for y, label in zip(ys, labels) if keys.get(label) in (JMP, TRAP)]
    axes[0][-1].barh([y for y, _ in paper], [v for _, v in paper], 0.6, color="grey")
    axes[0][-1].set_xscale("log")
    axes[0][-1].set_xlim(left=10)
    axes[0][-1].set_title("paper (P4 1.4 GHz)", fontsize=9)
    axes[0][-1].set_xlabel("cycles", fontsize=8)
    axes[0][-1].grid(axis="x", which="both", alpha=0.3)
    axes[0][0].set_yticks(ys, labels, fontsize=8)
    fig.suptitle("Table 1 reproduced: what each splice adds to a getpid call, and the floors")
    fig.subplots_adjust(left=0.2, wspace=0.08)
    return save_figure(fig, out_png, caption, caption_size=6)


# ---- the part ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Table1Part(GuestPart[ClockTable1]):
    key: ClassVar[str] = "table1"
    title: ClassVar[str] = "Table 1"
    switch: ClassVar[str] = "table1"

    n: int = DEFAULT_N               # getpid calls per run
    runs: int = DEFAULT_RUNS
    counter_rows: bool = False       # also every splice row with the counting probe
    chains: tuple[int, ...] = (1, 2, 3)  # springboards of the forced jmp rel8 chains

    def check(self) -> None:
        if not 1 <= self.n <= MAX_N:
            raise RigError(f"--n {self.n} is outside 1..{MAX_N}",
                           hint=f"the guest and the floor sampler keep at most {MAX_N} samples per run")
        if self.runs < 1:
            raise RigError("--runs must be at least 1")

    def steps(self) -> int:
        rows = len(splice_rows(self.chains, self.counter_rows))
        return self.runs * (1 + rows) + 1  # a note per round and row, one for the floors

    def measure(self, guest: Guest) -> ClockTable1:
        return ClockTable1(guest.clock, measure(guest.machine, guest.instr, self.n, self.runs,
                                                counter=self.counter_rows, chains=self.chains, progress=guest.note))

    def to_json(self, result: list[ClockTable1]) -> Any:
        return [clock.to_json() for clock in result]

    def sections(self, result: list[ClockTable1], report: ReportContext) -> list[Section]:
        sections = []
        for clock_table in result:
            clock = clock_table.clock
            prov = report.clock_provenance(clock, self.n)
            sections.append(Section(f"Table 1 — {clock.name}", prov, [table1_table(clock_table)],
                                    notes=table1_notes(clock_table), slot=clock.section_slot))
        if result:
            meanings = "; ".join(f"{r.clock.name}: {r.clock.clock.meaning}" for r in result)
            prov = report.provenance(accelerator=", ".join(r.clock.name for r in result), clock_meaning=meanings,
                                     n=self.n)
            plot_table1(result, report.run_dir / "table1.png", prov.summary())
            sections.append(Section("Table 1 — overheads", prov, figures=["table1.png"]))
        return sections
