"""Code splicing (the paper's step 2) as a plan: which bytes go where, in which order.

Nothing here touches the guest. :func:`plan_splice` turns a decoded function and a point into a
:class:`SplicePlan` whose ``writes`` the I/O side applies in order (the instrumentation point
last) and whose ``undo`` restores the kernel text (the point first).
"""
from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field

import iced_x86 as ix

from rig.errors import Refused
from rig.splicer import idt
from rig.splicer import springboard as sb
from rig.splicer.analysis import FunctionCode, Instruction, decode
from rig.splicer.image import ByteRange, PaddingGap
from rig.splicer.memory import MemoryWrite
from rig.splicer.sections import freed_after_boot, why_not_spliceable
from rig.splicer.repository import (FREE_KEY, MAX_ORIGINAL, MAX_SPRINGBOARDS, PATCH_AREA_SIZE,  # noqa: I001
                                    PATCH_CODE_OFFSET, SLOT_RECORD_SIZE, VECTOR_STUB_OFFSET, Mode, Policy,
                                    RepositoryLayout, SlotRecord, SpringboardRecord, encode_slot,
                                    encode_table_entry, vector_stub_code)

TRAP_SIZE = 2       # int $n: CD nn
INT3_SIZE = 1       # int3: CC
REL32_SIZE = 5      # jmp rel32: E9 xx xx xx xx
FILLER = 0xCC       # window bytes after the branch: int3, so a stray jump there stops loudly


class PatchKind(enum.Enum):
    COUNTER = "counter"  # pushfd; inc dword [counter]; popfd; <displaced>; jmp back
    EMPTY = "empty"      # <displaced>; jmp back (for measuring the bare branch cost)
    CALL = "call"        # pushfd; pushad; call <call_target>; popad; popfd; <displaced>; jmp back
    # Splicing to a component (call_target = the component's function); both count hits first.
    REPLACE = "replace"  # jmp <call_target>: at a function entry it takes the caller's frame and
                         # returns to the caller; the old code is bypassed (no displaced copy)
    WRAP = "wrap"        # pushfd; pushad; push esp; call <call_target>; pop; popad; popfd;
                         # <displaced>; jmp back -- the target gets the saved frame (registers,
                         # flags, then the interrupted stack: return address and arguments)


_TARGETED = (PatchKind.CALL, PatchKind.REPLACE, PatchKind.WRAP)
_COUNTED = (PatchKind.COUNTER, PatchKind.REPLACE, PatchKind.WRAP)


class SpliceRefused(Refused):
    """A splice that cannot be made safely."""


@dataclass(frozen=True)
class Springboard:
    address: int
    data: bytes
    original: bytes


@dataclass(frozen=True)
class OwnVector:
    """A trap splice's own IDT vector: the vector alone says which patch (no table lookup).

    ``free_gate`` is the gate as the kernel left it (pointing at ``ignore_int``): expected before
    the splice, restored by its undo."""

    vector: int
    idt_base: int
    free_gate: bytes

    @property
    def gate_address(self) -> int:
        return self.idt_base + self.vector * idt.GATE_SIZE


@dataclass(frozen=True)
class SplicePlan:
    function: str
    point: int
    mode: Mode
    policy: Policy
    slot: int
    window: ByteRange                 # whole instructions replaced; resume address = window.end
    original: bytes                   # window bytes before
    new_bytes: bytes                  # window bytes after (branch + int3 filler)
    patch_address: int                # entry of the patch code
    patch_code: bytes
    counter_address: int | None
    springboards: tuple[Springboard, ...]
    hops: int                         # jumps executed from the point to the patch (trap: 0)
    trap_return: int | None           # EIP the handler looks up (point + 2, int3: point + 1); jmp: None
    writes: tuple[MemoryWrite, ...]   # apply in order; the point is last
    undo: tuple[MemoryWrite, ...]     # apply in order; the point is first
    before: str = ""
    after: str = ""
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def busy_ranges(self) -> list[ByteRange]:
        """Code no sleeping task may resume inside (after its first byte) when applying or undoing."""
        return [self.window]

    def summary(self) -> str:
        route = f", {self.hops} jmp(s), {len(self.springboards)} springboard(s)" if self.mode is Mode.JMP else ""
        return (f"{self.mode.name.lower()}/{self.policy.name.lower()} splice of {self.function} at "
                f"{self.point:#x}: window {self.window.length} byte(s){route}, patch at "
                f"{self.patch_address:#x} (slot {self.slot})")


