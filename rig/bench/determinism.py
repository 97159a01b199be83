"""Are exact counts repeatable (issue 10)? Every instruction of ``tcp_sendmsg`` traced while the
guest workload runs, twice on one guest and twice on a fresh one, the per-run counts compared.

Each of two guests is booted fresh under the clock measured (the bench's own guest of that clock
is held stopped meanwhile, so that it takes no host CPU), and in one batch gets a counting splice
at every instruction of the function (trap where 2 bytes or more, int3 where 1:
:func:`rig.instrument.trace.every_instruction`) and at the entries of the :data:`WITNESSES`
(timer ticks, context switches, socket backlogs, the delayed-ACK timer). Then each workload (the
workload's ``tcp`` part, then the whole workload) runs ``runs`` times; after each run the counters
are read live and the run's counts are the differences. Compared:

* on the same guest, run 2 against run 1 (the same commands, but the guest's state moved on:
  sockets in TIME_WAIT, ports, the page cache; and the host's timing),
* on the fresh guest, each run against the same run on the first guest (the same history; only
  the host's timing differs).

Last, ``unsplice_all`` and the audit: the kernel text equals vmlinux again.

Under ``-icount`` the guest's instructions and its virtual clock are deterministic, but its
inputs are not: a command reaches the serial console at a host-timed moment, and an idle guest
under ``sleep=off`` runs through timer ticks as fast as the host emulates them (some 20000 per
host second), so the number of ticks before a command arrives, where in a tick it lands and where
the kernel's periodic timers stand then are the host's. So each run starts aligned (the
workload's ``align=``, :func:`align_for`): on the tick whose jiffies is a multiple of four minutes,
woken from idle, kupdated's period restarted there. A fresh guest *replays* the first guest's
history when its runs start on the same aligned ticks counted from its first run; a host too slow
to send a command before its tick makes that run start a period later, another history (a longer
idle gap, in which timers and caches moved on), and such runs are reported apart.

What it found (issue 10, 2 cores, TCG -icount shift 3): the entry always counts the tcp part's 175
sends. Unaligned, a fresh guest counted every instruction alike in 15 of 16 tcp-part and 4 of 6
whole-workload comparisons (the misses came with other counts of socket backlog runs: the tick
phase at which the run started moved where sender and receiver interleave). Aligned, every fresh
run that replayed the first guest's history counted every one of the 746 instructions alike: 20 of
20 comparisons in five benches (align 24000), and in probes with align 6000 and 1; the only misses
seen (align 12000, 2 of 6 whole-workload runs) were runs that started a period late. Run 2 on a
guest still differs from run 1 (359 instructions for the tcp part, 389 for the whole workload),
the same way on every guest: the state run 1 leaves behind. Under plain TCG every comparison
differs, with other counts of backlog runs and delayed ACKs.

Opt-in (``invoke bench --determinism``): two fresh guests per clock, about 20 s each.
"""
from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

from rig.bench import guests
from rig.bench.part import ClockRun, Guest, GuestPart, Progress, ReportContext
from rig.bench.sections import Section, Table
from rig.errors import RigError
from rig.guest import lifecycle
from rig.guest.machine import QemuMachine
from rig.guest.workload import ALIGN_PERIODIC_TIMERS, PARTS, WorkloadResult, check_parts, run_workload
from rig.instrument import Instrumenter, trace
from rig.instrument.manager import PointRequest
from rig.splicer.analysis import FunctionCode
from rig.splicer.kinds import Mode

FUNCTION = "tcp_sendmsg"
# Entry counters beside the trace: timer ticks and context switches (both also count while the guest
# idles between runs), a socket's backlog run on release (segments came in while their socket's
# owner held it: how the sender and the receiver interleaved), the delayed-ACK timer.
WITNESSES = ("do_timer", "schedule", "__release_sock", "tcp_delack_timer")
IDLE_WITNESSES = ("do_timer", "schedule")   # they count the host-paced idle around a run too
DEFAULT_WORKLOADS: tuple[tuple[str, ...], ...] = (("tcp",), ())   # (): the whole workload
DEFAULT_RUNS = 2
GUESTS = 2                                # the first guest and a fresh one
WORKLOAD_TIMEOUT_S = 300.0                # the whole workload with every trap live, on a busy host
SHOWN_DIFFERENCES = 8                     # differing instructions kept per comparison (bench.json)
SHOWN_IN_TABLE = 3                        # ... and shown in the report's table


