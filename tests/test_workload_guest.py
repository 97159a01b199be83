"""The guest workload: the same digest on every run and every boot, each part on its own, and the
same digest while trap splices count what it reaches in the kernel."""
from __future__ import annotations

import pytest

from rig.errors import RigError
from rig.guest.machine import QemuMachine
from rig.guest.workload import PARTS, WorkloadResult, run_workload
from rig.instrument import Instrumenter
from rig.instrument.manager import PointRequest
from rig.splicer.kinds import Mode

# Under TCG the whole workload takes 1-2 s of guest time on an idle host; a busy shared host is
# several times slower, and every live trap splice costs a trap per hit.
TIMEOUT_S = 180.0

# Functions the workload must run through, with the part that reaches them.
REACHED = {
    "do_fork": "fork",
    "__alloc_pages": "memory",
    "kmem_cache_alloc": "unix",
    "schedule": "sched",
    "tcp_sendmsg": "tcp",
    "do_page_fault": "memory",
    "sys_open": "file",
    "speedo_start_xmit": "nic",
    "speedo_rx": "nic",
    "set_rx_mode": "nic",
    "interruptible_sleep_on": "signal",  # TIOCMIWAIT on the serial port, ended by SIGALRM
    "yield": "file",                     # a flock converted under a blocked waiter
}


def assert_clean(result: WorkloadResult) -> None:
    assert result.ok, f"parts failed: {result.failures} ({result.raw})"
    assert len(result.digest) == 16 and all(len(h) == 8 for h in result.parts.values())


@pytest.fixture(scope="module")
def baseline(guest: QemuMachine) -> WorkloadResult:
    result = run_workload(guest.console, timeout=TIMEOUT_S)
    assert_clean(result)
    assert list(result.parts) == list(PARTS)
    return result


def test_digest_is_the_same_on_a_second_run(guest: QemuMachine, baseline: WorkloadResult) -> None:
    again = run_workload(guest.console, timeout=TIMEOUT_S)
    assert_clean(again)
    assert again.differing(baseline) == []
    assert again.digest == baseline.digest


def test_digest_is_the_same_on_a_fresh_guest(fresh_guest: QemuMachine, baseline: WorkloadResult) -> None:
    other = run_workload(fresh_guest.console, timeout=TIMEOUT_S)
    assert_clean(other)
    assert other.differing(baseline) == []
    assert other.digest == baseline.digest


@pytest.mark.parametrize("part", PARTS)
def test_each_part_runs_alone(guest: QemuMachine, baseline: WorkloadResult, part: str) -> None:
    alone = run_workload(guest.console, [part], timeout=TIMEOUT_S)
    assert_clean(alone)
    assert alone.parts == {part: baseline.parts[part]}  # a part's digest does not depend on the others
    assert alone.digest != baseline.digest              # the digest covers only what ran
    assert alone.part_seconds[part] >= 0


def test_parts_in_another_order_keep_their_digests(guest: QemuMachine, baseline: WorkloadResult) -> None:
    result = run_workload(guest.console, ["nic", "fork", "tcp"], timeout=TIMEOUT_S)
    assert_clean(result)
    assert list(result.parts) == ["nic", "fork", "tcp"]
    assert all(result.parts[part] == baseline.parts[part] for part in result.parts)


def test_unknown_part_is_refused_on_both_sides(guest: QemuMachine) -> None:
    with pytest.raises(RigError, match="unknown workload part"):
        run_workload(guest.console, ["nosuch"])
    with pytest.raises(RigError, match="unknown part 'nosuch'"):
        guest.console.request("workload fork nosuch")
    assert guest.console.request("ping").int_field("pong") == 1


def test_aligned_run_starts_on_its_tick_with_the_same_digest(guest: QemuMachine, baseline: WorkloadResult) -> None:
    """``align=TICKS``: the parts start two ticks after a tick whose jiffies is a multiple of TICKS
    (the aligned tick, then the one kupdated's restart sleeps through); digests as unaligned."""
    ticks = 37
    aligned = run_workload(guest.console, ["fork", "tcp"], timeout=TIMEOUT_S, align_ticks=ticks)
    assert_clean(aligned)
    assert aligned.start_jiffies is not None and aligned.start_jiffies % ticks == 2
    assert aligned.parts == {name: baseline.parts[name] for name in ("fork", "tcp")}
    assert run_workload(guest.console, ["fork"], timeout=TIMEOUT_S).start_jiffies is None
    for bad in ("align=0", "align=x"):
        with pytest.raises(RigError, match="align= takes a number of ticks"):
            guest.console.request(f"workload {bad} fork")
    with pytest.raises(RigError, match="align_ticks must be 1 or more"):
        run_workload(guest.console, ["fork"], align_ticks=0)


def test_digest_unchanged_with_trap_splices_that_count_what_it_reaches(
        clean: Instrumenter, guest: QemuMachine, baseline: WorkloadResult) -> None:
    batch = clean.splice_many([PointRequest(function, Mode.TRAP) for function in REACHED])
    slots = {plan.function: plan.slot for plan in batch.plans}
    spliced = run_workload(guest.console, timeout=TIMEOUT_S)
    assert_clean(spliced)
    assert spliced.differing(baseline) == []
    assert spliced.digest == baseline.digest
    hits = {function: clean.counter(slots[function]) for function in REACHED}
    assert all(count > 0 for count in hits.values()), hits
    # each part alone reaches its own functions
    clean.unsplice_all()
    batch = clean.splice_many([PointRequest(function, Mode.TRAP) for function in ("speedo_start_xmit", "tcp_sendmsg")])
    slots = {plan.function: plan.slot for plan in batch.plans}
    run_workload(guest.console, ["nic"], timeout=TIMEOUT_S)
    assert clean.counter(slots["speedo_start_xmit"]) > 0
    assert clean.counter(slots["tcp_sendmsg"]) == 0  # no TCP in the nic part
