"""Live splices in the real, running 2.4.20 guest through its GDB stub."""
from __future__ import annotations

import pytest

from rig.errors import RigError
from rig.guest.machine import QemuMachine
from rig.instrument import Instrumenter
from rig.splicer.analysis import FunctionCode, Instruction, disassemble_function
from rig.splicer.kinds import Mode, Policy, SpliceRefused
from rig.splicer.padding import padding_gaps
from rig.splicer.plan import plan_splice


def bench_getpid(guest: QemuMachine, n: int) -> dict[str, int]:
    reply = guest.console.request(f"bench getpid {n}", timeout=60)
    assert reply.bool_field("pid_ok") and reply.int_field("pid") == 1
    return {key: reply.int_field(key) for key in ("n", "min", "median")}


@pytest.mark.parametrize("mode", [Mode.TRAP, Mode.JMP])
def test_getpid_splice_counts_every_call(clean: Instrumenter, guest: QemuMachine, mode: Mode) -> None:
    result = clean.splice("sys_getpid", mode=mode)
    assert result.plan.mode is mode
    assert bench_getpid(guest, 1000)["n"] == 1000
    assert clean.counter(result.plan.slot) == 1000  # init is the only caller; bench makes exactly N calls
    header, active = clean.active()
    assert header is not None and [a.function for a in active] == ["sys_getpid"]
    undone = clean.unsplice(result.plan.slot)
    assert undone.hits == 1000
    bench_getpid(guest, 100)
    assert clean.counter(result.plan.slot) == 1000  # no longer reached


def test_tcp_sync_mss_spliced_in_both_modes_at_once(clean: Instrumenter, guest: QemuMachine) -> None:
    unspliced = guest.console.request("tcp-mss", timeout=30).fields
    trap = clean.splice("tcp_sync_mss", mode=Mode.TRAP)            # entry: push esi (1 byte) -> displace
    jmp = clean.splice("tcp_sync_mss", mode=Mode.JMP, offset=trap.plan.window.length)
    reply = guest.console.request("tcp-mss", timeout=30).fields
    assert reply["client"] == unspliced["client"] and reply["server"] == unspliced["server"]
    trap_hits, jmp_hits = clean.counter(trap.plan.slot), clean.counter(jmp.plan.slot)
    assert trap_hits > 0
    assert trap_hits == jmp_hits  # both probes sit on the same straight-line entry path


def test_short_instruction_single_jmp_uses_springboards(clean: Instrumenter, guest: QemuMachine) -> None:
    image = clean.image
    code = disassemble_function(image, "tcp_sync_mss")
    short = next(i for i in code.instructions if 2 <= i.size < 5)
    result = clean.splice("tcp_sync_mss", mode=Mode.JMP, policy=Policy.SINGLE, address=short.address)
    plan = result.plan
    assert plan.window.length == short.size
    assert len(plan.springboards) >= 1 and plan.hops == len(plan.springboards) + 1
    assert plan.new_bytes[0] == 0xEB  # jmp rel8 into the chain
    for board in plan.springboards:
        assert any(gap.start <= board.address < gap.end for gap in padding_gaps(image))
    guest.console.request("tcp-mss", timeout=30)
    assert clean.counter(plan.slot) > 0
    assert bench_getpid(guest, 100)["n"] == 100


def test_hundred_splice_unsplice_cycles_leave_the_guest_healthy(clean: Instrumenter, guest: QemuMachine) -> None:
    for cycle in range(100):
        mode = Mode.TRAP if cycle % 2 else Mode.JMP
        result = clean.splice("sys_getpid", mode=mode)
        clean.unsplice(result.plan.slot)
    assert guest.console.request("ping").str_field("pong") == "1"
    assert bench_getpid(guest, 1000)["n"] == 1000
    header, active = clean.active()
    assert header is not None and active == []


def test_user_mode_int_on_the_rig_vector_faults(clean: Instrumenter, guest: QemuMachine) -> None:
    result = clean.splice("sys_getpid", mode=Mode.TRAP)
    before = clean.handler_hits()
    reply = guest.console.request(f"user-int {result.vector}", timeout=30)
    assert reply.bool_field("faulted")
    assert reply.int_field("signal") == 11  # #GP from the DPL-0 gate -> SIGSEGV
    assert clean.handler_hits() == before   # the handler never ran


