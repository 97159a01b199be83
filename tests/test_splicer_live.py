"""The indexed live splices (rig.splicer.live) answer as a scan of the records in order would, and
a batch planned against one index grown plan by plan refuses and plans exactly what a plan against
the plain list of records does (issue 10: planning a batch near-linear, refusals unchanged)."""
from __future__ import annotations

from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rig.splicer import springboard as sb
from rig.splicer.analysis import disassemble_function
from rig.splicer.image import ByteRange, KernelImage
from rig.splicer.kinds import Mode, Policy, SpliceRefused
from rig.splicer.live import LiveSplices
from rig.splicer.padding import padding_gaps
from rig.splicer.plan import SplicePlan, plan_splice
from rig.splicer.repository import RepositoryLayout, SlotRecord, SpringboardRecord

LAYOUT = RepositoryLayout()
BASE = 0xC0100000


def record(in_use: bool, point: int, length: int, patch_slot: int, bucket: int = 0,
           boards: Sequence[tuple[int, int]] = ()) -> SlotRecord:
    return SlotRecord(in_use, 1, 1, length, min(length, 2), 0, point, point + length, LAYOUT.patch_code(patch_slot),
                      0, bytes(length), tuple(SpringboardRecord(a, bytes(n)) for a, n in boards), 0, bucket)


records = st.lists(st.builds(record, st.booleans(), st.integers(BASE, BASE + 64), st.integers(0, 7),
                             st.integers(0, 5), st.integers(0, 20),
                             st.lists(st.tuples(st.integers(BASE, BASE + 64), st.sampled_from([2, 5])), max_size=2)),
                   max_size=24)


# The scans the index replaced, as they were.
def scan_holding(active: Sequence[SlotRecord], address: int) -> SlotRecord | None:
    return next((r for r in active if r.in_use and r.point <= address < r.point + max(r.window_length, 1)), None)


def scan_overlapping(active: Sequence[SlotRecord], window: ByteRange) -> SlotRecord | None:
    return next((r for r in active if r.in_use and window.overlaps(ByteRange(r.point, max(r.window_length, 1)))), None)


def scan_free_ranges(gaps: Sequence[ByteRange], occupied: Sequence[ByteRange]) -> list[ByteRange]:
    """Every gap cut by every used range, none skipped by an index."""
    return [piece for gap in sorted(gaps, key=lambda g: g.start) for piece in sb.cut(gap, occupied)
            if piece.length >= sb.REL8_SIZE]


@settings(max_examples=300, deadline=None)
@given(records, st.integers(BASE - 8, BASE + 80), st.integers(0, 9), st.integers(0, 5))
def test_index_answers_as_a_scan_in_order(active: list[SlotRecord], address: int, length: int, slot: int) -> None:
    live = LiveSplices(active)
    holder = live.window_holding(address)
    assert (holder[1] if holder else None) is scan_holding(active, address)
    window = ByteRange(address, length)
    overlapping = live.window_overlapping(window)
    assert (overlapping[1] if overlapping else None) is scan_overlapping(active, window)
    owner = live.patch_owner(LAYOUT.patch_code(slot))
    assert (owner[1] if owner else None) is next(
        (r for r in active if r.in_use and r.patch_address == LAYOUT.patch_code(slot)), None)
    assert set(live.buckets) == {r.bucket for r in active if r.in_use}
    assert live.springboards == [ByteRange(b.address, len(b.original)) for r in active if r.in_use
                                 for b in r.springboards]
    grown = LiveSplices()
    for each in active:
        grown.add(each)
    assert grown.window_holding(address) == holder and grown.window_overlapping(window) == overlapping


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 200), st.integers(0, 40)), max_size=12),
       st.lists(st.tuples(st.integers(0, 240), st.integers(0, 6)), max_size=12))
def test_free_ranges_as_the_pairwise_cut(gaps: list[tuple[int, int]], used: list[tuple[int, int]]) -> None:
    gap_ranges = [ByteRange(start, length) for start, length in gaps]
    occupied = [ByteRange(start, length) for start, length in used]
    assert sb.free_ranges(gap_ranges, occupied) == scan_free_ranges(gap_ranges, occupied)


@pytest.fixture(scope="module")
def vmlinux(kernel) -> KernelImage:  # noqa: ANN001 - conftest fixture
    return KernelImage.load(kernel.vmlinux)


def plan_or_refusal(*args: object, **options: object) -> SplicePlan | tuple[str, str, str]:
    try:
        return plan_splice(*args, **options)  # type: ignore[arg-type]
    except SpliceRefused as refused:
        return refused.reason, refused.message, refused.hint


@pytest.mark.parametrize(("function", "mode", "policy", "backward", "refusals"), [
    ("tcp_sendmsg", Mode.TRAP, Policy.SINGLE, False, {"already-spliced"}),
    ("tcp_sync_mss", Mode.JMP, Policy.SINGLE, False, {"already-spliced", "no-springboard-route"}),
    ("tcp_sync_mss", Mode.JMP, Policy.DISPLACE, True, {"already-spliced", "overlaps-splice"}),
])
def test_a_batch_plans_and_refuses_as_against_the_list(vmlinux: KernelImage, function: str, mode: Mode,
                                                       policy: Policy, backward: bool, refusals: set[str]) -> None:
    """Every instruction in turn, twice over (the second round is refused as already spliced;
    backward, windows run into the splices after them): against the growing index and against
    the plain list of records so far."""
    code = disassemble_function(vmlinux, function)
    gaps = padding_gaps(vmlinux)
    points = [i.address for i in code.instructions if not i.is_data][::-1 if backward else 1] * 2
    index, listed = LiveSplices(), []
    outcomes: list[str] = []
    for slot, point in enumerate(points):
        common = {"vector": 0x81, "springboard_space": gaps}
        by_index = plan_or_refusal(code, point, mode, policy, LAYOUT, slot, active=index, **common)
        by_list = plan_or_refusal(code, point, mode, policy, LAYOUT, slot, active=listed, **common)
        assert by_index == by_list
        if isinstance(by_index, SplicePlan):
            assert by_index.record is not None
            index.add(by_index.record)
            listed.append(by_index.record)
            outcomes.append("planned")
        else:
            outcomes.append(by_index[0])
    assert "planned" in outcomes and refusals <= set(outcomes)
