"""Splices at scale on a real guest under TCG -icount, with small options (1 and 16 live splices,
batches of 1 and 10): the result's structure, the measured splice in the highest slot, a trap
overhead the instruction clock sees and repeats run after run, and a guest left with no splice."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from rig import instrument
from rig.bench import scale
from rig.bench.part import ClockRun, Guest, ReportContext
from rig.guest import lifecycle
from rig.kernel.build import KernelBuild

SHIFT = 3


@pytest.fixture(scope="module")
def measured(kernel: KernelBuild) -> tuple[scale.ScalePart, scale.ClockScale, list[object]]:
    part = scale.ScalePart(live=(1, 16), batches=(1, 10), n=2000, runs=2)
    part.check()
    prepared = lifecycle.prepare(accel="tcg", icount_shift=SHIFT)
    with lifecycle.private_guest(prepared) as machine:
        assert machine.boot is not None
        with instrument.connect(machine.config.gdb_socket, prepared.kernel) as instr:
            guest = Guest(machine, instr, ClockRun(prepared.clock, prepared.accel_reason, machine.boot.boot_seconds),
                          note=lambda _: None)
            result = part.measure(guest)
            _, left = instr.active()
        machine.console.request("ping", timeout=10)
    return part, result, list(left)


def test_structure_and_slots(measured: tuple[scale.ScalePart, scale.ClockScale, list[object]]) -> None:
    part, result, left = measured
    assert left == []  # everything undone
    points = result.scale.live
    assert [p.target for p in points] == [1, 16] and [p.fillers for p in points] == [0, 15]
    for point in points:
        assert [row.mode for row in point.rows] == ["trap", "int3", "jmp"]
        assert all(row.slot == point.fillers for row in point.rows)  # the highest slot in use
        assert len(point.baseline_runs) == 2 and all(len(row.runs) == 2 for row in point.rows)
    reference = points[0].row("trap")
    assert reference is not None and reference.ratio == {"min": 1.0, "median": 1.0}
    batches = result.scale.batches
    assert [(b.size, b.spliced) for b in batches] == [(1, 1), (10, 10)]
    assert all(b.stall_s > 0 and b.wall_s >= b.stall_s for b in batches)
    json.dumps(part.to_json([result]))


def test_icount_trap_overhead_is_positive_and_repeats(
        measured: tuple[scale.ScalePart, scale.ClockScale, list[object]]) -> None:
    _, result, _ = measured
    assert result.clock.clock.deterministic
    for point in result.scale.live:
        trap = point.row("trap")
        assert trap is not None and trap.overhead["min"] > 0 and trap.overhead["median"] > 0
        assert len({r["min"] for r in trap.runs}) == 1 and len({r["min"] for r in point.baseline_runs}) == 1


def test_sections(measured: tuple[scale.ScalePart, scale.ClockScale, list[object]], kernel: KernelBuild,
                  tmp_path: Path) -> None:
    part, result, _ = measured
    context = ReportContext(tmp_path, kernel.build_id, kernel.info["host"]["gcc"])
    [section] = part.sections([result], context)
    assert [len(t.rows) for t in section.tables] == [2 * 3, 2]
    assert any("goal" in note for note in section.notes)
    assert section.provenance is not None
