"""One sweep worker: a private guest, and the check of a batch of points on it.

A batch is spliced in one stop (``splice_many``, refused points listed), the guest workload runs
once, and then the batch is judged: the guest must have printed no oops/BUG/panic, answered, and
given the workload digest of an unspliced guest; every splice is undone and the whole kernel text
audited against vmlinux. A point whose counter moved is *validated*, one whose counter stayed 0
*unreached*. A batch that fails is bisected on fresh guests down to the points that fail alone.

A worker owns its guest the way the rig owns any QEMU: a context manager that never leaks it, and
a replacement guest whenever a check leaves the old one in doubt.
"""
from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from rig.errors import RigError
from rig.guest import crash, lifecycle
from rig.guest.machine import QemuMachine
from rig.guest.workload import WorkloadResult, run_workload
from rig.instrument import Instrumenter, connect, load_image
from rig.instrument.manager import BatchResult, PointRequest
from rig.splicer.image import KernelImage
from rig.splicer.kinds import PatchKind, Policy, SpliceRefused
from rig.sweep.points import Point, SweepMode

log = logging.getLogger(__name__)

# Live refusals that say "not in this batch" rather than "never": the point goes to a later batch.
DEFERRED_REASONS = frozenset({"already-spliced", "overlaps-splice", "slot-in-use", "no-free-vector"})


@dataclass(frozen=True)
class SweepSettings:
    """What every worker needs to know (sent to Dask workers: plain data only)."""

    mode: SweepMode
    policy: Policy | None
    accel: str = "tcg"
    icount_shift: int | None = None
    workload_timeout_s: float = 180.0
    workload_parts: tuple[str, ...] = ()   # () = all
    # A planted failure (``invoke sweep --plant-panic ADDR``, and the tests): the splice at this
    # address calls panic() from its patch, so the sweep's crash handling and bisection can be seen.
    planted_panic: int | None = None

    def request(self, point: Point, panic_address: int = 0) -> PointRequest:
        if point.address == self.planted_panic:
            return PointRequest(point.function, self.mode.splicer_mode(point.size), self.policy,
                                address=point.address, patch_kind=PatchKind.CALL, call_target=panic_address)
        return PointRequest(point.function, self.mode.splicer_mode(point.size), self.policy,
                            address=point.address, own_vector=self.mode.own_vector)

    def repro(self, point: Point) -> str:
        """The commands that reproduce one point's check by hand."""
        mode = self.mode.splicer_mode(point.size).name.lower()
        dispatch = " --dispatch vector" if self.mode.own_vector else ""
        policy = f" --policy {self.policy.name.lower()}" if self.policy is not None else ""
        accel = f" --accel {self.accel}" + (f" --icount {self.icount_shift}" if self.icount_shift is not None else "")
        return (f"invoke boot{accel} && invoke splice --func {point.function} --addr {point.address:#x} "
                f"--mode {mode}{dispatch}{policy} && invoke workload")


@dataclass
class PointOutcome:
    """What one check found for one point (see :mod:`rig.sweep.results` for the statuses)."""

    point: Point
    status: str
    hits: int = 0
    reason: str = ""                # refused: the splicer's reason; failed: what failed
    detail: str = ""
    oops: str = ""
    repro: str = ""
    deferred: bool = False          # not tried in this batch (a live conflict): try again later

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"status": self.status, "hits": self.hits}
        for name in ("reason", "detail", "oops", "repro"):
            if getattr(self, name):
                data[name] = getattr(self, name)
        return data


@dataclass
class BatchFailure:
    kind: str            # "oops", "digest", "hang", "splice-error", "unsplice", "audit"
    detail: str
    oops: str = ""


@dataclass
class CheckResult:
    """One try of a set of points on one guest."""

    outcomes: list[PointOutcome] = field(default_factory=list)
    failure: BatchFailure | None = None
    workload_s: float = 0.0
    splice_stop_s: float = 0.0


