"""Splice latency: how long the guest is held stopped to splice or unsplice (host-timed).

Under TCG the guest's TSC stands still while gdb holds the VM, so the stall is timed on the host
(stop -> continue of the stop that checks and writes the point; the two stops before it, the prep
stop that reads the repository and the task list and the staging stop that writes what no branch
leads to yet, are reported beside it). Measured in the first clock's guest only, after Table 1,
and reported in that guest's section.
"""
from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

from rig.bench.part import ClockRun, Guest, GuestPart, Progress, ReportContext
from rig.bench.sections import Section, Table
from rig.errors import RigError
from rig.instrument import Instrumenter
from rig.splicer.kinds import Mode, PatchKind, Policy

FUNCTION = "sys_getpid"
DEFAULT_CYCLES = 20
MODES = (Mode.JMP, Mode.TRAP)


@dataclass(frozen=True)
class StallSummary:
    n: int
    median_ms: float
    max_ms: float
    min_ms: float
    mean_ms: float

    @classmethod
    def of(cls, seconds: list[float]) -> StallSummary:
        ms = [v * 1000 for v in seconds]
        return cls(len(ms), statistics.median(ms), max(ms), min(ms), statistics.fmean(ms))


@dataclass
class ModeLatency:
    splice: StallSummary          # the stop that checks and writes the point
    stage: StallSummary           # the staging stop before it (patch, slot record, bucket)
    prep: StallSummary            # the first stop (repository and task list read)
    unsplice: StallSummary
    busy_retries: int
    splice_stall_s: list[float]
    stage_stall_s: list[float]
    unsplice_stall_s: list[float]


@dataclass
class LatencyResult:
    function: str
    cycles: int
    modes: dict[str, ModeLatency]   # by mode name: jmp, trap

    def to_json(self) -> dict[str, Any]:
        return {"function": self.function, "cycles": self.cycles,
                "modes": {mode: asdict(latency) for mode, latency in self.modes.items()}}


@dataclass
class ClockLatency:
    clock: ClockRun
    latency: LatencyResult

    def to_json(self) -> dict[str, Any]:
        return {"clock": self.clock.name, **self.latency.to_json()}


def measure(instr: Instrumenter, cycles: int, progress: Progress | None = None) -> LatencyResult:
    """``cycles`` splice/unsplice pairs per mode at the entry of sys_getpid (counting probe)."""
    note = progress or (lambda _: None)
    result = LatencyResult(FUNCTION, cycles, {})
    for mode in MODES:
        splice_s: list[float] = []
        stage_s: list[float] = []
        prep_s: list[float] = []
        unsplice_s: list[float] = []
        retries = 0
        for index in range(cycles):
            note(f"{mode.name.lower()} splice/unsplice {index + 1}/{cycles}")
            done = instr.splice(FUNCTION, mode=mode, policy=Policy.SINGLE, patch_kind=PatchKind.COUNTER)
            prep_s.append(done.prep_stall_s)
            stage_s.append(done.stage_stall_s)
            splice_s.append(done.stall_s)
            retries += done.busy_retries
            unsplice_s.append(instr.unsplice(done.plan.slot).stall_s)
        result.modes[mode.name.lower()] = ModeLatency(StallSummary.of(splice_s), StallSummary.of(stage_s),
                                                      StallSummary.of(prep_s), StallSummary.of(unsplice_s), retries,
                                                      splice_s, stage_s, unsplice_s)
    return result


def latency_table(result: LatencyResult) -> Table:
    header = ["mode", "splice stall median ms", "splice stall max ms", "staging stop median ms", "prep stop median ms",
              "unsplice median ms", "unsplice max ms", "busy retries"]
    rows = [[mode, m.splice.median_ms, m.splice.max_ms, m.stage.median_ms, m.prep.median_ms,
             m.unsplice.median_ms, m.unsplice.max_ms, m.busy_retries] for mode, m in result.modes.items()]
    return Table(f"Splice latency: guest held stopped (host-timed), {result.cycles} splice/unsplice "
                 f"cycles per mode at {result.function}+0; splice stall = the stop that checks and writes the "
                 "point, after a staging stop (patch, slot record, bucket: nothing a branch leads to yet) and a "
                 "prep stop (repository and task list)", header, rows)


@dataclass(frozen=True)
class LatencyPart(GuestPart[ClockLatency]):
    key: ClassVar[str] = "latency"
    title: ClassVar[str] = "splice latency"
    switch: ClassVar[str] = "table1"
    every_clock: ClassVar[bool] = False  # host-timed: one clock says it all

    cycles: int = DEFAULT_CYCLES  # splice/unsplice pairs per mode

    def check(self) -> None:
        if self.cycles < 1:
            raise RigError("the splice latency needs at least 1 splice/unsplice cycle per mode")

    def steps(self) -> int:
        return len(MODES) * self.cycles

    def measure(self, guest: Guest) -> ClockLatency:
        return ClockLatency(guest.clock, measure(guest.instr, self.cycles, progress=guest.note))

    def to_json(self, result: list[ClockLatency]) -> Any:
        return [clock.to_json() for clock in result]

    def sections(self, result: list[ClockLatency], report: ReportContext) -> list[Section]:
        sections = []
        for measured in result:
            clock = measured.clock
            prov = report.clock_provenance(clock, self.cycles)
            sections.append(Section(f"Splice latency — {clock.name}", prov, [latency_table(measured.latency)],
                                    slot=clock.section_slot))
        return sections
