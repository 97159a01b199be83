"""Splices at scale (issue 10), measured in the guest: does a splice cost more when thousands are
live, and how long does one batch hold the guest stopped?

* Overhead against the number of live splices: for each L, L - 1 filler splices at points the
  getpid path never runs (every instruction of network and driver functions, trap or int3 by
  size, applied with :meth:`Instrumenter.splice_many` in chunks), then the measured splice at
  ``sys_getpid+0`` in the highest slot (slots are taken lowest-free-first), timed by the guest's
  ``bench getpid N`` as Table 1 times it. Overhead = spliced - unspliced getpid, the unspliced
  baseline measured with the fillers live. All splices are undone (one stop) before the next L.
* Guest stop time against batch size: ``splice_many`` of B filler points, its host-timed stops
  (the guest's TSC cannot see a stop under TCG): the one that checks and writes the points (the
  goal's), the staging stop before it that wrote what no branch leads to yet (patch areas,
  dispatch buckets, slot records), the prep stop, and the wall time of the whole call; the MI
  commands and bytes of the point stop; everything undone between.

Opt-in (``invoke bench --scale``): a full run fills 4096 slots in every clock's guest.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

from rig.bench.part import ClockRun, Guest, GuestPart, Progress, ReportContext
from rig.bench.sections import Section, Table
from rig.bench.stats import across_runs
from rig.bench.table1 import MAX_N, RunStats, Stats, _getpid_runs
from rig.errors import RigError
from rig.guest.machine import QemuMachine
from rig.instrument import Instrumenter
from rig.instrument.manager import PointRequest
from rig.instrument.trace import every_instruction
from rig.splicer.analysis import disassemble_function
from rig.splicer.kinds import Mode, PatchKind, Policy
from rig.splicer.repository import DEFAULT_SLOTS

FUNCTION = "sys_getpid"
DEFAULT_LIVE = (1, 16, 128, 1024, 4096)
DEFAULT_BATCHES = (1, 10, 100, 1000)
DEFAULT_N = 10_000
DEFAULT_RUNS = 3
CHUNK = 500                 # filler points per splice_many while filling
# Functions the getpid path (and an idle guest) never runs: the network stack and the NIC driver.
FILLER_PREFIXES = ("tcp_", "udp_", "ip_", "speedo_", "eepro100", "raw_", "arp_", "icmp_", "fib_", "rt_", "neigh_")
NEVER = frozenset({FUNCTION, "system_call"})
MODES = (Mode.TRAP, Mode.INT3, Mode.JMP)     # the measured splice: shared-vector trap, int3, jmp rel32
STATS_SHOWN = ("min", "median")
GOAL_RATIO = 1.1            # overhead at L live / at 1 live, under -icount
GOAL_WALL_S = 2.0           # a batch of 1000 points: host wall time of the call
GOAL_STOP_S = 0.050         # ... and the guest stop


@dataclass
class ModeRow:
    """The measured splice in one mode at one live count."""

    mode: str
    slot: int
    runs: list[RunStats]
    stats: Stats
    overhead: Stats                        # - the baseline with the fillers live (STATS_SHOWN)
    ratio: dict[str, float | None] = field(default_factory=dict)  # overhead / overhead at the first live count


@dataclass
class LivePoint:
    """One live count: fillers, the baseline with them live, and the measured splice per mode."""

    target: int                # L asked for (fillers + the measured splice)
    fillers: int               # filler splices live (L - 1 unless the points ran out)
    refused: int               # filler points refused while filling
    fill_s: float              # host wall time to fill
    baseline_runs: list[RunStats]
    baseline: Stats
    rows: list[ModeRow]
    unsplice_all_s: float      # host wall time of the unsplice_all after

    @property
    def live(self) -> int:
        return self.fillers + 1

    def row(self, mode: str) -> ModeRow | None:
        return next((row for row in self.rows if row.mode == mode), None)


@dataclass(frozen=True)
class BatchPoint:
    """One batch of B filler points, applied in one stop."""

    size: int                  # B asked for
    spliced: int
    refused: int
    stall_s: float             # host time the guest was held stopped to check and write the points
    prep_stall_s: float        # the first stop, that read the repository and the tasks
    wall_s: float              # host wall time of the splice_many call
    unsplice_stall_s: float    # the longest stop of the unsplice_all after (its rounds)
    unsplice_wall_s: float
    stage_stall_s: float = 0.0  # the stop between them that wrote patches, buckets, records (nothing live)


@dataclass
class ScaleResult:
    function: str
    n: int
    runs: int
    filler_points: int         # filler candidates looked at (all of them when L ran out)
    live: list[LivePoint]
    batches: list[BatchPoint]
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return {"function": self.function, "n": self.n, "runs": self.runs, "filler_points": self.filler_points,
                "live": [{**asdict(p), "live": p.live} for p in self.live],
                "batches": [asdict(b) for b in self.batches], "seconds": self.seconds}


@dataclass
class ClockScale:
    clock: ClockRun
    scale: ScaleResult

    def to_json(self) -> dict[str, Any]:
        return {**self.clock.to_json(), **self.scale.to_json()}


# ---- measurement ---------------------------------------------------------------------------------
class Fillers:
    """Filler points, in address order of the functions, decoded only as far as they are needed."""

    def __init__(self, instr: Instrumenter) -> None:
        image = instr.image
        self._symbols = sorted((s for s in image.functions_in(".text")
                                if s.name not in NEVER and s.name.startswith(FILLER_PREFIXES) and s.size > 0),
                               key=lambda s: s.address)
        self._image = image
        self._points: list[PointRequest] = []
        self._decoded = 0

    def take(self, start: int, count: int) -> list[PointRequest]:
        """Points ``start`` .. ``start + count`` (fewer when the functions run out)."""
        while len(self._points) < start + count and self._decoded < len(self._symbols):
            symbol = self._symbols[self._decoded]
            self._decoded += 1
            code = disassemble_function(self._image, symbol)
            self._points += [PointRequest(r.function, r.mode, r.policy, address=r.address, patch_kind=PatchKind.EMPTY)
                             for r in every_instruction(code)]
        return self._points[start:start + count]

    @property
    def seen(self) -> int:
        return len(self._points)


def fill(instr: Instrumenter, fillers: Fillers, count: int) -> tuple[int, int]:
    """Splice ``count`` filler points (chunks of at most CHUNK); (live, refused)."""
    live = refused = 0
    cursor = 0
    while live < count:
        chunk = fillers.take(cursor, min(CHUNK, count - live))
        if not chunk:
            break
        cursor += len(chunk)
        done = instr.splice_many(chunk, strict=False)
        live += len(done.plans)
        refused += len(done.refused)
    return live, refused


def measure_live(machine: QemuMachine, instr: Instrumenter, fillers: Fillers, target: int, n: int, runs: int,
                 note: Progress) -> LivePoint:
    note(f"{target} live: filling {target - 1}")
    started = time.monotonic()
    live, refused = fill(instr, fillers, target - 1)
    fill_s = time.monotonic() - started
    base_runs: list[RunStats] = []
    measured: dict[str, list[RunStats]] = {mode.name.lower(): [] for mode in MODES}
    slots: dict[str, int] = {}
    try:
        for round_ in range(runs):
            note(f"{target} live: round {round_ + 1}/{runs} baseline")
            base_runs += _getpid_runs(machine, n, 1)
            for mode in MODES:
                name = mode.name.lower()
                note(f"{target} live: round {round_ + 1}/{runs} {name}")
                spliced = instr.splice(FUNCTION, mode=mode, policy=Policy.SINGLE, patch_kind=PatchKind.EMPTY)
                try:
                    measured[name] += _getpid_runs(machine, n, 1)
                finally:
                    instr.unsplice(spliced.plan.slot)
                slots[name] = spliced.plan.slot
    finally:
        note(f"{target} live: unsplice all")
        undo_started = time.monotonic()
        instr.unsplice_all()
        undo_s = time.monotonic() - undo_started
    baseline = across_runs(base_runs)
    rows = []
    for name, got in measured.items():
        stats = across_runs(got)
        rows.append(ModeRow(name, slots[name], got, stats, {s: stats[s] - baseline[s] for s in STATS_SHOWN}))
    return LivePoint(target, live, refused, round(fill_s, 3), base_runs, baseline, rows, round(undo_s, 3))


def measure_batch(instr: Instrumenter, fillers: Fillers, size: int, note: Progress) -> BatchPoint:
    note(f"batch of {size}")
    requests = fillers.take(0, size)
    started = time.monotonic()
    done = instr.splice_many(requests, strict=False)
    wall = time.monotonic() - started
    started = time.monotonic()
    undone = instr.unsplice_all()
    undo_wall = time.monotonic() - started
    undo_stall = max((u.stall_s for u in undone), default=0.0)
    return BatchPoint(size, len(done.plans), len(done.refused), done.stall_s, done.prep_stall_s, wall,
                      undo_stall, undo_wall, stage_stall_s=done.stage_stall_s)


def derive(points: list[LivePoint]) -> None:
    """Each mode's overhead against the first live count's (its reference row)."""
    if not points:
        return
    reference = points[0]
    for point in points:
        for row in point.rows:
            ref = reference.row(row.mode)
            row.ratio = {s: (row.overhead[s] / ref.overhead[s] if ref is not None and ref.overhead[s] > 0 else None)
                         for s in STATS_SHOWN}


def measure(machine: QemuMachine, instr: Instrumenter, live: tuple[int, ...], batches: tuple[int, ...], n: int,
            runs: int, progress: Progress | None = None) -> ScaleResult:
    note = progress or (lambda _: None)
    started = time.monotonic()
    if instr.active()[1]:
        raise RigError("the scale bench needs a guest with no live splices", hint="invoke unsplice --all first")
    fillers = Fillers(instr)
    points = [measure_live(machine, instr, fillers, target, n, runs, note) for target in live]
    derive(points)
    done = [measure_batch(instr, fillers, size, note) for size in batches]
    return ScaleResult(FUNCTION, n, runs, fillers.seen, points, done, round(time.monotonic() - started, 3))


# ---- report --------------------------------------------------------------------------------------
def _r(value: float | None) -> str:
    return "" if value is None else f"{value:.3g}"


def live_table(result: ClockScale) -> Table:
    clock, scale = result.clock.clock, result.scale
    unit = clock.tsc_per_unit

    def u(value: float) -> float:
        return value / unit if unit != 1 else value

    header = ["live splices", "fillers", "mode", "slot", "baseline min", "baseline median", "spliced min",
              "spliced median", "overhead min", "overhead median", "x 1 live (min)", "x 1 live (median)"]
    rows = []
    for point in scale.live:
        for row in point.rows:
            rows.append([point.live, point.fillers, row.mode, row.slot, u(point.baseline["min"]),
                         u(point.baseline["median"]), u(row.stats["min"]), u(row.stats["median"]),
                         u(row.overhead["min"]), u(row.overhead["median"]),
                         *(_r(row.ratio.get(s)) for s in STATS_SHOWN)])
    first = scale.live[0].live if scale.live else 1
    return Table(f"Overhead vs live splices ({clock.name}; unit: {clock.unit}): getpid with the measured splice at "
                 f"{scale.function}+0 in the highest slot, {scale.n} calls x {scale.runs} runs; overhead = spliced - "
                 f"unspliced with the fillers live; reference row: {first} live; goal <= {GOAL_RATIO} x under -icount",
                 header, rows)


def batch_table(result: ClockScale) -> Table:
    header = ["batch size", "spliced", "refused", "stop ms", "staging stop ms", "prep stop ms", "wall s",
              "unsplice_all stop ms", "unsplice_all wall s"]
    rows = [[b.size, b.spliced, b.refused, round(b.stall_s * 1000, 2), round(b.stage_stall_s * 1000, 2),
             round(b.prep_stall_s * 1000, 2), round(b.wall_s, 3), round(b.unsplice_stall_s * 1000, 2),
             round(b.unsplice_wall_s, 3)] for b in result.scale.batches]
    return Table(f"Guest stop time vs batch size ({result.clock.name}; host-timed): splice_many of B filler points; "
                 "stop = the stop that checks and writes the points, after a staging stop that wrote what no branch "
                 f"leads to yet; goal 1000 points <= {GOAL_WALL_S} s wall and <= {GOAL_STOP_S * 1000:.0f} ms stop",
                 header, rows)


def scale_notes(result: ClockScale, live_asked: tuple[int, ...]) -> list[str]:
    clock, scale = result.clock, result.scale
    notes = [(f"Clock {clock.name}: {clock.clock.meaning}. Filler points: every instruction of the functions named "
             f"{', '.join(p + '*' for p in FILLER_PREFIXES)} in .text (trap where 2 bytes or more fit, int3 where 1), "
             f"{scale.filler_points} looked at; applied in batches of <= {CHUNK}.")]
    short = [p for p in scale.live if p.fillers < p.target - 1]
    if short:
        notes.append("Live counts not reached (filler points ran out or were refused): " + ", ".join(
            f"{p.target} asked, {p.live} live" for p in short) + ".")
    if scale.live:
        top = scale.live[-1]
        for mode in (m.name.lower() for m in MODES):
            row = top.row(mode)
            if row is None:
                continue
            ratios = ", ".join(f"{s} {_r(row.ratio.get(s))}" for s in STATS_SHOWN)
            ok = [row.ratio.get(s) for s in STATS_SHOWN]
            if clock.clock.deterministic:
                met = all(r is not None and r <= GOAL_RATIO for r in ok)
                verdict = "goal met" if met else "goal NOT met"
                notes.append(f"{mode}: overhead at {top.live} live / at {scale.live[0].live} live = {ratios}: "
                             f"{verdict} (<= {GOAL_RATIO} x under -icount).")
            else:
                notes.append(f"{mode}: overhead at {top.live} live / at {scale.live[0].live} live = {ratios} "
                             "(host time: noisy; the goal is judged under -icount).")
        notes.append("The trap and int3 rows dispatch one address (sys_getpid+0) through the hashed table: a "
                     "ratio of 1 says its lookup did not grow with the load, not what an average address probes.")
        if top.target != live_asked[-1] or top.live < max(live_asked):
            notes.append(f"Largest live count measured: {top.live} (asked {max(live_asked)}).")
    big = [b for b in scale.batches if b.size >= 1000]
    for b in big:
        wall_ok, stop_ok = b.wall_s <= GOAL_WALL_S, b.stall_s <= GOAL_STOP_S
        notes.append(f"Batch of {b.size} ({b.spliced} spliced): {b.wall_s:.2f} s wall "
                     f"({'met' if wall_ok else 'NOT met'}, goal <= {GOAL_WALL_S} s), stop {b.stall_s * 1000:.1f} ms "
                     f"({'met' if stop_ok else 'NOT met'}, goal <= {GOAL_STOP_S * 1000:.0f} ms; the stop that "
                     f"checks and writes the points), staging stop before it {b.stage_stall_s * 1000:.1f} ms "
                     f"(patch areas, dispatch buckets, slot records: nothing a branch leads to yet), prep stop "
                     f"{b.prep_stall_s * 1000:.1f} ms.")
    if not big:
        notes.append("No batch of 1000 points measured: the stop-time goal was not judged.")
    return notes


# ---- the part ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ScalePart(GuestPart[ClockScale]):
    key: ClassVar[str] = "scale"
    title: ClassVar[str] = "splices at scale"
    switch: ClassVar[str] = "scale"
    opt_in: ClassVar[bool] = True     # minutes, not seconds: only with --scale

    live: tuple[int, ...] = DEFAULT_LIVE        # live splices (fillers + the measured one)
    batches: tuple[int, ...] = DEFAULT_BATCHES  # points per splice_many
    n: int = DEFAULT_N                           # getpid calls per run
    runs: int = DEFAULT_RUNS

    def check(self) -> None:
        if not self.live or not all(1 <= v <= DEFAULT_SLOTS for v in self.live):
            raise RigError(f"live counts {self.live} must lie in 1..{DEFAULT_SLOTS}")
        if not all(b >= 1 for b in self.batches):
            raise RigError("batch sizes must be at least 1")
        if not 1 <= self.n <= MAX_N or self.runs < 1:
            raise RigError(f"n must lie in 1..{MAX_N} and runs be at least 1")

    def steps(self) -> int:
        return len(self.live) * (2 + self.runs * (1 + len(MODES))) + len(self.batches)

    def measure(self, guest: Guest) -> ClockScale:
        return ClockScale(guest.clock, measure(guest.machine, guest.instr, self.live, self.batches, self.n, self.runs,
                                               progress=guest.note))

    def to_json(self, result: list[ClockScale]) -> Any:
        return [clock.to_json() for clock in result]

    def sections(self, result: list[ClockScale], report: ReportContext) -> list[Section]:
        sections = []
        for measured in result:
            clock = measured.clock
            prov = report.clock_provenance(clock, self.n)
            sections.append(Section(f"Splices at scale — {clock.name}", prov,
                                    [live_table(measured), batch_table(measured)],
                                    notes=scale_notes(measured, self.live)))
        return sections
