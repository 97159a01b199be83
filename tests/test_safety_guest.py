"""Safety on the real guest: every mode in every order, init text, interrupt shadows, user int3
beside int3 splices, busy checks that see this very splice's dispatch, overlapping windows, a free
slot whose old patch a sleeping task will still return into."""
from __future__ import annotations

import itertools
import threading
import time

import pytest

from rig.guest.machine import QemuMachine
from rig.instrument import Instrumenter
from rig.instrument.manager import PointRequest
from rig.splicer.analysis import Instruction, decode, disassemble_function
from rig.splicer.image import ByteRange
from rig.splicer.kinds import Mode, SpliceRefused
from rig.splicer.repository import PATCH_AREA_SIZE

# Each mode at its own point of a path the guest's workload runs: getpid (exact counts) and the
# straight-line entry of tcp_sync_mss (equal counts for all three there).
POINTS = {
    "jmp": dict(function="sys_getpid", mode=Mode.JMP),
    "trap": dict(function="tcp_sync_mss", mode=Mode.TRAP),                     # push esi; push ebx: displaced
    "int3": dict(function="tcp_sync_mss", mode=Mode.INT3, offset=6),           # mov ecx, [esp+0x10]
    "trap-own": dict(function="tcp_sync_mss", mode=Mode.TRAP, offset=0xA, own_vector=True),  # mov ebx, [edx+...]
}


@pytest.mark.parametrize("order", list(itertools.permutations(POINTS)), ids="-".join)
def test_every_mode_in_every_order(clean: Instrumenter, guest: QemuMachine, order: tuple[str, ...]) -> None:
    """The order decides the slots: a jmp or own-vector splice in a lower slot once hid the shared
    trap/int3 splices above it, and the guest oopsed in tcp_sync_mss."""
    unspliced = guest.console.request("tcp-mss", timeout=30).fields
    slots = {name: clean.splice(**POINTS[name]).plan.slot for name in order}
    assert sorted(slots.values()) == list(range(4))
    assert clean.audit() == []
    assert guest.console.request("bench getpid 300", timeout=60).int_field("n") == 300
    reply = guest.console.request("tcp-mss", timeout=30).fields
    assert (reply["client"], reply["server"]) == (unspliced["client"], unspliced["server"])
    hits = {name: clean.counter(slot) for name, slot in slots.items()}
    assert hits["jmp"] == 300
    assert hits["trap"] > 0 and hits["trap"] == hits["int3"] == hits["trap-own"], hits
    undone = clean.unsplice_all()
    assert sorted(r.slot for r in undone) == list(range(4))


def test_user_int3_still_traps_while_int3_splices_live(clean: Instrumenter, guest: QemuMachine) -> None:
    clean.splice(**POINTS["int3"])
    before = clean.handler_hits()
    reply = guest.console.request("user-int 3", timeout=30)
    assert reply.bool_field("faulted") and reply.int_field("signal") == 5  # SIGTRAP, from the kernel's own entry
    assert clean.handler_hits() == before
    guest.console.request("tcp-mss", timeout=30)
    assert clean.handler_hits() > before  # the rig's int3 still dispatches


@pytest.mark.parametrize("function", ["start_kernel", "tcp_init", "mem_init"])
def test_init_text_is_refused_on_the_live_guest(clean: Instrumenter, function: str) -> None:
    with pytest.raises(SpliceRefused) as refused:
        clean.splice(function, mode=Mode.TRAP)
    assert refused.value.reason == "init-text"
    assert clean.active()[1] == []


def test_sti_hlt_shadow_is_refused_on_the_live_guest(clean: Instrumenter) -> None:
    code_sti = next(i for i in clean.resolve_point("default_idle")[0].instructions if i.mnemonic == "sti")
    for address in (code_sti.address, code_sti.end):
        with pytest.raises(SpliceRefused) as refused:
            clean.splice("default_idle", mode=Mode.INT3, address=address)
        assert refused.value.reason == "interrupt-shadow"


def test_window_running_into_a_live_splice_is_refused_as_such(clean: Instrumenter) -> None:
    clean.splice("tcp_sync_mss", mode=Mode.INT3, offset=2)
    with pytest.raises(SpliceRefused) as refused:  # jmp rel32 from +0 needs 5 bytes: it would take +2
        clean.splice("tcp_sync_mss", mode=Mode.JMP, offset=0)
    assert refused.value.reason == "overlaps-splice" and "reboot" not in refused.value.hint


