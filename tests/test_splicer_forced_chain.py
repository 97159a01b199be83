"""Forced springboard chains (``plan_splice(..., springboards=k)``) on the built 2.4.20 vmlinux
and on gcc -m32 -O2 code: exactly k springboards, rel8 hops in range, the last a rel32 to the patch."""
from __future__ import annotations

from pathlib import Path

import capstone
import pytest

from ccode import snippet_object  # noqa: F401  (fixture)
from rig.kernel.build import KernelBuild
from rig.splicer import springboard as sb
from rig.splicer.analysis import disassemble_function
from rig.splicer.image import KernelImage
from rig.splicer.kinds import Mode, PatchKind, Policy, SpliceRefused
from rig.splicer.padding import padding_gaps
from rig.splicer.plan import SplicePlan, plan_splice
from rig.splicer.repository import RepositoryLayout

LAYOUT = RepositoryLayout()
_md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_32)


@pytest.fixture(scope="module")
def vmlinux(kernel: KernelBuild) -> KernelImage:
    return KernelImage.load(kernel.vmlinux)


def follow_chain(p: SplicePlan) -> list[int]:
    """Addresses of the jmps executed from the point to the patch (checked as it goes)."""
    boards = {b.address: b.data for b in p.springboards}
    at, data, path = p.point, p.new_bytes, []
    while True:
        insn = next(_md.disasm(data, at, count=1))
        assert insn.mnemonic == "jmp"
        path.append(at)
        target = int(insn.op_str, 16)
        if insn.size == 5:
            assert target == p.patch_address
            return path
        assert insn.size == 2 and -128 <= target - (at + 2) <= 127
        at, data = target, boards[target]


@pytest.mark.parametrize("k", [1, 2, 3])
def test_sys_getpid_entry_forced_chain(vmlinux: KernelImage, k: int) -> None:
    """sys_getpid starts with a 5-byte mov: rel32 fits, yet a k-springboard chain is built on request."""
    code = disassemble_function(vmlinux, "sys_getpid")
    gaps = padding_gaps(vmlinux)
    assert code.instruction_at(code.start).size >= 5
    p = plan_splice(code, code.start, Mode.JMP, Policy.SINGLE, LAYOUT, 0, patch_kind=PatchKind.EMPTY,
                    springboard_space=gaps, springboards=k)
    assert len(p.springboards) == k and p.hops == k + 1
    assert p.new_bytes[0] == 0xEB and set(p.new_bytes[2:]) <= {0xCC}
    assert len(follow_chain(p)) == k + 1
    for board in p.springboards:
        assert any(g.start <= board.address and board.address + len(board.data) <= g.end for g in gaps)
        assert not any(o.address != board.address and o.address < board.address + len(board.data)
                       and board.address < o.address + len(o.data) for o in p.springboards)


def test_zero_springboards_is_a_direct_rel32(vmlinux: KernelImage) -> None:
    code = disassemble_function(vmlinux, "sys_getpid")
    p = plan_splice(code, code.start, Mode.JMP, Policy.SINGLE, LAYOUT, 0, springboards=0,
                    springboard_space=padding_gaps(vmlinux))
    assert p.hops == 1 and not p.springboards and p.new_bytes[0] == 0xE9


def test_exact_route_refuses_without_enough_padding(vmlinux: KernelImage) -> None:
    """Only the padding gaps right around sys_getpid: a long chain cannot be placed."""
    code = disassemble_function(vmlinux, "sys_getpid")
    near = [g for g in padding_gaps(vmlinux) if abs(g.start - code.start) <= 40]
    assert sb.find_route_exact(code.start, sb.free_ranges(near, []), len(near) + 1) is None
    with pytest.raises(SpliceRefused) as err:
        plan_splice(code, code.start, Mode.JMP, Policy.SINGLE, LAYOUT, 0, springboard_space=near,
                    springboards=len(near) + 1)
    assert err.value.reason == "no-springboard-route" and err.value.hint


def test_forced_chain_refused_in_trap_mode(vmlinux: KernelImage) -> None:
    code = disassemble_function(vmlinux, "sys_getpid")
    with pytest.raises(SpliceRefused) as err:
        plan_splice(code, code.start, Mode.TRAP, Policy.SINGLE, LAYOUT, 0, vector=0x81, springboards=1)
    assert err.value.reason == "bad-springboards"


def test_exact_routes_on_gcc_code(snippet_object: Path) -> None:  # noqa: F811
    """Every function entry of the gcc object: a route of exactly k hops has k distinct hops."""
    image = KernelImage.load(snippet_object)
    free = sb.free_ranges(padding_gaps(image), [])
    found = 0
    for sym in image.functions_in(".text"):
        for k in (1, 2):
            route = sb.find_route_exact(sym.address, free, k)
            if route is None:
                continue
            found += 1
            assert len(route) == k and route[-1].final and not any(h.final for h in route[:-1])
            assert len({h.address for h in route}) == k
    assert found, "gcc's padding gives at least one function entry a springboard route"


def test_call_patch_saves_everything(vmlinux: KernelImage) -> None:
    code = disassemble_function(vmlinux, "sys_getpid")
    target = LAYOUT.base + 0x20000
    p = plan_splice(code, code.start, Mode.JMP, Policy.SINGLE, LAYOUT, 0, patch_kind=PatchKind.CALL,
                    call_target=target)
    listing = [(i.mnemonic, i.op_str) for i in _md.disasm(p.patch_code, p.patch_address)]
    assert [m for m, _ in listing[:5]] == ["pushfd", "pushal", "call", "popal", "popfd"]
    assert int(listing[2][1], 16) == target
    with pytest.raises(SpliceRefused):
        plan_splice(code, code.start, Mode.JMP, Policy.SINGLE, LAYOUT, 0, patch_kind=PatchKind.CALL)