def plan_splice(code: FunctionCode, point: int, mode: Mode, policy: Policy, layout: RepositoryLayout,
                slot: int, patch_kind: PatchKind = PatchKind.COUNTER, vector: int | None = None,
                springboard_space: Sequence[ByteRange] = (), active: Sequence[SlotRecord] = (),
                springboards: int | None = None, call_target: int | None = None,
                own_vector: OwnVector | None = None) -> SplicePlan:
    """Plan one splice. ``springboard_space``: free padding (``padding_gaps(image)``);
    ``active``: slot records already in the guest (to refuse overlaps and shared bytes).
    ``springboards`` (jmp mode): force a chain of exactly that many springboards (0: a direct
    jmp rel32 or nothing) even where a shorter route or a rel32 fits -- for measuring chains.
    ``call_target`` (PatchKind.CALL): the routine the patch calls with all registers saved.
    ``own_vector`` (trap mode): dispatch through a vector of the splice's own, whose gate points
    at a two-instruction stub in the patch area, instead of the shared vector's table lookup."""
    if own_vector is not None and mode is not Mode.TRAP:
        raise SpliceRefused("bad-own-vector", f"a vector of its own is for trap splices, not {mode.name.lower()}",
                            "use --mode trap with --dispatch vector")
    if mode is Mode.TRAP and vector is None and own_vector is None:
        raise SpliceRefused("no-vector", "a trap splice needs the IDT vector of the installed handler",
                            "install the repository first; it picks a free vector")
    if springboards is not None and (mode is not Mode.JMP or not 0 <= springboards <= MAX_SPRINGBOARDS):
        raise SpliceRefused("bad-springboards", f"springboards={springboards} with {mode.name.lower()} mode",
                            f"a forced chain needs jmp mode and 0..{MAX_SPRINGBOARDS} springboards")
    if (patch_kind in _TARGETED) != (call_target is not None):
        raise SpliceRefused("bad-call-target", f"PatchKind {patch_kind.value} and call_target go together "
                            "(call, replace and wrap need one; the others take none)", "pass both, or neither")
    if patch_kind is PatchKind.REPLACE and point != code.start:
        raise SpliceRefused("replace-not-entry", f"a replacing splice goes at {code.name}'s entry "
                            f"({code.start:#x}), not {point:#x}: the component takes over the caller's frame",
                            "splice at offset 0, or wrap instead")
    not_text = why_not_spliceable(code.symbol.section)
    if not_text is not None:
        reason = "init-text" if freed_after_boot(code.symbol.section) else "not-core-text"
        raise SpliceRefused(reason, f"{code.name} cannot be spliced: {not_text}",
                            "pick a function in the core text (.text); `nm vmlinux` shows where each lives")
    _check_not_spliced(code, point, slot, layout, active)
    if not code.is_boundary(point):
        raise SpliceRefused("not-boundary", f"{point:#x} is not the start of an instruction in {code.name}",
                            f"instruction starts near it: {_nearby(code, point)}")

    occupied = [ByteRange(b.address, len(b.original)) for rec in active if rec.in_use for b in rec.springboards]
    free = sb.free_ranges(springboard_space, occupied)

    route: list[sb.Hop] = []
    if mode is Mode.TRAP:
        window = _choose_window(code, point, TRAP_SIZE, policy)
        branch = bytes([0xCD, (own_vector.vector if own_vector else vector) & 0xFF])
    elif mode is Mode.INT3:
        window = _choose_window(code, point, INT3_SIZE, policy)
        branch = bytes([0xCC])
    else:
        window, route, branch = _jmp_window(code, point, policy, layout.patch_code(slot), free, springboards)

    _check_no_overlap(window, active)
    instructions = [i for i in code.instructions if window.start <= i.address < window.end]
    patch_address = layout.patch_code(slot)
    counter = layout.counter(slot) if patch_kind in _COUNTED else None
    patch_code = _build_patch(instructions, window.end, patch_address, counter, call_target, patch_kind)
    if len(patch_code) > PATCH_AREA_SIZE - PATCH_CODE_OFFSET:
        raise SpliceRefused("patch-too-large", f"the patch needs {len(patch_code)} bytes",
                            f"patch areas hold {PATCH_AREA_SIZE - PATCH_CODE_OFFSET}; splice a shorter window")

    original = b"".join(i.bytes for i in instructions)
    new_bytes = branch + bytes([FILLER]) * (window.length - len(branch))
    springboards = tuple(_encode_hops(route, springboard_space, patch_address))
    hops = 1 + len(springboards) if mode is Mode.JMP else 0
    record = SlotRecord(True, int(mode), int(policy), window.length, len(branch), hops, point, window.end,
                        patch_address, counter or 0, original,
                        tuple(SpringboardRecord(b.address, b.original) for b in springboards),
                        own_vector.vector if own_vector else 0)
    # The shared handlers look up the EIP the CPU saved: the byte after the trapping instruction.
    trap_return = point + len(branch) if mode in (Mode.TRAP, Mode.INT3) and own_vector is None else None
    writes, undo = _writes(layout, slot, record, patch_code, counter, springboards, new_bytes, trap_return,
                           own_vector)
    after = [*decode(new_bytes, point), *decode(patch_code, patch_address)]
    for board in springboards:
        after += decode(board.data, board.address)
    return SplicePlan(code.name, point, mode, policy, slot, window, original, new_bytes, patch_address,
                      patch_code, counter, springboards, hops, trap_return, tuple(writes), tuple(undo),
                      before="\n".join(i.text() for i in instructions),
                      after="\n".join(i.text() for i in after))