def align_for(deterministic_clock: bool) -> int:
    """Runs start on a tick whose jiffies is a multiple of this (the workload's ``align=``): under
    -icount four minutes of ticks (they idle by in about a host second), which stands every
    periodic kernel timer where it stood in the other runs; under host time those minutes would be
    real ones, and a tick is all that is worth aligning to where ticks follow the host."""
    return ALIGN_PERIODIC_TIMERS if deterministic_clock else 1


def workload_name(parts: Sequence[str]) -> str:
    return "+".join(parts) if parts else "all"


@dataclass(frozen=True)
class Counters:
    """The live counters at one moment: the traced instructions (in address order), the witnesses,
    and the kernel's jiffies."""

    hits: tuple[int, ...]
    witnesses: dict[str, int]
    jiffies: int

    def minus(self, earlier: Counters) -> Counters:
        return Counters(tuple(a - b for a, b in zip(self.hits, earlier.hits)),
                        {name: count - earlier.witnesses[name] for name, count in self.witnesses.items()},
                        (self.jiffies - earlier.jiffies) & 0xFFFFFFFF)


@dataclass(frozen=True)
class RunCounts:
    """One run of one workload on one guest: what its counters gained."""

    guest: int                 # 0: the first guest, 1: the fresh one
    workload: str              # "tcp", or "all" for the whole workload
    run: int                   # 1, 2, ...
    digest: str
    failures: dict[str, str]
    counts: Counters
    jiffies_at_start: int      # the guest's jiffies when the command was sent (read by the host)
    start_jiffies: int | None  # where the parts started, on the aligned tick (None: not aligned)
    guest_seconds: float       # the guest's own wall time of the workload (its virtual clock under -icount)
    host_seconds: float
    schedule: tuple[int, ...] = ()  # aligned: the starts of this guest's runs so far, from its first run's


    @property
    def entry(self) -> int:
        return self.counts.hits[0] if self.counts.hits else 0


@dataclass(frozen=True)
class Comparison:
    label: str
    workload: str
    first: tuple[int, int]     # (guest, run) of each side
    second: tuple[int, int]
    instructions: int          # traced instructions compared
    differing: int             # of them, with another count
    total_delta: int           # sum of |difference|
    max_delta: int
    examples: tuple[tuple[int, int, int], ...]  # (offset in the function, first count, second count)
    entries: tuple[int, int]
    witnesses: dict[str, tuple[int, int]]
    jiffies: tuple[int, int]
    digests_equal: bool
    same_schedule: bool        # both runs started as long after their guest's first run (aligned runs)

    @property
    def identical(self) -> bool:
        return self.differing == 0


@dataclass(frozen=True)
class GuestEnd:
    """What one guest looked like after ``unsplice_all``."""

    undone: int
    audit: tuple[str, ...]     # problems found; () when the text equals vmlinux and the records agree
    function_text_equal: bool  # the traced function's bytes equal vmlinux's, read back


@dataclass
class DeterminismResult:
    function: str
    clock_name: str
    deterministic_clock: bool
    align_ticks: int | None    # each run started on a tick whose jiffies is a multiple of this
    offsets: list[int]         # traced instructions, as offsets in the function
    modes: dict[str, int]      # traced points by mode
    refused: int
    runs: list[RunCounts]
    comparisons: list[Comparison]
    ends: list[GuestEnd]
    seconds: float

    @property
    def identical_fresh(self) -> bool:
        """Every run on the fresh guest counted exactly what the same run on the first guest did."""
        return all(c.identical for c in self.comparisons if c.first[0] != c.second[0])

    @property
    def replayed(self) -> list[Comparison]:
        """The fresh guest's runs that replayed the first guest's history exactly: the same runs,
        started on the same aligned ticks counted from the first run (a host too slow to send a
        command before its tick makes the guest wait for the next one: a longer idle gap)."""
        return [c for c in self.comparisons if c.first[0] != c.second[0] and c.same_schedule]

    @property
    def identical_replayed(self) -> bool:
        return bool(self.replayed) and all(c.identical for c in self.replayed)

    def to_json(self) -> dict[str, Any]:
        return {"function": self.function, "align_ticks": self.align_ticks, "offsets": self.offsets,
                "modes": self.modes, "refused": self.refused,
                "runs": [{**asdict(r), "entry": r.entry} for r in self.runs],
                "comparisons": [{**asdict(c), "identical": c.identical} for c in self.comparisons],
                "ends": [asdict(e) for e in self.ends], "identical_fresh": self.identical_fresh,
                "identical_replayed": self.identical_replayed,
                "seconds": self.seconds}


