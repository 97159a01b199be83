"""trap: ``int $n`` (2 bytes) on the repository's shared vector, the paper's way: a DPL-0
interrupt gate to the handler, which looks the saved EIP up in the trap table and ``iret``s into
the patch."""
from __future__ import annotations

from rig.splicer.image import ByteRange
from rig.splicer.kinds import Mode
from rig.splicer.modes.base import Branch, BranchRequest, SpliceMode
from rig.splicer.repository import HANDLER_MAX, RepositoryLayout, SlotRecord
from rig.splicer.window import choose_window

TRAP_SIZE = 2       # int $n: CD nn


class TrapShared(SpliceMode):
    mode = Mode.TRAP
    name = "trap"

    def __init__(self, vector: int) -> None:
        self.shared_vector = vector

    def branch(self, request: BranchRequest) -> Branch:
        window = choose_window(request.code, request.point, TRAP_SIZE, request.policy)
        return Branch(window, bytes([0xCD, self.shared_vector & 0xFF]))

    def trap_return(self, point: int, branch: Branch) -> int | None:
        return point + len(branch.data)  # the EIP the CPU saves: the byte after the int

    def dispatch_code(self, layout: RepositoryLayout, slot: int) -> list[ByteRange]:
        # A vCPU inside the shared handlers holds this splice's saved EIP, about to be looked up.
        return [ByteRange(layout.handler, HANDLER_MAX)]

    def vector(self, record: SlotRecord | None = None) -> int | None:
        return self.shared_vector
