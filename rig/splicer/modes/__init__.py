"""Splice modes as strategies: one module per mode (see :mod:`.base` for what each declares).

A new mode is one module with a :class:`~rig.splicer.modes.base.SpliceMode` subclass, chosen in
:func:`select` (for a new splice) and :func:`of_record` (for a live one read back from the guest).
"""
from __future__ import annotations

from rig.splicer.kinds import Mode, SpliceRefused
from rig.splicer.modes.base import FILLER, Branch, BranchRequest, SpliceMode
from rig.splicer.modes.int3 import Int3
from rig.splicer.modes.jmp import Jmp
from rig.splicer.modes.trap import TrapShared
from rig.splicer.modes.trap_own import OwnVector, TrapOwnVector
from rig.splicer.repository import SlotRecord

__all__ = ["FILLER", "Branch", "BranchRequest", "Int3", "Jmp", "OwnVector", "SpliceMode", "TrapOwnVector",
           "TrapShared", "of_record", "select"]


def select(mode: Mode, shared_vector: int | None = None, own_vector: OwnVector | None = None) -> SpliceMode:
    """The strategy for a new splice of ``mode``."""
    if own_vector is not None:
        if mode is not Mode.TRAP:
            raise SpliceRefused("bad-own-vector", f"a vector of its own is for trap splices, not {mode.name.lower()}",
                                "use --mode trap with --dispatch vector")
        return TrapOwnVector(own_vector)
    if mode is Mode.TRAP:
        if shared_vector is None:
            raise SpliceRefused("no-vector", "a trap splice needs the IDT vector of the installed handler",
                                "install the repository first; it picks a free vector")
        return TrapShared(shared_vector)
    return Int3() if mode is Mode.INT3 else Jmp()


def of_record(record: SlotRecord, shared_vector: int = 0, own_vector: OwnVector | None = None) -> SpliceMode:
    """The strategy of a live splice, from its slot record (a vector of its own needs ``own_vector``
    to give the gate back)."""
    if record.vector:
        if own_vector is None or own_vector.vector != record.vector:
            raise ValueError(f"the splice has vector {record.vector:#x} of its own: pass its OwnVector to undo it")
        return TrapOwnVector(own_vector)
    return select(Mode(record.mode), shared_vector=shared_vector)
