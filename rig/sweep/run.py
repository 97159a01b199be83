"""``invoke sweep``: choose points, plan them statically, check the plannable ones live in batches
on one or many guests, and keep one record per point in ``reports/<run-id>/sweep.json``.

Batches are packed so that no two splices of one batch share a byte (window or springboard);
a point the live planner defers (a conflict with another splice of its batch) goes to a later
batch. A sweep is reproducible from its seed (the sample and the batches follow from it and the
kernel) and resumable from its results file.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rig import paths
from rig.bench import hops
from rig.bench.report import new_run_dir
from rig.errors import RigError
from rig.guest import lifecycle
from rig.instrument import load_image
from rig.kernel.build import KernelBuild
from rig.splicer.kinds import Policy
from rig.sweep import coverage
from rig.sweep.fanout import engine
from rig.sweep.points import FIG4_OBJECTS, Point, StaticPlanner, SweepMode, parse_policy, select_points
from rig.sweep.results import SweepResults
from rig.sweep.runner import BatchReport, SweepSettings

DEFAULT_BATCH = 250
# Vectors a guest has free for splices of their own: a batch of own-vector traps stays below it.
OWN_VECTOR_BATCH = 100
RESULTS_NAME = "sweep.json"


@dataclass(frozen=True)
class SweepOptions:
    objects: tuple[str, ...] = ()
    functions: tuple[str, ...] = ()
    sample: int | None = None
    seed: int = 0
    mode: SweepMode = SweepMode.TRAP
    policy: Policy | None = Policy.SINGLE
    batch_size: int = DEFAULT_BATCH
    jobs: int = 1
    scheduler: str | None = None
    accel: str = "tcg"
    icount_shift: int | None = None
    workload_parts: tuple[str, ...] = ()
    planted_panic: int | None = None   # see SweepSettings.planted_panic

    @property
    def population(self) -> tuple[str, ...]:
        """The objects swept: the paper's four when nothing else was chosen."""
        return self.objects or (() if self.functions or self.sample else FIG4_OBJECTS)

    def settings(self) -> SweepSettings:
        return SweepSettings(self.mode, self.policy, self.accel, self.icount_shift,
                             workload_parts=self.workload_parts, planted_panic=self.planted_panic)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["mode"] = self.mode.value
        data["policy"] = self.policy.name.lower() if self.policy is not None else "auto"
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SweepOptions:
        values = dict(data)
        values["mode"] = SweepMode(values["mode"])
        values["policy"] = parse_policy(values["policy"])
        for name in ("objects", "functions", "workload_parts"):
            values[name] = tuple(values[name])
        return cls(**values)


@dataclass
class SweepProgress:
    total: int
    done: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    guests_booted: int = 0
    started: float = field(default_factory=time.monotonic)

    @property
    def elapsed_s(self) -> float:
        return time.monotonic() - self.started


@dataclass
class Sweep:
    """A sweep being run: its results file, options and the planner's verdicts."""

    run_dir: Path
    options: SweepOptions
    results: SweepResults
    kernel_build_id: str
    engine_description: str = ""
    seconds: float = 0.0
    _kernel: KernelBuild | None = None

    def kernel(self) -> KernelBuild:
        """The sweep's kernel build (this rig must have the very build the sweep began on)."""
        if self._kernel is None:
            prepared = lifecycle.prepare(accel=self.options.accel, icount_shift=self.options.icount_shift)
            if prepared.kernel.build_id != self.kernel_build_id:
                raise RigError(f"the sweep was made on kernel build {self.kernel_build_id}, this rig has "
                               f"{prepared.kernel.build_id}",
                               "start a new sweep (its points and verdicts depend on the kernel)")
            self._kernel = prepared.kernel
        return self._kernel


