"""Plans on the real 2.4.20 vmlinux built by the rig (the `kernel` fixture)."""
from __future__ import annotations

import capstone
import pytest
from splice_checks import check_chain

from rig.splicer.analysis import disassemble_function
from rig.splicer.image import KernelImage
from rig.splicer.kinds import Mode, Policy, SpliceRefused
from rig.splicer.padding import padding_gaps
from rig.splicer.plan import plan_splice
from rig.splicer.repository import RepositoryLayout

LAYOUT = RepositoryLayout()
_md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_32)


@pytest.fixture(scope="module")
def vmlinux(kernel) -> KernelImage:  # noqa: ANN001 - conftest fixture
    return KernelImage.load(kernel.vmlinux)


@pytest.mark.parametrize("function", ["tcp_sync_mss", "sys_getpid"])
@pytest.mark.parametrize("mode", [Mode.TRAP, Mode.JMP])
def test_entry_plans(vmlinux: KernelImage, function: str, mode: Mode) -> None:
    code = disassemble_function(vmlinux, function)
    gaps = padding_gaps(vmlinux)
    plan = plan_splice(code, code.start, mode, Policy.DISPLACE, LAYOUT, 0, vector=0x81, springboard_space=gaps)
    assert plan.original == vmlinux.text_bytes(code.start, plan.window.length)
    assert plan.writes[-1].role == "point" and plan.undo[0].data == plan.original
    first = next(_md.disasm(plan.new_bytes, code.start, count=1))
    assert first.mnemonic == ("int" if mode is Mode.TRAP else "jmp")


def test_short_instruction_point_needs_springboards(vmlinux: KernelImage) -> None:
    """A real 2..4-byte instruction in tcp_sync_mss: single-policy jmp goes through padding."""
    code = disassemble_function(vmlinux, "tcp_sync_mss")
    gaps = padding_gaps(vmlinux)
    assert gaps, "2.4.20 text has alignment padding between functions"
    for insn in code.instructions:
        if 2 <= insn.size < 5 and not insn.is_data:
            try:
                plan = plan_splice(code, insn.address, Mode.JMP, Policy.SINGLE, LAYOUT, 0,
                                   springboard_space=gaps)
            except SpliceRefused as refused:
                assert refused.reason in ("no-springboard-route", "unrelocatable")
                continue
            assert plan.springboards and plan.hops == len(plan.springboards) + 1
            assert plan.new_bytes[0] == 0xEB
            return
    pytest.fail("no short instruction in tcp_sync_mss could be reached through springboards")


def test_natural_multi_hop_chain_in_the_scheduler(vmlinux: KernelImage) -> None:
    """Where the padding next to a short instruction is too small, the route chains rel8 hops."""
    gaps = padding_gaps(vmlinux)
    for function in vmlinux.functions_in(".text"):
        if not function.name.startswith(("schedule", "sys_sched", "wake_up", "__wake_up", "sleep_on")):
            continue
        code = disassemble_function(vmlinux, function)
        for insn in code.instructions:
            if not 2 <= insn.size < 5:
                continue
            try:
                plan = plan_splice(code, insn.address, Mode.JMP, Policy.SINGLE, LAYOUT, 0, springboard_space=gaps)
            except SpliceRefused:
                continue
            if len(plan.springboards) < 2:
                continue
            check_chain(plan)
            for board in plan.springboards:
                assert board.original == vmlinux.text_bytes(board.address, len(board.original))
            return
    pytest.fail("no short instruction in the scheduler needs a chain of two or more springboards")


@pytest.mark.parametrize("function", ["start_kernel", "tcp_init", "mem_init"])
def test_init_text_is_refused(vmlinux: KernelImage, function: str) -> None:
    """2.4 frees .text.init after boot: a splice there would write into reused pages."""
    code = disassemble_function(vmlinux, function)
    assert code.symbol.section == ".text.init"
    with pytest.raises(SpliceRefused) as refused:
        plan_splice(code, code.start, Mode.TRAP, Policy.DISPLACE, LAYOUT, 0, vector=0x81)
    assert refused.value.reason == "init-text" and ".text.init" in refused.value.message


@pytest.mark.parametrize("mode", [Mode.INT3, Mode.TRAP, Mode.JMP])
def test_sti_hlt_interrupt_shadow_is_refused(vmlinux: KernelImage, mode: Mode) -> None:
    """default_idle's `sti; hlt`: neither the sti nor the instruction in its shadow may move."""
    code = disassemble_function(vmlinux, "default_idle")
    sti = next(i for i in code.instructions if i.mnemonic == "sti")
    after = code.instruction_at(sti.end)
    gaps = padding_gaps(vmlinux)
    for point in (sti.address, after.address):
        with pytest.raises(SpliceRefused) as refused:
            plan_splice(code, point, mode, Policy.DISPLACE, LAYOUT, 0, vector=0x81, springboard_space=gaps)
        assert refused.value.reason == "interrupt-shadow"
    # A window that ends right before the sti is fine: the shadow stays where it was.
    before = next(i for i in code.instructions if i.end == sti.address)
    earlier = next(i for i in code.instructions if i.end == before.address)
    plan_splice(code, earlier.address, Mode.TRAP, Policy.SINGLE, LAYOUT, 0, vector=0x81)
