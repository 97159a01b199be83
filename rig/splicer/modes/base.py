"""What every splice mode declares: the branch it writes at the point, the dispatch that leads
from that branch to the patch (table entry, gate, stub), how that dispatch is undone, and which
code must be idle before the splice goes."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from rig.splicer import springboard as sb
from rig.splicer.analysis import FunctionCode
from rig.splicer.image import ByteRange
from rig.splicer.kinds import Mode, Policy
from rig.splicer.memory import MemoryWrite
from rig.splicer.repository import PATCH_CODE_OFFSET, RepositoryLayout, SlotRecord

FILLER = 0xCC  # window bytes after the branch: int3, so a stray jump there stops loudly


@dataclass(frozen=True)
class BranchRequest:
    """Where a branch goes and what it may use."""

    code: FunctionCode
    point: int
    policy: Policy
    patch: int                               # the patch code's entry
    free_padding: Sequence[ByteRange] = ()   # for springboards (jmp)
    springboards: int | None = None          # jmp: force a chain of exactly this many (benchmarks)


@dataclass(frozen=True)
class Branch:
    window: ByteRange                       # whole instructions replaced; resume address = window.end
    data: bytes                             # the branch itself (the window's first bytes)
    route: tuple[sb.Hop, ...] = field(default_factory=tuple)  # jmp rel8 hops through padding

    @property
    def new_bytes(self) -> bytes:
        return self.data + bytes([FILLER]) * (self.window.length - len(self.data))


class SpliceMode:
    """One way to get from the point to the patch. Subclasses set ``mode`` and ``name`` and give
    :meth:`branch`; the dispatch hooks default to "none" (the branch itself reaches the patch)."""

    mode: Mode
    name: str
    recorded_vector = 0  # the slot record's "vector of its own" (0: none)

    def branch(self, request: BranchRequest) -> Branch:
        raise NotImplementedError

    def trap_return(self, point: int, branch: Branch) -> int | None:
        """The EIP the shared handlers look up (the byte after a trapping instruction); None when
        the mode does not dispatch through the trap table."""
        return None

    def patch_head(self, layout: RepositoryLayout, slot: int) -> bytes:
        """The patch area's first PATCH_CODE_OFFSET bytes: the hit counter (0), and whatever the
        mode keeps between it and the code."""
        return bytes(PATCH_CODE_OFFSET)

    def dispatch_writes(self, layout: RepositoryLayout, slot: int) -> list[MemoryWrite]:
        """Writes after the repository side and before the point (a gate of the splice's own)."""
        return []

    def dispatch_undo(self, layout: RepositoryLayout, slot: int, record: SlotRecord) -> list[MemoryWrite]:
        return []

    def dispatch_code(self, layout: RepositoryLayout, slot: int) -> list[ByteRange]:
        """Code that still leads into this splice's patch besides the point: no vCPU or task may be
        anywhere in it when the splice goes."""
        return []

    def vector(self, record: SlotRecord | None = None) -> int | None:
        """The IDT vector the branch raises, if it traps."""
        return None
