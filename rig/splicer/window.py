"""The window: which whole instructions at a point a branch of ``need`` bytes overwrites, and
what may never be in it (the checks every mode shares).

A window is refused when a branch lands inside it, when it would move an instruction into or
out of an interrupt shadow, or when an instruction in it cannot run at another address.
"""
from __future__ import annotations

from collections.abc import Sequence

from rig.splicer.analysis import FunctionCode, Instruction
from rig.splicer.image import ByteRange
from rig.splicer.kinds import Policy, SpliceRefused
from rig.splicer.repository import MAX_ORIGINAL


def choose_window(code: FunctionCode, point: int, need: int, policy: Policy) -> ByteRange:
    first = code.instruction_at(point)
    if policy is Policy.SINGLE:
        if first.size < need:
            raise SpliceRefused("too-short", f"the instruction at {point:#x} ({first.mnemonic}) is "
                                f"{first.size} byte(s), the branch needs {need}",
                                "use --policy displace to overwrite the following instructions too")
        taken = [first]
    else:
        taken = []
        for insn in code.instructions_from(point):
            if sum(i.size for i in taken) >= need:
                break
            taken.append(insn)
        length = sum(i.size for i in taken)
        if length < need or point + length > code.end:
            raise SpliceRefused("crosses-end", f"{need} bytes from {point:#x} run past the end of {code.name}",
                                "pick an earlier point, or --mode trap (2 bytes)")
        inside = sorted(t for t in code.entered_at if point < t < point + length)
        if inside:
            raise SpliceRefused("target-inside", f"a branch lands at {inside[0]:#x}, inside the "
                                f"{length}-byte window at {point:#x}",
                                "pick another point, or --policy single / --mode trap for a smaller window")
        if len(taken) > 1 and code.unresolved_indirect_jumps:
            raise SpliceRefused("indirect-jumps", f"{code.name} has indirect jumps whose targets are unknown "
                                f"(at {', '.join(hex(a) for a in code.unresolved_indirect_jumps)}); one could "
                                "land inside a multi-instruction window",
                                "use --policy single, or --mode trap at a 2-byte instruction")
    _check_interrupt_shadow(code, taken)
    for insn in taken:
        _check_relocatable(code, insn)
    length = sum(i.size for i in taken)
    if length > MAX_ORIGINAL:
        raise SpliceRefused("window-too-long", f"the window is {length} bytes", "pick another point")
    return ByteRange(point, length)


def _check_relocatable(code: FunctionCode, insn: Instruction) -> None:
    if insn.is_data or insn.mnemonic == "ud2":
        raise SpliceRefused("unrelocatable", f"{insn.address:#x} is BUG() (ud2 and its file/line record)",
                            "the BUG handler finds its record next to the faulting address; pick another point")
    if insn.address in code.exception_sites:
        raise SpliceRefused("unrelocatable", f"{insn.address:#x} may fault on a user address and is in "
                            "__ex_table; a relocated copy would not be found by the fault handler",
                            "pick another point")
    if insn.mnemonic in ("int3", "int", "into", "iretd", "iret", "sysexit", "hlt"):
        raise SpliceRefused("unrelocatable", f"{insn.mnemonic} at {insn.address:#x} is not relocated",
                            "pick another point")


def _shadows(insn: Instruction) -> bool:
    """``sti``, ``mov ss`` and ``pop ss`` hold off interrupts until the next instruction is done
    (SDM vol. 3, 6.8.3): ``sti; hlt`` in default_idle relies on it to not lose a wakeup."""
    return insn.mnemonic == "sti" or (insn.mnemonic in ("mov", "pop") and insn.op_str.startswith("ss"))


def _check_interrupt_shadow(code: FunctionCode, taken: Sequence[Instruction]) -> None:
    """Refuse a window that would move an instruction out of, or into, an interrupt shadow.

    Relocated, ``sti`` would shadow the patch's next instruction instead of its own, and the
    instruction after ``sti`` would run behind a branch, outside the shadow."""
    before = code.instructions_ending_at(taken[0].address)
    for insn in [*before, *taken]:
        if _shadows(insn) and not insn.is_data:
            where = "right before the point" if insn in before else "inside the window"
            raise SpliceRefused("interrupt-shadow", f"{insn.mnemonic} {insn.op_str}".strip() +
                                f" at {insn.address:#x} ({where}) holds off interrupts for exactly one "
                                "instruction; a splice here would move that instruction out of its shadow "
                                "and a wakeup could be lost",
                                "pick a point at least one instruction away from it")