@dataclass
class ClockDeterminism:
    clock: ClockRun
    result: DeterminismResult

    def to_json(self) -> dict[str, Any]:
        return {**self.clock.to_json(), **self.result.to_json()}


# ---- measurement ---------------------------------------------------------------------------------
@dataclass
class TracedGuest:
    """A guest with every instruction of the function and the witnesses spliced."""

    machine: QemuMachine
    instr: Instrumenter
    code: FunctionCode
    points: list[int]                         # traced instruction addresses, in order
    witness_slots: dict[str, int] = field(default_factory=dict)
    first_start: int | None = None            # jiffies at the first aligned run's start
    schedule: list[int] = field(default_factory=list)  # each aligned run's start, from the first's

    def counters(self) -> Counters:
        hits = self.instr.hits_in(self.code.start, self.code.end)
        jiffies_at = self.instr.image.symbol("jiffies").address
        regions = [(self.instr.layout.counter(slot), 4) for slot in self.witness_slots.values()] + [(jiffies_at, 4)]
        with self.instr.gdb.stopped():
            *counts, jiffies = (int.from_bytes(raw, "little") for raw in self.instr.gdb.read_many(regions))
        return Counters(tuple(hits[point][0] for point in self.points), dict(zip(self.witness_slots, counts)), jiffies)


def trace_function(machine: QemuMachine, instr: Instrumenter, function: str = FUNCTION
                   ) -> tuple[TracedGuest, dict[str, int], int]:
    """Splice every instruction of ``function`` and the witnesses' entries in one batch:
    (the traced guest, points by mode, refused points)."""
    code, _ = instr.resolve_point(function)
    requests = trace.every_instruction(code) + [PointRequest(name, Mode.TRAP) for name in WITNESSES]
    done = instr.splice_many(requests, strict=False)
    witnesses = {plan.function: plan.slot for plan in done.plans if plan.function in WITNESSES}
    missing = [name for name in WITNESSES if name not in witnesses]
    if missing:
        raise RigError(f"the witness splice(s) at {', '.join(missing)} were refused",
                       hint="; ".join(f"{r.function}: {e.message}" for r, e in done.refused if r.function in missing))
    points = sorted(plan.point for plan in done.plans if plan.function == code.name)
    modes: dict[str, int] = {}
    for plan in done.plans:
        if plan.function == code.name:
            modes[plan.mode.name.lower()] = modes.get(plan.mode.name.lower(), 0) + 1
    return TracedGuest(machine, instr, code, points, witnesses), modes, len(done.refused)


def run_counted(traced: TracedGuest, guest_index: int, parts: Sequence[str], runs: int,
                note: Progress, align_ticks: int | None = None) -> list[RunCounts]:
    """``runs`` runs of the workload ``parts``, each with what its counters gained."""
    done: list[RunCounts] = []
    name = workload_name(parts)
    before = traced.counters()
    for run in range(1, runs + 1):
        note(f"guest {guest_index + 1}: workload {name}, run {run}/{runs}")
        result: WorkloadResult = run_workload(traced.machine.console, parts, timeout=WORKLOAD_TIMEOUT_S,
                                              align_ticks=align_ticks)
        after = traced.counters()
        if result.start_jiffies is not None:
            if traced.first_start is None:
                traced.first_start = result.start_jiffies
            traced.schedule.append((result.start_jiffies - traced.first_start) & 0xFFFFFFFF)
        done.append(RunCounts(guest_index, name, run, result.digest, dict(result.failures), after.minus(before),
                              before.jiffies, result.start_jiffies, result.seconds, round(result.host_seconds, 3),
                              tuple(traced.schedule)))
        before = after
    return done


