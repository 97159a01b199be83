"""int3: the 1-byte ``int3`` (0xCC), which fits even a 1-byte instruction such as
``tcp_sync_mss``'s ``push esi``. Vector 3 stays the kernel's own DPL-3 gate (debuggers use it
from user mode); only its handler offset is re-pointed, with the first int3 splice, at the
repository's stub, which hands user-mode and unknown int3s to the kernel's entry and sends the
rig's through the trap table; the last int3 unsplice points it back."""
from __future__ import annotations

import dataclasses

from rig.errors import RigError
from rig.splicer import idt
from rig.splicer.image import ByteRange
from rig.splicer.kinds import Mode
from rig.splicer.memory import MemoryWrite
from rig.splicer.modes.base import Branch, BranchRequest, SpliceMode
from rig.splicer.repository import HANDLER_MAX, RepositoryLayout, SlotRecord
from rig.splicer.window import choose_window

INT3_SIZE = 1       # int3: CC
VECTOR = 3


class Int3(SpliceMode):
    mode = Mode.INT3
    name = "int3"

    def branch(self, request: BranchRequest) -> Branch:
        window = choose_window(request.code, request.point, INT3_SIZE, request.policy)
        return Branch(window, b"\xcc")

    def trap_return(self, point: int, branch: Branch) -> int | None:
        return point + len(branch.data)

    def dispatch_code(self, layout: RepositoryLayout, slot: int) -> list[ByteRange]:
        return [ByteRange(layout.handler, HANDLER_MAX)]  # the int3 stub shares the handler region

    def vector(self, record: SlotRecord | None = None) -> int | None:
        return VECTOR


def vector3_writes(gate_now: bytes, gate_address: int, kernel_entry: int, rig_stub: int,
                   to_rig: bool) -> list[MemoryWrite]:
    """Re-point vector 3 at the rig's stub (or back at the kernel's entry); [] if it is so already.
    Only the handler offset changes: the gate keeps 2.4's type and DPL 3."""
    gate = idt.decode_gate(gate_now)
    want, other = (rig_stub, kernel_entry) if to_rig else (kernel_entry, rig_stub)
    if gate.offset == want:
        return []
    if gate.offset != other:
        raise RigError(f"IDT vector 3 points at {gate.offset:#x}, neither the kernel's int3 entry "
                       f"({kernel_entry:#x}) nor the rig's stub ({rig_stub:#x})",
                       hint="something else changed the IDT; reboot the guest (invoke halt; invoke boot)")
    moved = dataclasses.replace(gate, offset=want).encode()
    return [MemoryWrite(gate_address, moved, "int3-gate", expect=gate_now)]