def _writes(layout: RepositoryLayout, slot: int, record: SlotRecord, patch_code: bytes, counter: int | None,
            springboards: Sequence[Springboard], new_bytes: bytes,
            trap_return: int | None,
            own_vector: OwnVector | None = None) -> tuple[list[MemoryWrite], list[MemoryWrite]]:
    """Apply order: everything the branch leads to first, the branch itself last; undo reversed."""
    area = layout.patch_area(slot)
    head = bytearray(PATCH_CODE_OFFSET)  # the hit counter starts at 0
    if own_vector is not None:
        stub = vector_stub_code(layout, slot)
        head[VECTOR_STUB_OFFSET:VECTOR_STUB_OFFSET + len(stub)] = stub
    patch = bytes(head) + patch_code
    writes = [MemoryWrite(area, patch, "patch")]
    writes += [MemoryWrite(b.address, b.data, "springboard", expect=b.original) for b in springboards]
    # Every splice owns its slot's table entry, dispatching through it or not (jmp, own vector:
    # FREE_KEY), so nothing a slot held before can be matched by the handlers.
    key = (trap_return, record.patch_address) if trap_return is not None else (FREE_KEY, 0)
    writes.append(MemoryWrite(layout.table_entry(slot), encode_table_entry(*key), "trap-table"))
    writes.append(MemoryWrite(layout.slot_record(slot), encode_slot(record), "slot"))
    writes.append(MemoryWrite(layout.in_use_flag(slot), b"\x01", "slot-flag"))
    if own_vector is not None:
        gate = idt.make_trap_gate(layout.vector_stub(slot)).encode()
        writes.append(MemoryWrite(own_vector.gate_address, gate, "idt-gate", expect=own_vector.free_gate))
    writes.append(MemoryWrite(record.point, new_bytes, "point", expect=record.original))
    return writes, undo_writes(layout, slot, record, expect_new=new_bytes, own_vector=own_vector)


def undo_writes(layout: RepositoryLayout, slot: int, record: SlotRecord,
                expect_new: bytes | None = None, own_vector: OwnVector | None = None) -> list[MemoryWrite]:
    """Undo from a slot record alone (as read back from the guest): point first.

    A splice with a vector of its own (``record.vector``) needs ``own_vector`` to give the gate
    back (the IDT base and the free gate to restore).

    The patch area is left as it is: a task preempted inside it (returning from a displaced call)
    still finishes correctly; reuse the slot only after a busy check over the patch area.
    """
    undo = [MemoryWrite(record.point, record.original, "point", expect=expect_new)]
    undo += [MemoryWrite(b.address, b.original, "springboard") for b in record.springboards]
    undo.append(MemoryWrite(layout.table_entry(slot), encode_table_entry(FREE_KEY, 0), "trap-table"))
    undo.append(MemoryWrite(layout.slot_record(slot), bytes(SLOT_RECORD_SIZE), "slot"))
    undo.append(MemoryWrite(layout.in_use_flag(slot), b"\x00", "slot-flag"))
    if record.vector:
        if own_vector is None or own_vector.vector != record.vector:
            raise ValueError(f"slot {slot} has vector {record.vector:#x} of its own: pass its OwnVector to undo it")
        undo.append(MemoryWrite(own_vector.gate_address, own_vector.free_gate, "idt-gate"))
    return undo