def untrace(traced: TracedGuest) -> GuestEnd:
    """Every splice undone; what the audit and a read-back of the function say."""
    undone = traced.instr.unsplice_all()
    problems = traced.instr.audit()
    code = traced.code
    with traced.instr.gdb.stopped():
        now = traced.instr.gdb.read_memory(code.start, code.end - code.start)
    return GuestEnd(len(undone), tuple(problems), now == traced.instr.image.text_bytes(code.start, code.end - code.start))


def compare(label: str, first: RunCounts, second: RunCounts, points: Sequence[int], start: int) -> Comparison:
    pairs = list(zip(first.counts.hits, second.counts.hits))
    differing = [(points[i] - start, a, b) for i, (a, b) in enumerate(pairs) if a != b]
    return Comparison(label, first.workload, (first.guest, first.run), (second.guest, second.run), len(pairs),
                      len(differing), sum(abs(a - b) for _, a, b in differing),
                      max((abs(a - b) for _, a, b in differing), default=0), tuple(differing[:SHOWN_DIFFERENCES]),
                      (first.entry, second.entry),
                      {name: (first.counts.witnesses[name], second.counts.witnesses[name])
                       for name in first.counts.witnesses},
                      (first.counts.jiffies, second.counts.jiffies), first.digest == second.digest,
                      first.start_jiffies is not None and first.schedule == second.schedule)


def comparisons(runs: Sequence[RunCounts], points: Sequence[int], start: int) -> list[Comparison]:
    """Each later run against run 1 on the same guest; each run on the fresh guest against the
    same run on the first guest."""
    by_key = {(r.guest, r.workload, r.run): r for r in runs}
    found: list[Comparison] = []
    for workload in dict.fromkeys(r.workload for r in runs):
        for (guest, name, run), counted in by_key.items():
            if name == workload and run > 1:
                found.append(compare(f"guest {guest + 1}: run {run} vs run 1", by_key[(guest, name, 1)], counted,
                                     points, start))
        for (guest, name, run), counted in by_key.items():
            if name == workload and guest > 0:
                found.append(compare(f"fresh guest {guest + 1} vs guest 1: run {run}", by_key[(0, name, run)],
                                     counted, points, start))
    return found


def measure(prepared: lifecycle.PreparedGuest, workloads: Sequence[Sequence[str]], runs: int,
            note: Progress, function: str = FUNCTION, guest_count: int = GUESTS,
            align_ticks: int | None = None) -> DeterminismResult:
    started = time.monotonic()
    counted: list[RunCounts] = []
    ends: list[GuestEnd] = []
    offsets: list[int] = []
    modes: dict[str, int] = {}
    refused = 0
    start = 0
    for index in range(guest_count):
        with guests.booted(prepared, lambda _phase, detail: note(detail)) as guest:
            note(f"guest {index + 1}: tracing every instruction of {function}")
            traced, modes, refused = trace_function(guest.machine, guest.instr, function)
            start = traced.code.start
            if index == 0:
                offsets = [point - start for point in traced.points]
            elif [point - start for point in traced.points] != offsets:
                raise RigError("the fresh guest traced other points than the first", hint="a bug in the bench")
            try:
                for parts in workloads:
                    counted += run_counted(traced, index, parts, runs, note, align_ticks)
            finally:
                note(f"guest {index + 1}: unsplice all")
                ends.append(untrace(traced))
    points = [start + offset for offset in offsets]
    return DeterminismResult(function, prepared.clock.name, prepared.clock.deterministic, align_ticks, offsets,
                             modes, refused,
                             counted, comparisons(counted, points, start), ends,
                             round(time.monotonic() - started, 3))