@pytest.mark.parametrize("mode", [Mode.TRAP, Mode.INT3])
def test_unsplice_is_busy_while_the_vcpu_is_in_this_splices_dispatch(clean: Instrumenter, guest: QemuMachine,
                                                                     mode: Mode) -> None:
    """The vCPU stopped (by a hardware breakpoint) inside the shared trap handler or the int3 stub,
    dispatching this very splice: its saved EIP is point+branch, about to be looked up in the entry
    an unsplice would release. The unsplice must refuse, and succeed once the vCPU has left."""
    # A window exactly as long as the branch: the saved EIP is the window's end, which only the
    # dispatch check can see (and eax, esp: 2 bytes for int $n; ret: 1 byte for int3).
    spliced = clean.splice("sys_getpid", mode=mode, offset=5 if mode is Mode.TRAP else 0xD)
    assert spliced.plan.window.length == (2 if mode is Mode.TRAP else 1)
    gdb = clean.gdb
    stub = clean.layout.handler if mode is Mode.TRAP else clean.layout.int3_handler
    with gdb.stopped():
        first = decode(gdb.read_memory(stub, 16), stub)[0]
        gdb.console(f"hbreak *{first.end:#x}")  # the stub's second instruction
    replies: list[object] = []
    worker = threading.Thread(target=lambda: replies.append(guest.console.request("bench getpid 5", timeout=60)))
    worker.start()
    try:
        gdb.mi.wait_until(lambda: not gdb.mi.running, 30.0, "the breakpoint inside the dispatch stub")
        registers = gdb.read_registers(["eip"])
        assert stub <= registers["eip"] < stub + 0x80
        gdb.console("delete")
        with pytest.raises(SpliceRefused) as refused:
            clean.unsplice(spliced.plan.slot, retries=0)
        assert refused.value.reason == "busy" and "vcpu eip" in refused.value.message
        assert [a.slot for a in clean.active()[1]] == [spliced.plan.slot]  # nothing was written
    finally:
        gdb.cont()
        worker.join(timeout=60)
    assert replies and replies[0].int_field("n") == 5  # type: ignore[attr-defined]
    clean.unsplice(spliced.plan.slot)


def _call_init_sleeps_under(instrumenter: Instrumenter) -> Instruction:
    """The direct call in read_chan that init (asleep in read() on the console) returns from."""
    snap = instrumenter.prep()
    size = instrumenter.tasks_layout.stack_size
    with instrumenter.gdb.stopped():
        stacks = instrumenter.gdb.read_many([(esp, task + size - esp) for task, esp in snap.tasks
                                             if task < esp < task + size])
    code = disassemble_function(instrumenter.image, "read_chan")
    calls = {i.end: i for i in code.instructions if i.mnemonic == "call" and i.size == 5}
    for blob in stacks:
        for offset in range(0, len(blob) - 3, 4):
            word = int.from_bytes(blob[offset:offset + 4], "little")
            if word in calls:
                return calls[word]
    raise AssertionError("no task sleeps under a direct call in read_chan")


def _holder(instrumenter: Instrumenter, slot: int) -> str | None:
    """Who may still return into ``slot``'s patch area (the busy check's words), or None."""
    tasks = instrumenter.prep().tasks
    with instrumenter.gdb.stopped():
        try:
            instrumenter.check_not_busy(tasks, gone=[ByteRange(instrumenter.layout.patch_area(slot), PATCH_AREA_SIZE)])
        except SpliceRefused as refusal:
            return refusal.message
    return None


def _patch_area(instrumenter: Instrumenter, slot: int) -> bytes:
    with instrumenter.gdb.stopped():
        return instrumenter.gdb.read_memory(instrumenter.layout.patch_area(slot), PATCH_AREA_SIZE)


def test_a_slot_a_sleeping_task_returns_into_is_passed_over(clean: Instrumenter, guest: QemuMachine) -> None:
    """init sleeps in read_chan's call to schedule_timeout. A trap there relocates the call into its
    patch; after one request init sleeps under the patch's call, and the splice is undone while it
    sleeps: the slot is free, but init will return into its old patch. Splices after that take
    other slots (they used to be refused as busy, every one of them), leave that patch alone, and
    the guest stays healthy when init wakes through it; then the slot is taken again."""
    unspliced = guest.console.request("tcp-mss", timeout=30).fields
    call = _call_init_sleeps_under(clean)
    spliced = clean.splice("read_chan", mode=Mode.TRAP, address=call.address)
    held = spliced.plan.slot
    assert spliced.plan.window == ByteRange(call.address, call.size)  # the whole call, relocated
    assert guest.console.request("ping", timeout=30)  # init wakes, reads again: now under the patch's call
    deadline = time.monotonic() + 30
    while _holder(clean, held) is None:
        assert time.monotonic() < deadline, "init did not go back to sleep under the patch"
        time.sleep(0.05)
    assert clean.counter(held) >= 1
    clean.unsplice(held)
    assert clean.active()[1] == [] and _holder(clean, held) is not None  # free, and still held
    old_patch = _patch_area(clean, held)

    done = clean.splice_many([PointRequest("sys_getpid", Mode.TRAP), PointRequest("tcp_sync_mss", Mode.TRAP)])
    slots = {plan.function: plan.slot for plan in done.plans}
    assert held not in slots.values() and held in done.held_slots, (slots, done.held_slots)
    assert _patch_area(clean, held) == old_patch and clean.audit() == []
    # init wakes, returns through the old patch and serves the request.
    reply = guest.console.request("bench getpid 200", timeout=60)
    assert reply.int_field("n") == 200 and clean.counter(slots["sys_getpid"]) == 200
    tcp = guest.console.request("tcp-mss", timeout=30).fields
    assert (tcp["client"], tcp["server"]) == (unspliced["client"], unspliced["server"])
    assert clean.counter(slots["tcp_sync_mss"]) > 0
    assert _holder(clean, held) is None  # init sleeps in read_chan itself again

    again = clean.splice("sys_getuid", mode=Mode.TRAP)
    assert (again.plan.slot, again.held_slots) == (held, ())  # the lowest free slot again, released
    undone = clean.unsplice_all()
    assert sorted(u.slot for u in undone) == sorted([*slots.values(), again.plan.slot])
    assert clean.audit() == []
    assert guest.console.request("ping", timeout=30)
