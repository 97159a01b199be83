"""The write journal: what a change of guest memory intends, kept in the guest before it starts.

Every change the rig makes (splice, unsplice, repository install, component load/unload/set,
the bench's floor gates) is one transaction: a list of writes in order, applied in groups that
are each read back before the next, and one *commit* write whose landing makes the change take
effect (a splice's instrumentation point, written last; an unsplice's point, written first; an
install's IDT gate; a component's table entry). Before the first write the rig records the
whole transaction here, old and new bytes of every write; after the last it marks the journal
idle. A rig process that dies in between (gdb killed, host crash) leaves the journal open, and
the next command finds it and finishes the job in one direction:

* the commit write has landed (its bytes are the new ones): **forward**, every write's new
  bytes in order (idempotent; later writes may lie inside earlier ones, so all are replayed);
* the commit write has not landed (its bytes are the old ones): **back**, every write's old
  bytes in reverse order;
* neither: something else changed those bytes; nothing is written and the journal stays open
  (the user is told to reboot the guest).

A splice is journaled in its staging stop, with the writes no branch leads to yet (patch area,
dispatch bucket, slot record), and the journal stays open while the guest runs on until the next
stop writes the points and marks it idle: a rig that dies in between leaves it open with the
commit write not landed, and the next command rolls the splice back.

The journal lives in the repository region (:data:`JOURNAL_OFFSET`), which the kernel never
uses. Only the host reads it, so the payload is zlib-compressed packed records; a header with a CRC
makes a torn journal write (the payload written, the header not) read as "nothing to repair":
the header is written after the payload and before any other write.

Pure: bytes in, records and decisions out; :mod:`rig.instrument.transaction` does the I/O.
"""
from __future__ import annotations

import enum
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

from rig.errors import RigError
from rig.splicer.memory import MemoryWrite

JOURNAL_OFFSET = 0x92000       # after the slot table (base+0x12000 + 4096 slots x 128 bytes)
JOURNAL_SIZE = 0x6E000         # up to the patch areas at base+0x100000: a batch of 1000 splices fits
_COUNTS = struct.Struct("<III")        # commit index, write count, operation length
_WRITE = struct.Struct("<IIB")         # address, length, role length
JOURNAL_MAGIC = b"TSJOURNL"
_HEADER = struct.Struct("<8sIIII")  # magic, state, payload length, payload crc32, sequence
HEADER_SIZE = _HEADER.size
IDLE, OPEN = 0, 1


class Direction(enum.Enum):
    FORWARD = "forward"
    BACK = "back"
    LOST = "lost"


@dataclass(frozen=True)
class JournaledWrite:
    address: int
    role: str
    old: bytes
    new: bytes

    @property
    def length(self) -> int:
        return len(self.new)


@dataclass(frozen=True)
class JournalEntry:
    """One open transaction: what it is, its writes in order, which one commits it."""

    operation: str
    writes: tuple[JournaledWrite, ...]
    commit: int          # index into writes
    sequence: int = 0

    @property
    def commit_write(self) -> JournaledWrite:
        return self.writes[self.commit]


@dataclass(frozen=True)
class Repair:
    """What the next command does about an open journal."""

    entry: JournalEntry
    direction: Direction
    writes: tuple[MemoryWrite, ...]   # apply in order, each read back
    differing: tuple[str, ...]        # roles of the writes whose bytes were not yet where the direction wants

    def summary(self) -> str:
        done = sum(1 for w in self.entry.writes if w.role not in self.differing)
        if self.direction is Direction.LOST:
            return (f"an interrupted '{self.entry.operation}' left {self.entry.commit_write.role} at "
                    f"{self.entry.commit_write.address:#x} neither as it was nor as intended: not repaired")
        forward = self.direction is Direction.FORWARD
        torn = ", ".join(self.differing) or "none"
        return (f"found an interrupted '{self.entry.operation}' ({done} of {len(self.entry.writes)} writes "
                f"in their {'new' if forward else 'old'} state; rewritten: {torn}): "
                f"{'finished it (its commit write had landed)' if forward else 'rolled it back (its commit write had not landed)'}")


def entry_for(operation: str, writes: Sequence[MemoryWrite], old: Sequence[bytes], commit: int,
              sequence: int = 0) -> JournalEntry:
    if len(writes) != len(old) or not 0 <= commit < len(writes):
        raise ValueError("one old value per write, and a commit index among them")
    return JournalEntry(operation, tuple(JournaledWrite(w.address, w.role, bytes(o), bytes(w.data))
                                         for w, o in zip(writes, old)), commit, sequence)


