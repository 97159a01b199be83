"""Whole-image control-flow facts: every direct branch target and every exception-table site.

A splice window must not contain a place that code elsewhere jumps to. In a 2.4 kernel that
"elsewhere" is not only the function itself: spinlock slow paths in ``.text.lock`` and user-copy
fixups in ``.fixup`` jump back into the middle of functions, and ``__ex_table`` names faulting
instructions by address (a relocated copy would no longer be found by the fault handler).
A linear sweep of every executable section with iced-x86 finds these; a bogus decode can only
add targets, which makes the checks stricter, never looser.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

import iced_x86

from rig.splicer.image import KernelImage

_BRANCH_KINDS = {
    iced_x86.FlowControl.UNCONDITIONAL_BRANCH,
    iced_x86.FlowControl.CONDITIONAL_BRANCH,
    iced_x86.FlowControl.CALL,
}


@dataclass(frozen=True)
class FlowFacts:
    targets: frozenset[int]          # all direct jmp/jcc/call/loop targets, from any section
    exception_sites: frozenset[int]  # faulting instruction addresses from __ex_table
    fixups: frozenset[int]           # __ex_table fixup addresses (entered by the fault handler)


def image_flow_facts(image: KernelImage) -> FlowFacts:
    cached = getattr(image, "_flow_facts", None)
    if cached is not None:
        return cached
    targets: set[int] = set()
    for sec in image.sections.values():
        if not sec.executable or not sec.data:
            continue
        decoder = iced_x86.Decoder(32, sec.data, ip=sec.address)
        for instr in decoder:
            if instr.flow_control in _BRANCH_KINDS and instr.op0_kind in (
                    iced_x86.OpKind.NEAR_BRANCH32, iced_x86.OpKind.NEAR_BRANCH16):
                targets.add(instr.near_branch_target)
    sites: set[int] = set()
    fixups: set[int] = set()
    table = image.sections.get("__ex_table")
    if table is not None and table.data:
        for insn, fixup in struct.iter_unpack("<II", table.data[: len(table.data) // 8 * 8]):
            sites.add(insn)
            fixups.add(fixup)
    facts = FlowFacts(frozenset(targets), frozenset(sites), frozenset(fixups))
    image._flow_facts = facts  # type: ignore[attr-defined]  # one sweep per image
    return facts