# ---- windows ----------------------------------------------------------------------------------
def _choose_window(code: FunctionCode, point: int, need: int, policy: Policy) -> ByteRange:
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


def _jmp_window(code: FunctionCode, point: int, policy: Policy, patch: int, free: Sequence[ByteRange],
                springboards: int | None = None) -> tuple[ByteRange, list[sb.Hop], bytes]:
    if springboards == 0:
        window = _choose_window(code, point, REL32_SIZE, policy)
        return window, [], _jmp(point, patch, REL32_SIZE)
    if springboards is not None:
        window = _choose_window(code, point, sb.REL8_SIZE, policy)
        route = sb.find_route_exact(point, free, springboards)
        if route is None:
            raise SpliceRefused("no-springboard-route", f"no chain of exactly {springboards} springboard(s) "
                                f"through free padding is reachable from {point:#x}",
                                "ask for fewer springboards, or pick another point")
        return window, route, _jmp(point, route[0].address, sb.REL8_SIZE)
    try:
        window = _choose_window(code, point, REL32_SIZE, policy)
        return window, [], _jmp(point, patch, REL32_SIZE)
    except SpliceRefused as wide:
        if wide.reason not in ("too-short", "target-inside", "crosses-end", "indirect-jumps"):
            raise
        first_refusal = wide
    if policy is Policy.SINGLE and code.instruction_at(point).size < 2:
        raise first_refusal
    window = _choose_window(code, point, sb.REL8_SIZE, policy)
    route = sb.find_route(point, free, MAX_SPRINGBOARDS)
    if route is None:
        raise SpliceRefused("no-springboard-route", f"{REL32_SIZE} bytes cannot be taken at {point:#x} "
                            f"({first_refusal.message}) and no chain of jmp rel8 through free padding "
                            f"within {MAX_SPRINGBOARDS} hops reaches a 5-byte gap",
                            "use --mode trap, which needs only 2 bytes")
    return window, route, _jmp(point, route[0].address, sb.REL8_SIZE)


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
    before = [i for i in code.instructions if i.end == taken[0].address]
    for insn in [*before, *taken]:
        if _shadows(insn) and not insn.is_data:
            where = "right before the point" if insn in before else "inside the window"
            raise SpliceRefused("interrupt-shadow", f"{insn.mnemonic} {insn.op_str}".strip() +
                                f" at {insn.address:#x} ({where}) holds off interrupts for exactly one "
                                "instruction; a splice here would move that instruction out of its shadow "
                                "and a wakeup could be lost",
                                "pick a point at least one instruction away from it")


def _check_not_spliced(code: FunctionCode, point: int, slot: int, layout: RepositoryLayout,
                       active: Sequence[SlotRecord]) -> None:
    for index, rec in enumerate(active):
        if not rec.in_use:
            continue
        if rec.point <= point < rec.point + max(rec.window_length, 1):
            raise SpliceRefused("already-spliced", f"{point:#x} lies in the window of an active splice "
                                f"at {rec.point:#x}", "undo that splice first")
        if rec.patch_address == layout.patch_code(slot):
            raise SpliceRefused("slot-in-use", f"repository slot {slot} is in use",
                                "take layout.free_slot(...) of the in-use slots")


def _check_no_overlap(window: ByteRange, active: Sequence[SlotRecord]) -> None:
    """A window may not take bytes another live splice has rewritten (the point's own window is
    refused earlier as already spliced; this catches a window that runs into a later one)."""
    for rec in active:
        theirs = ByteRange(rec.point, max(rec.window_length, 1))
        if rec.in_use and window.overlaps(theirs):
            raise SpliceRefused("overlaps-splice", f"the {window.length}-byte window at {window.start:#x} runs into "
                                f"the live splice at {rec.point:#x} ({theirs.length} byte(s))",
                                f"pick a point whose window ends by {rec.point:#x}, use a shorter branch "
                                "(--mode trap or int3, --policy single), or unsplice that one first")


