"""Code splicing (the paper's step 2) as a plan: which bytes go where, in which order.

Nothing here touches the guest. :func:`plan_splice` turns a decoded function and a point into a
:class:`SplicePlan` whose ``writes`` the I/O side applies in order (the instrumentation point
last) and whose ``undo`` restores the kernel text (the point first). What is particular to a
mode (its branch, its dispatch to the patch) lives in :mod:`rig.splicer.modes`; how the bytes
at the point are chosen in :mod:`rig.splicer.window`; :func:`plan_auto` tries the window
policies in turn (:data:`TACTICS`).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property

import iced_x86 as ix

from rig.splicer import dispatch, modes
from rig.splicer import springboard as sb
from rig.splicer.analysis import FunctionCode, Instruction, decode
from rig.splicer.image import ByteRange
from rig.splicer.kinds import Mode, PatchKind, Policy, SpliceRefused
from rig.splicer.live import LiveSplices
from rig.splicer.memory import MemoryWrite
from rig.splicer.modes import BranchRequest, OwnVector, SpliceMode
from rig.splicer.modes.jmp import Springboard, encode_hops
from rig.splicer.repository import (MAX_SPRINGBOARDS, PATCH_AREA_SIZE, PATCH_CODE_OFFSET, SLOT_RECORD_SIZE,
                                    RepositoryLayout, SlotRecord, SpringboardRecord, encode_slot)
from rig.splicer.sections import freed_after_boot, why_not_spliceable

__all__ = ["SplicePlan", "TACTICS", "Tactic", "plan_auto", "plan_splice", "undo_writes"]

_TARGETED = (PatchKind.CALL, PatchKind.REPLACE, PatchKind.WRAP)
_COUNTED = (PatchKind.COUNTER, PatchKind.REPLACE, PatchKind.WRAP)


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
    record: SlotRecord | None = None  # what the slot will hold (planning the next splice of a batch needs it)
    before: str = ""
    notes: tuple[str, ...] = field(default_factory=tuple)

    @cached_property
    def after(self) -> str:
        """The branch, the patch and the springboards disassembled (on demand: decoding them is
        a good part of planning, and a batch of a thousand plans is seldom shown)."""
        after = [*decode(self.new_bytes, self.point), *decode(self.patch_code, self.patch_address)]
        for board in self.springboards:
            after += decode(board.data, board.address)
        return "\n".join(i.text() for i in after)

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
                springboard_space: Sequence[ByteRange] = (), active: Sequence[SlotRecord] | LiveSplices = (),
                springboards: int | None = None, call_target: int | None = None,
                own_vector: OwnVector | None = None) -> SplicePlan:
    """Plan one splice. ``springboard_space``: free padding (``padding_gaps(image)``);
    ``active``: slot records already in the guest (to refuse overlaps and shared bytes), or a
    :class:`LiveSplices` of them (a batch builds one and adds each plan's record: no rescan).
    ``vector``: the repository's shared trap vector. ``springboards`` (jmp mode): force a chain
    of exactly that many springboards (0: a direct jmp rel32 or nothing) even where a shorter
    route or a rel32 fits -- for measuring chains. ``call_target`` (PatchKind.CALL): the routine
    the patch calls with all registers saved. ``own_vector`` (trap mode): dispatch through a
    vector of the splice's own instead of the shared vector's table lookup."""
    strategy = modes.select(mode, shared_vector=vector, own_vector=own_vector)
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
    live = active if isinstance(active, LiveSplices) else LiveSplices(active)
    _check_not_spliced(code, point, slot, layout, live)
    if not code.is_boundary(point):
        raise SpliceRefused("not-boundary", f"{point:#x} is not the start of an instruction in {code.name}",
                            f"instruction starts near it: {_nearby(code, point)}")

    patch_address = layout.patch_code(slot)
    free = sb.free_ranges(springboard_space, live.springboards) if mode is Mode.JMP else ()  # only jmps use padding
    branch = strategy.branch(BranchRequest(code, point, policy, patch_address, free, springboards))
    window = branch.window
    _check_no_overlap(window, live)
    instructions = code.instructions_in(window.start, window.end)
    counter = layout.counter(slot) if patch_kind in _COUNTED else None
    patch_code = _build_patch(instructions, window.end, patch_address, counter, call_target, patch_kind)
    if len(patch_code) > PATCH_AREA_SIZE - PATCH_CODE_OFFSET:
        raise SpliceRefused("patch-too-large", f"the patch needs {len(patch_code)} bytes",
                            f"patch areas hold {PATCH_AREA_SIZE - PATCH_CODE_OFFSET}; splice a shorter window")

    original = b"".join(i.bytes for i in instructions)
    boards = tuple(encode_hops(branch.route, springboard_space, patch_address))
    hops = 1 + len(boards) if mode is Mode.JMP else 0
    key = strategy.trap_return(point, branch)
    bucket = dispatch.place(key, live.buckets) if key is not None else dispatch.NO_BUCKET
    record = SlotRecord(True, int(mode), int(policy), window.length, len(branch.data), hops, point, window.end,
                        patch_address, counter or 0, original,
                        tuple(SpringboardRecord(b.address, b.original) for b in boards), strategy.recorded_vector,
                        bucket)
    writes = _writes(strategy, layout, slot, record, branch, patch_code, boards, key)
    return SplicePlan(code.name, point, mode, policy, slot, window, original, branch.new_bytes, patch_address,
                      patch_code, counter, boards, hops, strategy.trap_return(point, branch), tuple(writes),
                      tuple(_undo(strategy, layout, slot, record, expect_new=branch.new_bytes)), record,
                      before="\n".join(i.text() for i in instructions))


# ---- the auto policy: tactics tried in turn --------------------------------------------------
@dataclass(frozen=True)
class Tactic:
    """One way to choose the window; a refusal named in ``gives_way_on`` lets the next tactic try."""

    name: str
    policy: Policy
    gives_way_on: frozenset[str] = frozenset()


# The paper's single-instruction splice where the instruction at the point is long enough for the
# branch, else whole instructions displaced (E9Patch's tactics are the model: cheapest first).
TACTICS: tuple[Tactic, ...] = (
    Tactic("single instruction", Policy.SINGLE, frozenset({"too-short"})),
    Tactic("displace whole instructions", Policy.DISPLACE),
)


def plan_auto(code: FunctionCode, point: int, mode: Mode, layout: RepositoryLayout, slot: int,
              tactics: Sequence[Tactic] = TACTICS, **options: object) -> SplicePlan:
    """:func:`plan_splice` with each tactic's policy in turn (``options``: plan_splice's others)."""
    for index, tactic in enumerate(tactics):
        try:
            return plan_splice(code, point, mode, tactic.policy, layout, slot, **options)  # type: ignore[arg-type]
        except SpliceRefused as refused:
            if refused.reason not in tactic.gives_way_on or index == len(tactics) - 1:
                raise
    raise SpliceRefused("no-tactic", "no tactic was given", "pass at least one tactic")


# ---- writes and undo ----------------------------------------------------------------------------
def _writes(strategy: SpliceMode, layout: RepositoryLayout, slot: int, record: SlotRecord, branch: modes.Branch,
            patch_code: bytes, boards: Sequence[Springboard], key: int | None) -> list[MemoryWrite]:
    """Apply order: everything the branch leads to first, the branch itself last."""
    writes = [MemoryWrite(layout.patch_area(slot), strategy.patch_head(layout, slot) + patch_code, "patch")]
    writes += [MemoryWrite(b.address, b.data, "springboard", expect=b.original) for b in boards]
    if key is not None:  # dispatched by the shared handlers: the bucket goes live before the point
        writes.append(MemoryWrite(layout.bucket(record.bucket), dispatch.encode_entry(key, record.patch_address),
                                  "dispatch"))
    writes.append(MemoryWrite(layout.slot_record(slot), encode_slot(record), "slot"))
    writes.append(MemoryWrite(layout.in_use_flag(slot), b"\x01", "slot-flag"))
    writes += strategy.dispatch_writes(layout, slot)
    writes.append(MemoryWrite(record.point, branch.new_bytes, "point", expect=record.original))
    return writes


def undo_writes(layout: RepositoryLayout, slot: int, record: SlotRecord,
                expect_new: bytes | None = None, own_vector: OwnVector | None = None) -> list[MemoryWrite]:
    """Undo from a slot record alone (as read back from the guest): point first.

    A splice with a vector of its own (``record.vector``) needs ``own_vector`` to give the gate
    back (the IDT base and the free gate to restore).

    The patch area is left as it is: a task preempted inside it (returning from a displaced call)
    still finishes correctly; reuse the slot only after a busy check over the patch area.
    """
    return _undo(modes.of_record(record, own_vector=own_vector), layout, slot, record, expect_new)


def _undo(strategy: SpliceMode, layout: RepositoryLayout, slot: int, record: SlotRecord,
          expect_new: bytes | None = None) -> list[MemoryWrite]:
    undo = [MemoryWrite(record.point, record.original, "point", expect=expect_new)]
    undo += [MemoryWrite(b.address, b.original, "springboard") for b in record.springboards]
    if record.bucket != dispatch.NO_BUCKET:  # released, not emptied: later keys' probes walk past it
        undo.append(MemoryWrite(layout.bucket(record.bucket), dispatch.encode_entry(dispatch.FREE, 0), "dispatch"))
    undo.append(MemoryWrite(layout.slot_record(slot), bytes(SLOT_RECORD_SIZE), "slot"))
    undo.append(MemoryWrite(layout.in_use_flag(slot), b"\x00", "slot-flag"))
    return undo + strategy.dispatch_undo(layout, slot, record)


# ---- checks -------------------------------------------------------------------------------------
def _check_not_spliced(code: FunctionCode, point: int, slot: int, layout: RepositoryLayout,
                       live: LiveSplices) -> None:
    """The point in no live window, the slot's patch area no live splice's; where records break
    both rules, the first record given decides (its window first), as a scan of them would."""
    holder = live.window_holding(point)
    owner = live.patch_owner(layout.patch_code(slot))
    if holder is not None and (owner is None or holder[0] <= owner[0]):
        raise SpliceRefused("already-spliced", f"{point:#x} lies in the window of an active splice "
                            f"at {holder[1].point:#x}", "undo that splice first")
    if owner is not None:
        raise SpliceRefused("slot-in-use", f"repository slot {slot} is in use",
                            "take layout.free_slot(...) of the in-use slots")


def _check_no_overlap(window: ByteRange, live: LiveSplices) -> None:
    """A window may not take bytes another live splice has rewritten (the point's own window is
    refused earlier as already spliced; this catches a window that runs into a later one)."""
    found = live.window_overlapping(window)
    if found is not None:
        rec = found[1]
        theirs = ByteRange(rec.point, max(rec.window_length, 1))
        raise SpliceRefused("overlaps-splice", f"the {window.length}-byte window at {window.start:#x} runs into "
                            f"the live splice at {rec.point:#x} ({theirs.length} byte(s))",
                            f"pick a point whose window ends by {rec.point:#x}, use a shorter branch "
                            "(--mode trap or int3, --policy single), or unsplice that one first")


def _nearby(code: FunctionCode, point: int) -> str:
    near = [i.address for i in code.instructions if abs(i.address - point) <= 8 and not i.is_data]
    return ", ".join(hex(a) for a in near) or "none"


# ---- the patch ---------------------------------------------------------------------------------
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
