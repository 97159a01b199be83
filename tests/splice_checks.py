"""Checks on splice plans shared by the splicer tests."""
from __future__ import annotations

import capstone

from rig.splicer.plan import SplicePlan

_md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_32)


def check_chain(p: SplicePlan) -> None:
    """Follow the jumps from the point: rel8 hops in range, one final rel32 into the patch."""
    at, data = p.point, p.new_bytes
    boards = {b.address: b.data for b in p.springboards}
    jumps = 0
    while True:
        insn = next(_md.disasm(data, at, count=1))
        assert insn.mnemonic == "jmp"
        jumps += 1
        target = int(insn.op_str, 16)
        if insn.size == 2:
            assert -128 <= target - (at + 2) <= 127
            at, data = target, boards[target]
        else:
            assert insn.size == 5 and target == p.patch_address
            break
    assert jumps == p.hops == len(p.springboards) + 1