# ---- report --------------------------------------------------------------------------------------
def runs_table(result: DeterminismResult) -> Table:
    header = ["guest", "workload", "run", "entry hits", "all hits", *(f"{w} hits" for w in WITNESSES), "jiffies",
              "sent at jiffies", "started at", "guest s", "digest"]
    rows = [[r.guest + 1, r.workload, r.run, r.entry, sum(r.counts.hits), *(r.counts.witnesses[w] for w in WITNESSES),
             r.counts.jiffies, r.jiffies_at_start, "-" if r.start_jiffies is None else r.start_jiffies,
             r.guest_seconds, r.digest + (" FAILED " + str(r.failures) if r.failures else "")]
            for r in result.runs]
    return Table(f"Counts per run ({result.clock_name}): {len(result.offsets)} instructions of {result.function} "
                 f"traced ({', '.join(f'{m} {n}' for m, n in sorted(result.modes.items()))}; {result.refused} "
                 f"refused), what each run added; witnesses: entry counters", header, rows)


def comparison_table(result: DeterminismResult) -> Table:
    header = ["workload", "compared", "instructions differing", "sum |diff|", "max |diff|", "entry hits",
              *(f"{w} hits" for w in WITNESSES), "jiffies", "schedule", "digests",
              "first differences (+offset: a/b)"]
    rows = []
    for c in result.comparisons:
        rows.append([c.workload, c.label, f"{c.differing} of {c.instructions}", c.total_delta, c.max_delta,
                     _pair(c.entries), *(_pair(c.witnesses[w]) for w in WITNESSES), _pair(c.jiffies),
                     "same" if c.same_schedule else "other", "equal" if c.digests_equal else "differ",
                     ", ".join(f"+{offset:#x}: {a}/{b}" for offset, a, b in c.examples[:SHOWN_IN_TABLE]) or "-"])
    return Table(f"Per-instruction counts compared ({result.clock_name})", header, rows)


def _pair(values: tuple[int, int]) -> str:
    a, b = values
    return str(a) if a == b else f"{a} / {b}"


def notes(result: DeterminismResult) -> list[str]:
    out = []
    fresh = [c for c in result.comparisons if c.first[0] != c.second[0]]
    same = [c for c in result.comparisons if c.first[0] == c.second[0]]
    for label, chosen in (("on a fresh guest", fresh), ("on the same guest", same)):
        if not chosen:
            continue
        differ = [c for c in chosen if not c.identical]
        if not differ:
            out.append(f"Identical {label}: every traced instruction counted the same in "
                       f"{len(chosen)} comparison(s).")
        else:
            out.append(f"NOT identical {label}: " + "; ".join(
                f"{c.workload} {c.label}: {c.differing} of {c.instructions} instructions differ "
                f"(sum {c.total_delta}, max {c.max_delta}; witnesses that differ: "
                + (", ".join(f"{w} {_pair(pair)}" for w, pair in c.witnesses.items() if pair[0] != pair[1]) or "none")
                + ")" for c in differ) + ".")
    for workload in dict.fromkeys(c.workload for c in same):
        runs = [c for c in same if c.workload == workload]
        shapes = {(c.differing, c.total_delta, c.max_delta, c.examples) for c in runs}
        if len(runs) > 1 and len(shapes) == 1 and runs[0].differing:
            out.append(f"{workload}: a later run differs from run 1 the same way on every guest "
                       f"({runs[0].differing} instructions, sum {runs[0].total_delta}): the state a run leaves "
                       "behind, not the host's timing, changes the paths the next run takes.")
    tracking = [w for w in WITNESSES if w not in IDLE_WITNESSES and any(not c.identical for c in fresh)
                and all((c.witnesses[w][0] != c.witnesses[w][1]) == (not c.identical) for c in fresh)]
    if tracking:
        out.append(f"On the fresh guest, the counts differ exactly where {', '.join(tracking)} counted otherwise: "
                   "the run's segments met their sockets held at other moments, so the sender and the receiver "
                   "interleaved otherwise.")
    idle = [c for c in result.comparisons if c.jiffies[0] != c.jiffies[1]]
    if idle:
        out.append(f"jiffies and the witnesses are read around each run, so they include the idle time while the "
                   f"host sends the command and reads the reply: the guest idles through timer ticks at the host's "
                   f"pace, and they differed in {len(idle)} of {len(result.comparisons)} comparisons (e.g. "
                   f"{idle[0].workload} {idle[0].label}: {_pair(idle[0].jiffies)} ticks). Where the same history is "
                   "replayed, a count can differ only through such host-timed inputs: the tick phase at which a run "
                   "starts, where the kernel's periodic timers stand then, frames through QEMU's hub.")
    if result.align_ticks is not None and not result.deterministic_clock:
        out.append(f"Each run started on a tick (workload align={result.align_ticks}); under host time the ticks "
                   "themselves follow the host, so that fixes where in a tick a run starts and no more.")
    elif result.align_ticks is not None:
        out.append(f"Each run started aligned (workload align={result.align_ticks}): woken from idle by the tick whose "
                   f"jiffies is a multiple of {result.align_ticks}, kupdated's period restarted on it, so neither the "
                   "tick phase nor a periodic timer depends on when the command arrived.")
        replayed, other = result.replayed, [c for c in fresh if not c.same_schedule]
        if replayed:
            verdict = "identical" if result.identical_replayed else "NOT identical"
            out.append(f"Replayed history: {len(replayed)} of {len(fresh)} fresh-guest run(s) started on the same "
                       f"aligned ticks, counted from the guest's first run, as the first guest's; their counts are "
                       f"{verdict}.")
        if other:
            out.append(f"{len(other)} fresh-guest run(s) started on other aligned ticks than the first guest's (the "
                       "host sent a command after its tick, so the guest idled to the next one): another history, "
                       "the idle gaps between runs differ, and counts may differ with it.")
    if not result.deterministic_clock:
        out.append("This clock is host time (no -icount): timer interrupts land where the host's speed puts "
                   "them, so differing counts are expected here; repeatability is judged under -icount.")
    for index, end in enumerate(result.ends, start=1):
        state = ("the kernel text equals vmlinux and the audit is clean" if not end.audit and end.function_text_equal
                 else f"audit: {'; '.join(end.audit) or 'clean'}, {result.function} "
                      f"{'equals' if end.function_text_equal else 'DIFFERS from'} vmlinux")
        out.append(f"Guest {index}: unsplice all undid {end.undone} splices; {state}.")
    return out


