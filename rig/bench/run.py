"""``invoke bench``: the registered parts the options select, measured and written as one report.

Guest-free parts (:class:`~rig.bench.part.StaticPart`: Fig. 4, the hop census) run in a worker
process while the guests are measured, so the whole bench stays short; derived parts (Fig. 5)
run last, from the others' results. Every part then gives its sections to ``report.md`` (and
the terminal) and its result to ``bench.json`` under its key.
"""
from __future__ import annotations

import time
from collections.abc import Iterable
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from rig import paths
from rig.bench import guests, report
from rig.bench.guests import ClockOptions
from rig.bench.part import AnyPart, DerivedPart, GuestPart, Note, Registry, ReportContext, Results, StaticPart
from rig.bench.registry import PARTS
from rig.bench.sections import Section, merged
from rig.bench.table1 import Table1Part
from rig.errors import RigError
from rig.kernel.build import ensure_kernel


@dataclass(frozen=True)
class BenchOptions:
    switches: frozenset[str] | None = None   # the `invoke bench --<switch>`es given; None: every part
    parts: Registry = field(default_factory=lambda: PARTS)  # the parts, each with its options
    clocks: ClockOptions = ClockOptions()
    reports_root: Path = field(default_factory=paths.reports_dir)

    def selected(self) -> list[AnyPart]:
        return self.parts.selected(self.switches)

    def given_switches(self) -> list[str]:
        """The switches in effect (none given: every switch of the parts a plain run selects)."""
        chosen = {part.switch for part in self.selected()} if self.switches is None else self.switches
        return [s for s in self.parts.switches if s in chosen]

    def check(self) -> None:
        unknown = sorted(set(self.switches or ()) - set(self.parts.switches))
        if unknown:
            raise RigError(f"no bench part answers to {', '.join(unknown)}",
                           hint=f"pick from {' '.join(f'--{s}' for s in self.parts.switches)}")
        if not self.selected():
            raise RigError("nothing to run", hint=f"pick at least one of "
                           f"{' '.join(f'--{s}' for s in self.parts.switches)} (or none for all)")
        for part in self.selected():
            part.check()


def cli_options(*, switches: Iterable[str], n: int | None, runs: int | None, accel: str, icount: bool,
                counter: bool) -> BenchOptions:
    """The options of ``invoke bench``: the switches given (none: all) and Table 1's settings."""
    table1 = PARTS.get(Table1Part)
    assert isinstance(table1, Table1Part)
    configured = replace(table1, n=n or table1.n, runs=runs or table1.runs, counter_rows=counter)
    return BenchOptions(switches=frozenset(switches) or None, parts=PARTS.configured(configured),
                        clocks=ClockOptions(accel=accel, icount=icount))


@dataclass
class BenchRun:
    run_dir: Path
    data: dict[str, Any]       # as written to bench.json
    results: Results
    sections: list[Section]
    seconds: float


def _by_kind(parts: list[AnyPart]) -> tuple[list[StaticPart[Any]], list[GuestPart[Any]], list[DerivedPart[Any]]]:
    return ([p for p in parts if isinstance(p, StaticPart)], [p for p in parts if isinstance(p, GuestPart)],
            [p for p in parts if isinstance(p, DerivedPart)])


def planned_steps(options: BenchOptions) -> int:
    """How many progress notes :func:`run` will give (for a progress bar)."""
    static, guest, derived = _by_kind(options.selected())
    return (2 if static else 0) + guests.steps(guest, options.clocks) + sum(1 + p.steps() for p in derived)


def _options_json(options: BenchOptions, chosen: list[AnyPart]) -> dict[str, Any]:
    by_part = {part.key: part.options_json() for part in chosen}
    return {**options.clocks.to_json(), "parts": options.given_switches(),
            **{key: part_options for key, part_options in by_part.items() if part_options}}


def run(options: BenchOptions, note: Note | None = None) -> BenchRun:
    options.check()
    say = note or (lambda phase, detail: None)
    started = time.monotonic()
    chosen = options.selected()
    static, guest, derived = _by_kind(chosen)
    kernel = ensure_kernel(allow_download=False)
    results = Results()
    with ProcessPoolExecutor(max_workers=1) as pool:
        pending: list[tuple[StaticPart[Any], Future[Any]]] = []
        if static:
            say("static", f"{' and '.join(p.title for p in static)} (background)")
            pending = [(part, pool.submit(part.measure, kernel)) for part in static]
        for part, per_clock in guests.measure(guest, options.clocks, say):
            results.put(part, per_clock)
        if pending:
            say("static", f"waiting for the {' and '.join(p.title for p in static)}")
            for part, future in pending:
                results.put(part, future.result())
    for part in derived:
        say(part.key, part.title)
        results.put(part, part.measure(results))
    data: dict[str, Any] = {
        "options": _options_json(options, chosen),
        "kernel": {"build_id": kernel.build_id, "gcc": kernel.info["host"]["gcc"], "cc": kernel.info["cc"]},
        **{part.key: part.to_json(results.of(part)) for part in chosen}}
    run_dir = report.new_run_dir(options.reports_root)
    data["seconds"] = round(time.monotonic() - started, 2)
    context = ReportContext(run_dir, kernel.build_id, kernel.info["host"]["gcc"])
    sections = merged([section for part in chosen for section in part.sections(results.of(part), context)])
    report.write_report(run_dir, "trapsplice bench", sections)
    data["seconds_with_report"] = round(time.monotonic() - started, 2)
    report.write_json(run_dir, "bench", data)
    return BenchRun(run_dir, data, results, sections, data["seconds_with_report"])
