"""GuestMemory: what the instrumenter, the write transaction and the component manager need of
the guest behind gdb, and nothing more.

:class:`rig.gdb.session.GdbSession` satisfies it structurally (no inheritance); so does the
tests' in-memory fake, so ``rig.instrument`` runs its splices, journal and components without a
guest. Batches stay the one real :class:`~rig.gdb.batch.Batch`: it knows its session only as a
:class:`~rig.gdb.batch.Pipeline`, which an implementation provides to get the same in-order
pipelining (a read queued after a write sees it) and the same answer parsing.

Run control beyond :meth:`GuestMemory.stopped` (attach, ``cont``, ``interrupt``) is left out on
purpose: only ``connect()``, which makes the real session, uses it.
"""
from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Protocol, runtime_checkable

from rig.gdb.batch import Batch


@runtime_checkable
class GuestMemory(Protocol):
    """Guest memory and registers, read and written only while the guest is held stopped."""

    @property
    def last_stall_s(self) -> float | None:
        """Host time the last :meth:`stopped` held a running guest; None if it was stopped already."""
        ...

    def stopped(self) -> AbstractContextManager[object]:
        """Hold the guest stopped for the body, let it run again after (if it ran before)."""
        ...

    def batch(self) -> Batch:
        """An empty pipeline of reads, writes and register reads; ``run()`` sends it."""
        ...

    def read_memory(self, address: int, length: int) -> bytes: ...

    def read_many(self, regions: Sequence[tuple[int, int]]) -> list[bytes]: ...

    def write_memory(self, address: int, data: bytes) -> None: ...


class BatchedAccess:
    """The single-shot reads and writes of :class:`GuestMemory`, each one pipeline: a class that
    has ``batch()`` mixes this in (the gdb session and the tests' fake both do)."""

    def batch(self) -> Batch:
        raise NotImplementedError

    def read_memory(self, address: int, length: int) -> bytes:
        """``length`` bytes of guest memory at (virtual) ``address``."""
        return self.read_many([(address, length)])[0]

    def read_many(self, regions: Sequence[tuple[int, int]]) -> list[bytes]:
        """Read several regions with all requests in flight at once."""
        batch = self.batch()
        pending = [batch.read(address, length) for address, length in regions]
        batch.run()
        return [p.value for p in pending]

    def write_memory(self, address: int, data: bytes) -> None:
        """Write ``data`` into guest memory at (virtual) ``address``."""
        self.write_many([(address, data)])

    def write_many(self, writes: Sequence[tuple[int, bytes]]) -> None:
        """Several writes, all sent before the first answer is read; applied in order."""
        batch = self.batch()
        for address, data in writes:
            batch.write(address, data)
        batch.run()