@dataclass
class BatchReport:
    """A batch's outcomes after bisection, and what it cost."""

    outcomes: list[PointOutcome]
    tries: int
    guests_booted: int
    seconds: float
    failures: list[str] = field(default_factory=list)   # batch-level notes (a failure that did not bisect)


class GuestWorker:
    """A private guest with gdb attached, its unspliced workload digest, replaced on demand."""

    def __init__(self, settings: SweepSettings, prepared: lifecycle.PreparedGuest | None = None) -> None:
        self.settings = settings
        self.prepared = prepared or lifecycle.prepare(accel=settings.accel, icount_shift=settings.icount_shift)
        self.image: KernelImage = load_image(self.prepared.kernel.vmlinux)
        self.baseline: WorkloadResult | None = None
        self.booted = 0
        self._stack = contextlib.ExitStack()
        self._machine: QemuMachine | None = None
        self._instrumenter: Instrumenter | None = None

    # -- the guest ------------------------------------------------------------------------------
    def _start(self) -> None:
        self._machine = self._stack.enter_context(lifecycle.private_guest(self.prepared))
        self._instrumenter = self._stack.enter_context(connect(self._machine.config.gdb_socket, self.prepared.kernel))
        self.booted += 1
        digest = self._workload()
        if self.baseline is None:
            self.baseline = digest
        elif digest.digest != self.baseline.digest:
            raise RigError(f"the workload's digest differs between two fresh guests ({digest.digest} vs "
                           f"{self.baseline.digest}; parts {', '.join(digest.differing(self.baseline))})",
                           "the guest workload is not deterministic: fix it before sweeping")

    def replace(self) -> None:
        self.close()
        self._start()

    def close(self) -> None:
        self._stack.close()
        self._machine = self._instrumenter = None

    def _started(self) -> tuple[QemuMachine, Instrumenter]:
        """The guest and its instrumenter, a fresh guest booted first when there is none."""
        if self._machine is None or self._instrumenter is None:
            self._start()
        assert self._machine is not None and self._instrumenter is not None
        return self._machine, self._instrumenter

    @property
    def machine(self) -> QemuMachine:
        return self._started()[0]

    @property
    def instrumenter(self) -> Instrumenter:
        return self._started()[1]

    def __enter__(self) -> GuestWorker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _workload(self) -> WorkloadResult:
        return run_workload(self.machine.console, self.settings.workload_parts,
                            timeout=self.settings.workload_timeout_s)

    # -- one try --------------------------------------------------------------------------------
    def check(self, points: Sequence[Point]) -> CheckResult:
        """Splice ``points`` at once, run the workload, judge, undo; see the module docstring. The
        guest is replaced afterwards whenever the try failed (its state is in doubt)."""
        result = CheckResult()
        watch: crash.ConsoleWatch | None = None
        try:
            watch, batch = self._splice(points, result)
            if batch is not None:
                self._judge(watch, points, batch, result)
        except RigError as error:  # anything the rig itself raised: the guest state is in doubt
            result.failure = result.failure or BatchFailure("splice-error", error.message)
        if result.failure is not None:
            oops = watch.first_crash(settle_s=1.0) if watch is not None else None
            if oops is not None and not result.failure.oops:
                decoded = crash.decode(oops, self.image, self.instrumenter.layout)
                result.failure = BatchFailure("oops", result.failure.detail, decoded.summary())
            self.replace()
        return result

    def _watch(self, points: Sequence[Point]) -> crash.ConsoleWatch:
        return crash.ConsoleWatch.start(self.machine.config.console_log, self.image,
                                        splices=[point.label for point in points], layout=self.instrumenter.layout)

    def _splice(self, points: Sequence[Point], result: CheckResult) -> tuple[crash.ConsoleWatch, BatchResult | None]:
        """The batch spliced in one stop. A busy refusal (after the instrumenter's own retries) is a
        task asleep inside a point's window: free slots whose old patch a task may still return into
        (an earlier batch's splice undone under a sleeping task) are passed over by the instrumenter,
        not refused. One point is then refused as busy; a batch of more fails and is bisected down
        to it."""
        panic = self.image.symbol("panic").address
        requests = [self.settings.request(point, panic) for point in points]
        watch = self._watch(points)
        try:
            batch = self.instrumenter.splice_many(requests, strict=False)
        except SpliceRefused as refusal:
            if refusal.reason == "busy" and len(points) == 1:
                result.outcomes.append(PointOutcome(points[0], "refused", reason="busy", detail=refusal.message))
            else:
                result.failure = BatchFailure("splice-error", f"{refusal.reason}: {refusal.message}")
            return watch, None
        result.splice_stop_s = batch.stall_s
        by_address = {point.address: point for point in points}
        for request, refusal in batch.refused:
            result.outcomes.append(PointOutcome(by_address[request.address or 0], "refused", reason=refusal.reason,
                                                detail=refusal.message, deferred=refusal.reason in DEFERRED_REASONS))
        return watch, batch

    def _judge(self, watch: crash.ConsoleWatch, points: Sequence[Point], batch: BatchResult,
               result: CheckResult) -> None:
        instrumenter = self.instrumenter
        assert self.baseline is not None
        started = time.monotonic()
        try:
            digest = self._workload()
        except RigError as error:
            result.failure = BatchFailure("hang", error.message)
            return
        finally:
            result.workload_s = time.monotonic() - started
        oops = watch.first_crash(settle_s=0.5)
        if oops is not None:
            result.failure = BatchFailure("oops", "the guest printed an oops while the workload ran",
                                          crash.decode(oops, self.image, instrumenter.layout).summary())
            return
        if digest.digest != self.baseline.digest:
            failed_steps = "".join(f"; {part} failed at {step}" for part, step in digest.failures.items())
            result.failure = BatchFailure("digest", f"workload digest {digest.digest} instead of "
                                                    f"{self.baseline.digest} (parts: "
                                                    f"{', '.join(digest.differing(self.baseline))}{failed_steps})")
            return
        spliced = [plan.point for plan in batch.plans]
        hits = instrumenter.hits_in(min(spliced), max(spliced) + 1) if spliced else {}
        try:
            instrumenter.unsplice_all()
        except RigError as error:
            result.failure = BatchFailure("unsplice", error.message)
            return
        problems = instrumenter.audit()
        if problems:
            result.failure = BatchFailure("audit", "; ".join(problems[:5]))
            return
        by_address = {point.address: point for point in points}
        for address in spliced:
            count = hits.get(address, (0, ""))[0]
            result.outcomes.append(PointOutcome(by_address[address], "validated" if count else "unreached",
                                                hits=count))