# ---- the part ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DeterminismPart(GuestPart[ClockDeterminism]):
    key: ClassVar[str] = "determinism"
    title: ClassVar[str] = "repeatable exact counts"
    switch: ClassVar[str] = "determinism"
    opt_in: ClassVar[bool] = True     # two guests booted per clock, a minute or more

    function: str = FUNCTION
    workloads: tuple[tuple[str, ...], ...] = DEFAULT_WORKLOADS   # () is the whole workload
    runs: int = DEFAULT_RUNS

    def check(self) -> None:
        if self.runs < 2:
            raise RigError("repeatability needs at least 2 runs of each workload")
        if not self.workloads:
            raise RigError("name at least one workload", hint=f"parts: {', '.join(PARTS)}; () for all of them")
        for parts in self.workloads:
            check_parts(parts)

    def steps(self) -> int:
        per_guest = 1 + 1 + len(self.workloads) * self.runs + 1   # boot, trace, runs, unsplice
        return GUESTS * per_guest

    def measure(self, guest: Guest) -> ClockDeterminism:
        clock = guest.clock.clock
        prepared = lifecycle.prepare(accel=clock.accel, icount_shift=clock.icount_shift)
        # Guests of its own, booted alike; the bench's guest of this clock waits, stopped, taking no CPU.
        with guest.instr.gdb.stopped():
            result = measure(prepared, self.workloads, self.runs, guest.note, self.function,
                             align_ticks=align_for(clock.deterministic))
        return ClockDeterminism(guest.clock, result)

    def to_json(self, result: list[ClockDeterminism]) -> Any:
        return [clock.to_json() for clock in result]

    def sections(self, result: list[ClockDeterminism], report: ReportContext) -> list[Section]:
        sections = []
        for measured in result:
            clock = measured.clock
            prov = report.clock_provenance(clock, self.runs)
            sections.append(Section(f"Repeatable exact counts — {clock.name}", prov,
                                    [runs_table(measured.result), comparison_table(measured.result)],
                                    notes=notes(measured.result)))
        return sections
