"""trap with a vector of its own: ``int $n`` on a free IDT vector whose DPL-0 gate points at a
two-instruction stub in the splice's patch area (``mov dword [esp], patch; iret``): the vector
alone says which patch, no table lookup. The gate goes back to ``ignore_int`` on unsplice."""
from __future__ import annotations

from dataclasses import dataclass

from rig.splicer import idt
from rig.splicer.image import ByteRange
from rig.splicer.kinds import Mode
from rig.splicer.memory import MemoryWrite
from rig.splicer.modes.base import Branch, BranchRequest, SpliceMode
from rig.splicer.modes.trap import TRAP_SIZE
from rig.splicer.repository import (PATCH_CODE_OFFSET, VECTOR_STUB_OFFSET, RepositoryLayout, SlotRecord,
                                    vector_stub_code)
from rig.splicer.window import choose_window


@dataclass(frozen=True)
class OwnVector:
    """A trap splice's own IDT vector. ``free_gate`` is the gate as the kernel left it (pointing
    at ``ignore_int``): expected before the splice, restored by its undo."""

    vector: int
    idt_base: int
    free_gate: bytes

    @property
    def gate_address(self) -> int:
        return self.idt_base + self.vector * idt.GATE_SIZE


class TrapOwnVector(SpliceMode):
    mode = Mode.TRAP
    name = "trap-own-vector"

    def __init__(self, own: OwnVector) -> None:
        self.own = own
        self.recorded_vector = own.vector

    def branch(self, request: BranchRequest) -> Branch:
        window = choose_window(request.code, request.point, TRAP_SIZE, request.policy)
        return Branch(window, bytes([0xCD, self.own.vector & 0xFF]))

    def patch_head(self, layout: RepositoryLayout, slot: int) -> bytes:
        head = bytearray(PATCH_CODE_OFFSET)  # the hit counter (0), then the stub the gate points at
        stub = vector_stub_code(layout, slot)
        head[VECTOR_STUB_OFFSET:VECTOR_STUB_OFFSET + len(stub)] = stub
        return bytes(head)

    def dispatch_writes(self, layout: RepositoryLayout, slot: int) -> list[MemoryWrite]:
        gate = idt.make_trap_gate(layout.vector_stub(slot)).encode()
        return [MemoryWrite(self.own.gate_address, gate, "idt-gate", expect=self.own.free_gate)]

    def dispatch_undo(self, layout: RepositoryLayout, slot: int, record: SlotRecord) -> list[MemoryWrite]:
        if self.own.vector != record.vector:
            raise ValueError(f"slot {slot} has vector {record.vector:#x}, not {self.own.vector:#x}")
        return [MemoryWrite(self.own.gate_address, self.own.free_gate, "idt-gate")]

    def dispatch_code(self, layout: RepositoryLayout, slot: int) -> list[ByteRange]:
        return [ByteRange(layout.vector_stub(slot), PATCH_CODE_OFFSET - VECTOR_STUB_OFFSET)]

    def vector(self, record: SlotRecord | None = None) -> int | None:
        return self.own.vector