def check_batch(worker: GuestWorker, points: Sequence[Point],
                on_try: Callable[[int], None] | None = None) -> BatchReport:
    """Check ``points`` together; a failing set is halved until the points that fail alone are found
    (each half on a guest of its own: a failed try replaces the guest)."""
    started, booted_before = time.monotonic(), worker.booted
    tries = 0
    notes: list[str] = []

    def run(subset: Sequence[Point]) -> list[PointOutcome]:
        nonlocal tries
        tries += 1
        if on_try is not None:
            on_try(len(subset))
        result = worker.check(subset)
        if result.failure is None:
            return result.outcomes
        if len(subset) == 1:
            failure = result.failure
            return [PointOutcome(subset[0], "failed", reason=failure.kind, detail=failure.detail, oops=failure.oops,
                                 repro=worker.settings.repro(subset[0]))]
        half = len(subset) // 2
        outcomes = run(subset[:half]) + run(subset[half:])
        if not any(o.status == "failed" for o in outcomes):
            notes.append(f"{len(subset)} points from {subset[0].label} failed together ({result.failure.kind}: "
                         f"{result.failure.detail}) but every half passed alone")
        return outcomes

    outcomes = run(points)
    return BatchReport(outcomes, tries, worker.booted - booted_before, time.monotonic() - started, notes)
