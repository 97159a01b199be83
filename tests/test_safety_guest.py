"""Safety on the real guest: every mode in every order, init text, interrupt shadows, user int3
beside int3 splices, busy checks that see this very splice's dispatch, overlapping windows."""
from __future__ import annotations

import itertools
import threading

import pytest

from rig.guest.machine import QemuMachine
from rig.instrument import Instrumenter
from rig.splicer.analysis import decode
from rig.splicer.kinds import Mode, SpliceRefused

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