# ---- refusals, each on a real case from the real kernel ---------------------------------------
def _refusal(instrumenter: Instrumenter, reason: str, **splice: object) -> SpliceRefused:
    with pytest.raises(SpliceRefused) as refused:
        instrumenter.splice(**splice)  # type: ignore[arg-type]
    assert refused.value.reason == reason, refused.value.message
    assert refused.value.hint
    return refused.value


def test_unknown_function_suggests_close_names(clean: Instrumenter) -> None:
    with pytest.raises(RigError) as error:
        clean.splice("tcp_sync_mms")
    assert "tcp_sync_mss" in str(error.value)


def test_address_inside_an_instruction_is_refused(clean: Instrumenter) -> None:
    code = disassemble_function(clean.image, "tcp_sync_mss")
    longer = next(i for i in code.instructions if i.size >= 3)
    _refusal(clean, "not-boundary", function="tcp_sync_mss", address=longer.address + 1)


def _first_plan_refusal(instrumenter: Instrumenter, reason: str, mode: Mode, policy: Policy,
                        functions: list[str]) -> tuple[str, int]:
    """A real point in a real function where the pure planner refuses for ``reason``."""
    for name in functions:
        code: FunctionCode = disassemble_function(instrumenter.image, name)
        for insn in filter(lambda i: _may_refuse(code, i, reason), code.instructions):
            try:
                plan_splice(code, insn.address, mode, policy, instrumenter.layout, 0, vector=0x81,
                            springboard_space=padding_gaps(instrumenter.image))
            except SpliceRefused as refused:
                if refused.reason == reason:
                    return name, insn.address
    raise AssertionError(f"no {reason} case found in {functions}")


def _may_refuse(code: FunctionCode, insn: Instruction, reason: str) -> bool:
    """A cheap filter before planning: only points where ``reason`` could apply."""
    if reason == "crosses-end":
        return insn.address + 5 > code.end
    if reason == "unrelocatable":
        return insn.mnemonic == "ud2" or insn.address in code.exception_sites
    return any(insn.address < target < insn.address + 5 for target in code.entered_at)


_SCAN = ["schedule", "tcp_sync_mss", "do_fork", "kmem_cache_alloc", "__alloc_pages", "sys_read", "do_page_fault"]


def test_branch_target_inside_the_window_is_refused(clean: Instrumenter) -> None:
    name, address = _first_plan_refusal(clean, "target-inside", Mode.JMP, Policy.DISPLACE, _SCAN)
    _refusal(clean, "target-inside", function=name, address=address, mode=Mode.JMP, policy=Policy.DISPLACE)


def test_window_past_the_function_end_is_refused(clean: Instrumenter) -> None:
    name, address = _first_plan_refusal(clean, "crosses-end", Mode.JMP, Policy.DISPLACE, _SCAN)
    _refusal(clean, "crosses-end", function=name, address=address, mode=Mode.JMP, policy=Policy.DISPLACE)


def test_bug_site_cannot_be_relocated(clean: Instrumenter) -> None:
    name, address = _first_plan_refusal(clean, "unrelocatable", Mode.TRAP, Policy.SINGLE, _SCAN)
    _refusal(clean, "unrelocatable", function=name, address=address, mode=Mode.TRAP, policy=Policy.SINGLE)


def test_point_already_spliced_is_refused(clean: Instrumenter) -> None:
    clean.splice("sys_getpid", mode=Mode.TRAP)
    _refusal(clean, "already-spliced", function="sys_getpid", mode=Mode.JMP)


def test_text_that_no_longer_matches_vmlinux_is_refused(clean: Instrumenter) -> None:
    symbol = clean.image.function("sys_getppid")
    tail = symbol.address + symbol.size - 1
    original = clean.image.text_bytes(tail, 1)
    with clean.gdb.stopped():
        clean.gdb.write_memory(tail, bytes([original[0] ^ 0xFF]))  # changed behind the rig's back
    try:
        with pytest.raises(RigError, match="not the one the rig built"):
            clean.splice("sys_getppid", mode=Mode.TRAP)
        header, active = clean.active()
        assert active == []
    finally:
        with clean.gdb.stopped():
            clean.gdb.write_memory(tail, original)


