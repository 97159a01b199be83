"""The sweep's pure parts on the real vmlinux: which points it picks, what the static planner says
of them, how they are packed into batches, and the results file (statuses validated, resume)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rig.errors import RigError
from rig.instrument import load_image
from rig.kernel.build import KernelBuild
from rig.splicer.analysis import disassemble_function
from rig.splicer.image import KernelImage
from rig.splicer.kinds import Policy
from rig.sweep import coverage
from rig.sweep.points import (
    Point,
    StaticPlanner,
    SweepMode,
    functions_of_object,
    select_points,
)
from rig.sweep.results import SweepResults, validate
from rig.sweep.run import SweepOptions, pack_batches


@pytest.fixture(scope="module")
def image(kernel: KernelBuild) -> KernelImage:
    return load_image(kernel.vmlinux)


def test_objects_are_matched_to_their_vmlinux_functions(image: KernelImage, kernel: KernelBuild) -> None:
    names = {symbol.name for symbol in functions_of_object(image, kernel, "sched.o")}
    assert {"schedule", "sys_sched_yield", "do_fork"} & names == {"schedule", "sys_sched_yield"}
    assert not {symbol.name for symbol in functions_of_object(image, kernel, "page_alloc.o")} & names


def test_points_are_every_boundary_of_the_chosen_functions(image: KernelImage, kernel: KernelBuild) -> None:
    points = select_points(image, kernel, functions=["sys_getpid", "tcp_sync_mss"])
    codes = [disassemble_function(image, name) for name in ("sys_getpid", "tcp_sync_mss")]
    assert [p.address for p in points] == sorted(i.address for c in codes for i in c.instructions if not i.is_data)
    assert all(p.address - image.function(p.function).address == p.offset for p in points)


def test_a_sample_is_reproducible_by_its_seed(image: KernelImage, kernel: KernelBuild) -> None:
    first = select_points(image, kernel, sample=50, seed=7)
    assert first == select_points(image, kernel, sample=50, seed=7)
    assert first != select_points(image, kernel, sample=50, seed=8)
    assert len(first) == 50 and first == sorted(first)


def test_an_unknown_object_is_a_clear_error(image: KernelImage, kernel: KernelBuild) -> None:
    with pytest.raises(RigError, match="no object 'nosuch.o'"):
        select_points(image, kernel, objects=["nosuch.o"])


def test_static_verdicts_per_mode(image: KernelImage, kernel: KernelBuild) -> None:
    """Trap refuses 1-byte instructions, auto takes them with int3; both refuse interrupt shadows."""
    points = select_points(image, kernel, objects=["sched.o"])
    trap = {p.address: StaticPlanner(image, SweepMode.TRAP, Policy.SINGLE).verdict(p) for p in points}
    auto = {p.address: StaticPlanner(image, SweepMode.AUTO, Policy.SINGLE).verdict(p) for p in points}
    one_byte = [p for p in points if p.size == 1]
    assert one_byte and all(trap[p.address].refusal and trap[p.address].refusal.reason == "too-short"
                            for p in one_byte)
    assert sum(v.plannable for v in auto.values()) > sum(v.plannable for v in trap.values())
    for point in points:
        verdict = auto[point.address]
        if verdict.plannable:
            assert verdict.occupied[0].start == point.address and verdict.occupied[0].length == point.size


@settings(max_examples=30, deadline=None)
@given(size=st.integers(1, 40), seed=st.integers(0, 2**16))
def test_batches_never_share_a_byte(size: int, seed: int, jmp_verdicts: list) -> None:
    import random
    chosen = random.Random(seed).sample(jmp_verdicts, min(200, len(jmp_verdicts)))
    ranges = [(v.point, [(r.start, r.end) for r in v.occupied]) for v in chosen]
    batches = pack_batches(ranges, size)
    assert sorted(p for b in batches for p in b) == sorted(v.point for v in chosen)
    occupied = {v.point: {a for r in v.occupied for a in range(r.start, r.end)} for v in chosen}
    for batch in batches:
        assert len(batch) <= size
        seen: set[int] = set()
        for point in batch:
            assert not occupied[point] & seen
            seen |= occupied[point]


@pytest.fixture(scope="module")
def jmp_verdicts(image: KernelImage, kernel: KernelBuild) -> list:
    """jmp plans with springboards: the points whose routes may compete for padding."""
    planner = StaticPlanner(image, SweepMode.JMP, None)
    verdicts = [planner.verdict(p) for p in select_points(image, kernel, objects=["page_alloc.o"])]
    return [v for v in verdicts if v.plannable]


def _results(tmp_path: Path) -> tuple[SweepResults, list[Point]]:
    points = [Point(0xC0100000 + i, "f", i, 1, "x.o") for i in range(4)]
    header = {"options": SweepOptions().to_dict(), "kernel_build_id": "k", "clock": "tcg"}
    return SweepResults.create(tmp_path / "sweep.json", header, points), points


def test_results_round_trip_and_resume(tmp_path: Path) -> None:
    results, points = _results(tmp_path)
    results.record(points[0], {"status": "validated", "hits": 3})
    results.record(points[1], {"status": "refused", "reason": "too-short"})
    results.save()
    again = SweepResults.load(tmp_path / "sweep.json")
    assert again.pending() == points[2:]
    assert again.summary()["validated"] == 1 and again.summary()["pending"] == 2
    assert SweepOptions.from_dict(again.header["options"]) == SweepOptions()


@pytest.mark.parametrize("record, problem", [
    ({"status": "done"}, "unknown status"),
    ({"status": "refused"}, "without a reason"),
    ({"status": "failed", "reason": "oops"}, "reproduces"),
    ({"status": "validated", "hits": 0}, "validated with 0 hits"),
    ({"status": "unreached", "hits": 2}, "unreached with 2 hits"),
])
def test_malformed_records_are_named(tmp_path: Path, record: dict, problem: str) -> None:
    results, points = _results(tmp_path)
    results.record(points[0], record)
    results.save()
    data = json.loads((tmp_path / "sweep.json").read_text())
    assert any(problem in line for line in validate(data))
    with pytest.raises(RigError, match="not a valid sweep results file"):
        SweepResults.load(tmp_path / "sweep.json")


def test_coverage_counts_each_status(tmp_path: Path) -> None:
    results, points = _results(tmp_path)
    results.record(points[0], {"status": "validated", "hits": 3, "stage": "live", "plannable": True})
    results.record(points[1], {"status": "unreached", "hits": 0, "stage": "live", "plannable": True})
    results.record(points[2], {"status": "refused", "reason": "too-short", "stage": "static"})
    results.header["runs"] = [{"seconds": 30.0, "engine": "test", "workers": 1}]
    row = coverage.by_object(results)[0]
    assert (row.boundaries, row.plannable, row.validated, row.unreached, row.refused, row.pending) == (4, 2, 1, 1, 1, 1)
    assert row.reached_percent == 25.0
    paths = coverage.write(tmp_path, results)
    assert all(path.stat().st_size > 0 for path in paths)
    assert "| x.o | 4 | 2 | 1 | 1 | 1 | 0 | 1 | 25.0" in (tmp_path / "coverage.md").read_text()
    assert coverage.throughput(results)["checked_per_minute"] == 4.0