def start(options: SweepOptions, reports_root: Path | None = None,
          prepared: lifecycle.PreparedGuest | None = None) -> Sweep:
    """A new sweep: points chosen, statically refused ones recorded, the results file written."""
    if options.batch_size < 1:
        raise RigError(f"--batch {options.batch_size} is not a batch size", "give 1 or more")
    prepared = prepared or lifecycle.prepare(accel=options.accel, icount_shift=options.icount_shift)
    image = load_image(prepared.kernel.vmlinux)
    points = select_points(image, prepared.kernel, options.population, options.functions, options.sample,
                           options.seed)
    if not points:
        raise RigError("no points were chosen", "name objects, functions or a sample size")
    run_dir = new_run_dir(reports_root or paths.reports_dir())
    header = {"options": options.to_dict(), "kernel_build_id": prepared.kernel.build_id,
              "clock": prepared.clock.name, "accel_reason": prepared.accel_reason}
    results = SweepResults.create(run_dir / RESULTS_NAME, header, points)
    planner = StaticPlanner(image, options.mode, options.policy)
    for point in points:
        verdict = planner.verdict(point)
        if verdict.refusal is not None:
            results.record(point, {"status": "refused", "reason": verdict.refusal.reason,
                                   "detail": verdict.refusal.message, "stage": "static"})
        else:  # what its splice occupies: batches are packed from it, here and on resuming
            results.record(point, {"plannable": True,
                                   "occupied": [[r.start, r.end] for r in verdict.occupied]})
    results.save()
    return Sweep(run_dir, options, results, prepared.kernel.build_id, _kernel=prepared.kernel)


def resume(run_dir: Path) -> Sweep:
    results = SweepResults.load(Path(run_dir) / RESULTS_NAME)
    options = SweepOptions.from_dict(results.header["options"])
    return Sweep(Path(run_dir), options, results, results.header["kernel_build_id"])


def pack_batches(verdict_ranges: Sequence[tuple[Point, Sequence[tuple[int, int]]]], size: int) -> list[list[Point]]:
    """Points into batches of at most ``size`` in which no two occupy a common byte ((start, end)
    ranges); each point goes to the first batch it fits."""
    batches: list[list[Point]] = []
    taken: list[set[int]] = []
    for point, ranges in verdict_ranges:
        occupied = {address for start, end in ranges for address in range(start, end)}
        for batch, used in zip(batches, taken):
            if len(batch) < size and not occupied & used:
                batch.append(point)
                used |= occupied
                break
        else:
            batches.append([point])
            taken.append(set(occupied))
    return batches


def _batches(sweep: Sweep, points: Sequence[Point]) -> list[list[Point]]:
    """The points packed by what the static planner said their splices occupy (kept per point)."""
    ranges = [(point, [(start, end) for start, end in sweep.results.points[point.key].get("occupied", [])])
              for point in points]
    size = min(sweep.options.batch_size, OWN_VECTOR_BATCH) if sweep.options.mode.own_vector else sweep.options.batch_size
    return pack_batches(ranges, size)


def run(sweep: Sweep, on_progress: Callable[[SweepProgress], None] | None = None) -> Sweep:
    """Check every point without a status; the results file is saved after every batch, and the
    coverage report written at the end."""
    started = time.monotonic()
    results = sweep.results
    pending = results.pending()
    progress = SweepProgress(total=len(results.points), done=len(results.points) - len(pending))
    progress.counts = {k: v for k, v in results.summary().items() if isinstance(v, int)}
    if on_progress is not None:
        on_progress(progress)
    settings = sweep.options.settings()
    with engine(sweep.options.jobs, sweep.options.scheduler) as chosen:
        sweep.engine_description = chosen.description
        while pending:
            deferred: list[Point] = []
            for report in chosen.run(settings, _batches(sweep, pending)):
                deferred += _record(results, report)
                results.save()
                progress.done = len(results.points) - len(results.pending())
                progress.guests_booted += report.guests_booted
                progress.counts = {k: v for k, v in results.summary().items() if isinstance(v, int)}
                if on_progress is not None:
                    on_progress(progress)
            if len(deferred) == len(pending):  # nothing moved: never loop forever
                for point in deferred:
                    results.record(point, {"status": "refused", "reason": "no-batch",
                                           "detail": "deferred by every batch it was put in", "stage": "live"})
                break
            pending = deferred
    sweep.seconds = time.monotonic() - started
    results.header.setdefault("runs", []).append({"seconds": round(sweep.seconds, 1), "engine": sweep.engine_description,
                                                  "workers": sweep.options.jobs})
    results.save()
    census = {c.name: c for c in hops.census_cached(sweep.kernel()).objects}
    coverage.write(sweep.run_dir, results, census)
    return sweep


def _record(results: SweepResults, report: BatchReport) -> list[Point]:
    deferred = []
    for outcome in report.outcomes:
        if outcome.deferred:
            deferred.append(outcome.point)
            continue
        results.record(outcome.point, {**outcome.to_dict(), "stage": "live"})
    results.batches.append({"points": len(report.outcomes), "tries": report.tries,
                            "guests_booted": report.guests_booted, "seconds": round(report.seconds, 2),
                            "notes": report.failures})
    return deferred
