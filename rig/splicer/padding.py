"""Free bytes in kernel text: the alignment padding gcc/gas leave between functions.

A gap is the range from one function's end (st_value+st_size) to the next symbol in the same
section. It only counts as free when every byte in it decodes as filler gas emits (nop forms,
``lea 0(%esi,%eiz),%esi``-style no-ops, ``mov %esi,%esi``, int3) and no branch anywhere in the
image targets it — so nothing ever executes it and a springboard can live there.
"""
from __future__ import annotations

import bisect
import functools

import capstone
from capstone import x86_const as x86

from rig.splicer.flow import image_flow_facts
from rig.splicer.image import KernelImage, PaddingGap

_MIN_GAP = 2  # a jmp rel8 springboard

_md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_32)
_md.detail = True


def is_filler(insn: capstone.CsInsn) -> bool:
    """True for the do-nothing instructions assemblers use as alignment padding."""
    if insn.mnemonic in ("nop", "int3"):
        return True
    ops = insn.operands
    if insn.mnemonic == "xchg" and len(ops) == 2 and ops[0].type == ops[1].type == x86.X86_OP_REG:
        return ops[0].reg == ops[1].reg
    if insn.mnemonic == "mov" and len(ops) == 2 and ops[0].type == ops[1].type == x86.X86_OP_REG:
        return ops[0].reg == ops[1].reg
    if insn.mnemonic == "lea" and len(ops) == 2 and ops[1].type == x86.X86_OP_MEM:
        mem = ops[1].mem
        return (mem.base == ops[0].reg and mem.disp == 0
                and mem.index in (0, x86.X86_REG_EIZ))
    return False


def is_padding(data: bytes, address: int) -> bool:
    covered = 0
    for insn in _md.disasm(data, address):
        if not is_filler(insn):
            return False
        covered += insn.size
    return covered == len(data)


@functools.cache  # pure, and asked for on every splice: one image's gaps never change
def padding_gaps(image: KernelImage, section: str = ".text") -> list[PaddingGap]:
    sec = image.section(section)
    targets = sorted(image_flow_facts(image).targets)
    in_section = sorted((s for s in image.symbols if s.section == section), key=lambda s: s.address)
    starts = [s.address for s in in_section]
    reach: list[int] = []  # reach[i]: furthest end of any symbol among in_section[:i+1]
    for sym in in_section:
        reach.append(max(sym.end, reach[-1] if reach else 0))
    gaps: dict[int, PaddingGap] = {}
    for func in image.functions_in(section):
        gap_start = func.end
        i = bisect.bisect_left(starts, gap_start)
        gap_end = starts[i] if i < len(starts) else sec.end
        if gap_end - gap_start < _MIN_GAP:
            continue
        if i > 0 and reach[i - 1] > gap_start:
            continue  # an enclosing or overlapping symbol claims these bytes
        t = bisect.bisect_left(targets, gap_start)
        if t < len(targets) and targets[t] < gap_end:
            continue  # something jumps here: not dead padding
        data = image.text_bytes(gap_start, gap_end - gap_start)
        if not is_padding(data, gap_start):
            continue
        gaps[gap_start] = PaddingGap(gap_start, gap_end - gap_start, data)  # aliases share an end
    return sorted(gaps.values(), key=lambda g: g.start)