def _nearby(code: FunctionCode, point: int) -> str:
    near = [i.address for i in code.instructions if abs(i.address - point) <= 8 and not i.is_data]
    return ", ".join(hex(a) for a in near) or "none"


# ---- encoding ---------------------------------------------------------------------------------
def _jmp(at: int, target: int, size: int) -> bytes:
    op = ix.Code.JMP_REL32_32 if size == REL32_SIZE else ix.Code.JMP_REL8_32
    encoder = ix.Encoder(32)
    try:
        encoder.encode(ix.Instruction.create_branch(op, target), at)
    except ValueError as exc:
        raise SpliceRefused("out-of-range", f"jmp from {at:#x} cannot reach {target:#x}: {exc}") from exc
    data = encoder.take_buffer()
    assert len(data) == size
    return data


def _build_patch(instructions: list[Instruction], resume: int, address: int, counter: int | None,
                 call_target: int | None = None, kind: PatchKind = PatchKind.COUNTER) -> bytes:
    """Probe, then the displaced instructions re-encoded for the patch address, then jmp back.

    iced's BlockEncoder re-targets relative branches/calls to their original absolute targets and
    widens short jcc/jmp (loop/jecxz become a short jump over a near jmp). Each displaced
    instruction gets a private label as ip so a branch to the window start is not bound to its
    own copy but goes back to the original address.
    """
    body: list[ix.Instruction] = []
    if counter is not None:
        body += [
            ix.Instruction.create(ix.Code.PUSHFD),  # flags may be live mid-function
            ix.Instruction.create_mem(ix.Code.INC_RM32, ix.MemoryOperand(displ=counter, displ_size=4)),
            ix.Instruction.create(ix.Code.POPFD),
        ]
    if kind is PatchKind.REPLACE and call_target is not None:  # bypass: no displaced copy, no way back
        instructions = []
        body.append(ix.Instruction.create_branch(ix.Code.JMP_REL32_32, call_target))
    elif call_target is not None:  # the routine may clobber anything: save all (flags may be live)
        frame_arg = kind is PatchKind.WRAP  # cdecl argument: esp = the pushad frame
        body += [
            ix.Instruction.create(ix.Code.PUSHFD),
            ix.Instruction.create(ix.Code.PUSHAD),
            *([ix.Instruction.create_reg(ix.Code.PUSH_R32, ix.Register.ESP)] if frame_arg else []),
            ix.Instruction.create_branch(ix.Code.CALL_REL32_32, call_target),
            *([ix.Instruction.create_reg_i32(ix.Code.ADD_RM32_IMM8, ix.Register.ESP, 4)] if frame_arg else []),
            ix.Instruction.create(ix.Code.POPAD),
            ix.Instruction.create(ix.Code.POPFD),
        ]
    for label, insn in enumerate(instructions, start=1):
        decoded = ix.Decoder(32, insn.bytes, ip=insn.address).decode()
        if decoded.code == ix.Code.INVALID:
            raise SpliceRefused("unrelocatable", f"iced-x86 cannot decode {insn.text()}")
        decoded.ip = label
        body.append(decoded)
    if kind is not PatchKind.REPLACE:
        body.append(ix.Instruction.create_branch(ix.Code.JMP_REL32_32, resume))
    encoder = ix.BlockEncoder(32)
    encoder.add_many(body)
    try:
        return encoder.encode(address)
    except ValueError as exc:
        raise SpliceRefused("unrelocatable", f"the displaced instructions cannot be re-encoded: {exc}") from exc


def _encode_hops(route: list[sb.Hop], space: Sequence[ByteRange], patch: int) -> list[Springboard]:
    boards = []
    for index, hop in enumerate(route):
        if hop.final:
            data = _jmp(hop.address, patch, REL32_SIZE)
        else:
            data = _jmp(hop.address, route[index + 1].address, sb.REL8_SIZE)
        boards.append(Springboard(hop.address, data, _original_padding(space, hop.address, len(data))))
    return boards


def _original_padding(space: Sequence[ByteRange], address: int, length: int) -> bytes:
    for gap in space:
        if isinstance(gap, PaddingGap) and gap.start <= address and address + length <= gap.end:
            return gap.bytes_at(address, length)
    raise SpliceRefused("no-springboard-route", f"springboard at {address:#x} is not in known padding",
                        "pass padding_gaps(image) as springboard_space")