def encode(entry: JournalEntry) -> tuple[bytes, bytes]:
    """(payload, header): write the payload first, then the header that makes it count."""
    operation = entry.operation.encode()
    parts = [_COUNTS.pack(entry.commit, len(entry.writes), len(operation)), operation]
    for write in entry.writes:
        role = write.role.encode()
        parts += [_WRITE.pack(write.address, write.length, len(role)), role, write.old, write.new]
    payload = zlib.compress(b"".join(parts), 6)
    if HEADER_SIZE + len(payload) > JOURNAL_SIZE:
        raise RigError(f"'{entry.operation}' needs a {len(payload)}-byte journal, "
                       f"the guest keeps {JOURNAL_SIZE - HEADER_SIZE}",
                       "split the change into smaller ones (fewer points in a batch, a smaller component)")
    header = _HEADER.pack(JOURNAL_MAGIC, OPEN, len(payload), zlib.crc32(payload), entry.sequence)
    return payload, header


def idle_header(sequence: int = 0) -> bytes:
    return _HEADER.pack(JOURNAL_MAGIC, IDLE, 0, 0, sequence)


@dataclass(frozen=True)
class HeaderState:
    open: bool
    length: int
    crc: int
    sequence: int


def decode_header(raw: bytes) -> HeaderState | None:
    """None when no journal was ever written there (or its header is not ours)."""
    magic, state, length, crc, sequence = _HEADER.unpack_from(raw)
    if magic != JOURNAL_MAGIC or state not in (IDLE, OPEN) or length > JOURNAL_SIZE - HEADER_SIZE:
        return None
    return HeaderState(state == OPEN, length, crc, sequence)


def decode_payload(header: HeaderState, payload: bytes) -> JournalEntry | None:
    """The open transaction, or None if the payload does not match its header (a torn journal
    write: the header is written last, so nothing else was written yet)."""
    if not header.open or zlib.crc32(payload) != header.crc:
        return None
    body = zlib.decompress(payload)
    commit, count, length = _COUNTS.unpack_from(body)
    offset = _COUNTS.size + length
    operation = body[_COUNTS.size:offset].decode()
    writes = []
    for _ in range(count):
        address, size, role_length = _WRITE.unpack_from(body, offset)
        offset += _WRITE.size
        role = body[offset:offset + role_length].decode()
        offset += role_length
        old, new = body[offset:offset + size], body[offset + size:offset + 2 * size]
        offset += 2 * size
        writes.append(JournaledWrite(address, role, old, new))
    return JournalEntry(operation, tuple(writes), commit, header.sequence)


def repair(entry: JournalEntry, current: Sequence[bytes]) -> Repair:
    """Decide how to finish ``entry`` from the bytes now at each of its writes."""
    commit = entry.commit_write
    now = current[entry.commit]
    if now == commit.new:
        direction = Direction.FORWARD
        writes = tuple(MemoryWrite(w.address, w.new, w.role) for w in entry.writes)
        differing = tuple(w.role for w, c in zip(entry.writes, current) if c != w.new)
    elif now == commit.old:
        direction = Direction.BACK
        writes = tuple(MemoryWrite(w.address, w.old, w.role) for w in reversed(entry.writes))
        differing = tuple(w.role for w, c in zip(entry.writes, current) if c != w.old)
    else:
        direction, writes = Direction.LOST, ()
        differing = tuple(w.role for w, c in zip(entry.writes, current) if c not in (w.old, w.new))
    return Repair(entry, direction, writes, differing)


def final_bytes(writes: Sequence[MemoryWrite]) -> list[tuple[int, bytes]]:
    """What each write's range holds once all ``writes`` are applied in order (later writes may
    land inside earlier ones): the read-back to expect, one region per write."""
    ordered = sorted(writes, key=lambda w: w.address)
    if all(a.end <= b.address for a, b in zip(ordered, ordered[1:])):
        return [(w.address, bytes(w.data)) for w in writes]  # nothing overlaps: each holds its own bytes
    memory: dict[int, int] = {}
    for write in writes:
        for offset, value in enumerate(write.data):
            memory[write.address + offset] = value
    return [(w.address, bytes(memory[w.address + i] for i in range(len(w.data)))) for w in writes]