def test_busy_point_is_refused_and_nothing_written(clean: Instrumenter) -> None:
    """A sleeping task's return address inside the window (init sleeps in read() on the console)."""
    snap = clean.prep()
    image = clean.image
    with clean.gdb.stopped():
        stacks = clean.gdb.read_many([(esp, task + 8192 - esp) for task, esp in snap.tasks if task < esp < task + 8192])
    candidates: list[int] = []
    for blob in stacks:
        for offset in range(0, len(blob) - 3, 4):
            word = int.from_bytes(blob[offset:offset + 4], "little")
            try:
                symbol = image.function_at(word)
            except RigError:
                continue
            code = disassemble_function(image, symbol)
            calls = [i for i in code.instructions if i.end == word and i.mnemonic == "call" and i.size < 5]
            candidates += [i.address for i in calls]
    assert candidates, "no sleeping task returns past a short (indirect) call"
    for address in candidates:
        name = image.function_at(address).name
        try:
            plan_splice(disassemble_function(image, name), address, Mode.JMP, Policy.DISPLACE, clean.layout, 0,
                        springboard_space=padding_gaps(image))
        except SpliceRefused:
            continue
        before = image.text_bytes(address, 8)
        with pytest.raises(SpliceRefused) as refused:
            clean.splice(name, mode=Mode.JMP, policy=Policy.DISPLACE, address=address, retries=2)
        assert refused.value.reason == "busy"
        with clean.gdb.stopped():
            assert clean.gdb.read_memory(address, 8) == before
        assert clean.active()[1] == []
        return
    pytest.fail(f"no plannable displace window over a sleeping return address among {candidates}")


def test_no_guest_running_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from conftest import private_run_dir
    from rig import session

    monkeypatch.setenv("TRAPSPLICE_CACHE", str(private_run_dir()))  # a cache where no guest was ever booted
    with pytest.raises(RigError, match="no guest is running") as error:
        with session.instrumenter(start=False):
            pass
    assert "invoke boot" in (error.value.hint or "")


def test_no_free_vector_is_refused_and_nothing_written(fresh_guest: QemuMachine, kernel) -> None:  # noqa: ANN001
    """Every gate from 0x20 up taken (each ignore_int gate re-pointed one byte on): no vector for the rig."""
    from rig.instrument import connect
    from rig.splicer import idt as idt_mod

    with connect(fresh_guest.config.gdb_socket, kernel) as instrumenter:
        idt_base = instrumenter.image.symbol("idt_table").address
        ignore_int = instrumenter.image.symbol("ignore_int").address
        with instrumenter.gdb.stopped():
            table = instrumenter.gdb.read_memory(idt_base, 256 * 8)
            taken = [v for v in range(0x20, 256) if idt_mod.gate_at(table, v).offset == ignore_int]
            for vector in taken:
                gate = idt_mod.gate_at(table, vector)
                moved = idt_mod.Gate(gate.offset + 1, gate.selector, gate.gate_type, gate.dpl, gate.present)
                instrumenter.gdb.write_memory(idt_base + vector * 8, moved.encode())
        assert taken
        with pytest.raises(RigError, match="no free IDT vector"):
            instrumenter.splice("sys_getpid", mode=Mode.TRAP)
        with instrumenter.gdb.stopped():
            assert instrumenter.gdb.read_memory(instrumenter.layout.base, 8) != b"TRAPSPLC"  # no repository written
            assert instrumenter.gdb.read_memory(instrumenter.image.function("sys_getpid").address, 5) == \
                instrumenter.image.text_bytes(instrumenter.image.function("sys_getpid").address, 5)


def test_trap_with_a_vector_of_its_own(clean: Instrumenter, guest: QemuMachine) -> None:
    """Per-splice vectors: no table lookup; the gate is DPL 0 and goes back to ignore_int on undo."""
    shared = clean.splice("tcp_sync_mss", mode=Mode.TRAP)
    own = clean.splice("sys_getpid", mode=Mode.TRAP, own_vector=True)
    assert own.vector not in (shared.vector, 0x80) and own.plan.new_bytes[:2] == bytes([0xCD, own.vector])
    assert own.plan.trap_return is None
    assert bench_getpid(guest, 1000)["n"] == 1000
    assert clean.counter(own.plan.slot) == 1000
    user = guest.console.request(f"user-int {own.vector}", timeout=30)
    assert user.bool_field("faulted") and user.int_field("signal") == 11
    assert clean.counter(own.plan.slot) == 1000
    gate_address = clean.image.symbol("idt_table").address + own.vector * 8
    clean.unsplice(own.plan.slot)
    with clean.gdb.stopped():
        gate = clean.gdb.read_memory(gate_address, 8)
    from rig.splicer import idt

    assert idt.decode_gate(gate).offset == clean.image.symbol("ignore_int").address
    assert bench_getpid(guest, 100)["n"] == 100
