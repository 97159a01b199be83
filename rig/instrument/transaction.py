"""The one write path into the guest: journaled, checked, read back, all-or-nothing.

Every change of guest memory outside ``rig.gdb`` goes through :class:`Transaction` (splice,
unsplice, repository install, component load/unload/set, the bench's floor gates), with the
guest held stopped by the caller:

1. :meth:`Transaction.queue_reads` puts the reads it needs into the caller's check pipeline
   (the bytes now at every write, for the journal and for ``expect``; the journal header);
2. :meth:`Transaction.check` refuses if a write's ``expect`` does not hold or another
   transaction is still open;
3. :meth:`Transaction.apply` records the journal, then writes group by group, each group
   read back before the next (the commit write in the last group, last), then marks the journal
   idle. A read-back that differs, or a write gdb refuses, rolls everything back on the spot.

A change may take two stops: :meth:`Transaction.stage` journals it and writes its first groups
(what the guest cannot reach yet), leaving the journal open; a later stop checks again
(:meth:`Transaction.queue_commit_reads`, :meth:`Transaction.check_commit`) and
:meth:`Transaction.apply` writes the rest.

:func:`recover` finishes a transaction a dead rig process left open (see
:mod:`rig.splicer.journal` for the rule); every command runs it right after attaching, before
the guest runs on.
"""
from __future__ import annotations

import bisect
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from rig.errors import RigError
from rig.gdb.batch import READ_GAP, Batch, Pending
from rig.gdb.memory import GuestMemory
from rig.gdb.mi import GdbCommandError
from rig.splicer import journal
from rig.splicer.memory import MERGE_GAP, MemoryWrite, coalesce, spans
from rig.splicer.repository import RepositoryLayout

log = logging.getLogger(__name__)


class ExpectedBytesDiffer(RigError):
    """Guest memory a write rests on is not what the plan expects there."""

    def __init__(self, write: MemoryWrite, found: bytes) -> None:
        assert write.expect is not None
        super().__init__(f"guest memory at {write.address:#x} ({write.role}) is {found.hex()}, expected "
                         f"{write.expect.hex()}: the running kernel no longer matches vmlinux there",
                         hint="was it changed behind the rig's back? reboot the guest (invoke halt; invoke boot) "
                              "to start from the built kernel")
        self.write = write
        self.found = found


@dataclass
class Transaction:
    """One all-or-nothing change: ``groups`` of writes in order, ``commit`` one of them."""

    gdb: GuestMemory
    layout: RepositoryLayout
    operation: str
    groups: Sequence[Sequence[MemoryWrite]]
    commit: MemoryWrite
    merge_gap: int = MERGE_GAP  # neighbouring writes this close become one (the gap rewritten as it is)
    _spans: list[tuple[int, Pending[bytes]]] = field(default_factory=list, init=False)
    _span_starts: list[int] = field(default_factory=list, init=False)
    _journal_header: Pending[bytes] | None = field(default=None, init=False)
    _sequence: int = field(default=1, init=False)  # one more than the last transaction's: ties a journal to its run
    _groups: list[list[MemoryWrite]] = field(default_factory=list, init=False)   # coalesced, as written
    _entry: journal.JournalEntry | None = field(default=None, init=False)
    _payload: bytes = field(default=b"", init=False)
    _header: bytes = field(default=b"", init=False)
    _staged: int = field(default=0, init=False)    # groups written by stage()
    _commit_spans: list[tuple[int, Pending[bytes]]] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        self.groups = [list(group) for group in self.groups if group]
        if not any(write is self.commit for write in self.writes):
            raise ValueError("the commit write must be one of the transaction's writes")

    @property
    def writes(self) -> list[MemoryWrite]:
        return [write for group in self.groups for write in group]

    # ---- inside the caller's stop ---------------------------------------------------------
    def queue_reads(self, batch: Batch) -> None:
        """The bytes under every write, neighbours read together (a batch of a thousand splices is
        a handful of reads, not thousands), and the journal header."""
        ranges = [(w.address, w.end) for w in self.writes]
        self._spans = [(start, batch.read(start, end - start)) for start, end in spans(ranges, gap=READ_GAP)]
        self._span_starts = [start for start, _ in self._spans]
        self._journal_header = batch.read(self.layout.journal, journal.HEADER_SIZE)

    def _old_at(self, address: int, length: int) -> bytes:
        index = bisect.bisect_right(self._span_starts, address) - 1  # spans are sorted and disjoint
        if index >= 0:
            start, pending = self._spans[index]
            if address + length <= start + len(pending.value):
                return pending.value[address - start:address - start + length]
        raise AssertionError(f"{address:#x}+{length} was not read")

    def check(self) -> None:
        """(after the batch ran) expected bytes hold and no other transaction is open."""
        assert self._journal_header is not None, "queue_reads first"
        state = journal.decode_header(self._journal_header.value)
        if state is not None and state.open:
            raise RigError("an earlier rig command left a change half-done in the guest (its journal is open)",
                           hint="run any invoke command that attaches (e.g. invoke splices): it repairs it first")
        self._sequence = (state.sequence + 1) & 0xFFFFFFFF if state is not None else 1
        for write in self.writes:
            if write.expect is not None and (found := self._old_at(write.address, len(write.expect))) != write.expect:
                raise ExpectedBytesDiffer(write, found)

    def apply(self) -> None:
        """Journal (unless :meth:`stage` did), then each group not yet written, written and read
        back; the journal marked idle last. Each group is coalesced first (neighbouring writes
        become one), the commit write's kept last."""
        self._prepare()
        self._write_groups(self._staged, len(self._groups), record=self._staged == 0)

    def stage(self, groups: int) -> None:
        """(an earlier stop) Journal the whole change, then write and read back its first ``groups``
        groups, and leave the journal open: the writes no one can reach yet (a splice's patch
        areas, slot records and dispatch buckets) go before the stop that makes them live. That
        stop runs :meth:`queue_commit_reads`, :meth:`check_commit` and :meth:`apply`; or
        :meth:`abandon` takes the staged writes back. A rig that dies in between leaves the journal
        open with the commit write not landed: the next command rolls it back."""
        self._prepare()
        if not 0 < groups < len(self._groups) or self._commit_group() < groups:
            raise ValueError("stage some groups before the one that commits, not all")
        self._write_groups(0, groups, record=True)
        self._staged = groups

    def queue_commit_reads(self, batch: Batch) -> None:
        """(the stop after :meth:`stage`) The bytes now under the writes still to come:
        :meth:`check_commit` compares them with what the journal recorded. (The journal itself is
        not read again: QEMU's stub admits one gdb, this one, so nothing else wrote the guest
        between the stops, and the kernel never touches the repository.)"""
        assert self._staged, "stage first"
        ranges = [(w.address, w.end) for group in self._groups[self._staged:] for w in group]
        self._commit_spans = [(start, batch.read(start, end - start)) for start, end in spans(ranges, gap=READ_GAP)]

    def check_commit(self) -> None:
        """(after the batch ran) The bytes under every write still to come are what the journal
        recorded (with the staged writes on top), so its expected bytes hold in this stop too."""
        assert self._entry is not None
        starts = [start for start, _ in self._commit_spans]
        staged = [w for group in self._groups[:self._staged] for w in group]
        recorded = _overlay(self._old_at, staged)
        for write in (w for group in self._groups[self._staged:] for w in group):
            start, pending = self._commit_spans[bisect.bisect_right(starts, write.address) - 1]
            now = pending.value[write.address - start:write.end - start]
            if now != recorded(write.address, len(write.data)):
                raise ExpectedBytesDiffer(MemoryWrite(write.address, write.data, write.role,
                                                      expect=recorded(write.address, len(write.data))), now)

    @property
    def open(self) -> bool:
        """Staged, and neither finished nor rolled back: the guest's journal is open."""
        return self._staged > 0

    def abandon(self) -> None:
        """(guest stopped) Take back what :meth:`stage` wrote and close the journal."""
        assert self._entry is not None and self.open
        written = sum(len(group) for group in self._groups[:self._staged])
        self._roll_back(journal.JournalEntry(self._entry.operation, self._entry.writes[:written], 0,
                                             self._entry.sequence))
        self._staged = 0

    def old_at(self, address: int, length: int) -> bytes:
        """(after :meth:`queue_reads`' batch ran) The bytes that were at ``address`` before any write."""
        return self._old_at(address, length)

    def _prepare(self) -> None:
        """The coalesced groups and the journal entry, made once."""
        if self._entry is not None:
            return
        committing = self._commit_group()
        groups: list[list[MemoryWrite]] = []
        for index, group in enumerate(self.groups):
            # A coalesced write rewrites the bytes between its parts as they are *then*: after the
            # groups before it (an unsplice's springboards lie near the point it restored first).
            then = _overlay(self._old_at, [w for earlier in self.groups[:index] for w in earlier])
            groups.append(coalesce(group, then, keep_last=self.commit if index == committing else None,
                                   gap=self.merge_gap))
        writes = [write for group in groups for write in group]
        old = [self._old_at(w.address, len(w.data)) for w in writes]
        commit = sum(len(group) for group in groups[:committing + 1]) - 1  # the last of its group
        self._entry = journal.entry_for(self.operation, writes, old, commit, self._sequence)
        self._payload, self._header = journal.encode(self._entry)
        self._groups = groups
        log.debug("%s: %d write(s) as %d in %d group(s), commit %s", self.operation, len(self.writes), len(writes),
                  len(groups), self.commit.role)

    def _write_groups(self, first: int, end: int, record: bool) -> None:
        """Groups ``first``..``end`` written, each read back in its own pipeline (the journal's
        payload and header first when ``record``); the journal goes idle after the last group."""
        assert self._entry is not None
        entry = self._entry
        journal_writes = [MemoryWrite(self.layout.journal + journal.HEADER_SIZE, self._payload, "journal"),
                          MemoryWrite(self.layout.journal, self._header, "journal-header")] if record else []
        idle = MemoryWrite(self.layout.journal, journal.idle_header(entry.sequence), "journal-idle")
        done = [w for group in self._groups[:first] for w in group]
        for index in range(first, end):
            group = self._groups[index]
            last = index == len(self._groups) - 1
            try:
                # The journal goes idle in the last group's pipeline, after its read-back: a death
                # before that leaves it open (all written: the next command finishes it forward).
                _write_checked(self.gdb, [*journal_writes, *group], check=group, before=done,
                               then=[idle] if last else [])
            except (_ReadBackDiffers, GdbCommandError) as failed:
                # A refused write (gdb's ^error) does not stop the pipeline: undo all, as for a read-back.
                written = len(done) + len(group)
                self._staged = 0  # rolled back here: nothing left to abandon
                self._roll_back(journal.JournalEntry(entry.operation, entry.writes[:written], 0, entry.sequence))
                what = (f"read-back of {failed.write.role} at {failed.write.address:#x} differs from what was written"
                        if isinstance(failed, _ReadBackDiffers) else f"gdb refused a write ({failed.gdb_message})")
                raise RigError(f"{what}; '{self.operation}' was rolled back",
                               hint="the guest memory is not writable there?") from None
            journal_writes, done = [], [*done, *group]
        if end == len(self._groups):
            self._staged = 0  # finished: the journal is idle

    def _commit_group(self) -> int:
        return next(i for i, group in enumerate(self.groups) if any(w is self.commit for w in group))

    def run(self) -> None:
        """Reads, checks and writes in one go (for callers with no check pipeline of their own)."""
        batch = self.gdb.batch()
        self.queue_reads(batch)
        batch.run()
        self.check()
        self.apply()

    def _roll_back(self, entry: journal.JournalEntry) -> None:
        undo = [MemoryWrite(w.address, w.old, w.role) for w in reversed(entry.writes)]
        _write_back(self.gdb, undo, entry.operation)
        self.gdb.write_memory(self.layout.journal, journal.idle_header(entry.sequence))


def _overlay(base: Callable[[int, int], bytes], writes: Sequence[MemoryWrite]) -> Callable[[int, int], bytes]:
    """``base`` with ``writes`` applied on top, in order."""
    def read(address: int, length: int) -> bytes:
        data = bytearray(base(address, length))
        for write in writes:
            low, high = max(address, write.address), min(address + length, write.end)
            if low < high:
                data[low - address:high - address] = write.data[low - write.address:high - write.address]
        return bytes(data)
    return read


class _ReadBackDiffers(Exception):
    def __init__(self, write: MemoryWrite) -> None:
        super().__init__(write.role)
        self.write = write


def _write_checked(gdb: GuestMemory, writes: Sequence[MemoryWrite], check: Sequence[MemoryWrite],
                   before: Sequence[MemoryWrite] = (), then: Sequence[MemoryWrite] = ()) -> None:
    """Write ``writes`` in order and read ``check`` back in the same pipeline: each must hold what
    the writes so far (``before`` included) leave there; ``then`` is written after the read-back."""
    batch = gdb.batch()
    for write in writes:
        batch.write(write.address, write.data)
    expected = journal.final_bytes([*before, *writes])[len(before):]
    wanted = {id(w): final for w, (_, final) in zip(writes, expected)}
    readback = [(write, batch.read(write.address, len(write.data))) for write in check]
    for write in then:
        batch.write(write.address, write.data)
    batch.run()
    for write, now in readback:
        if now.value != wanted[id(write)]:
            raise _ReadBackDiffers(write)


def apply_writes(gdb: GuestMemory, layout: RepositoryLayout, operation: str,
                 groups: Sequence[Sequence[MemoryWrite]], commit: MemoryWrite | None = None) -> None:
    """(guest stopped) A whole transaction; ``commit`` defaults to the last write."""
    flat = [write for group in groups for write in group]
    Transaction(gdb, layout, operation, groups, commit or flat[-1]).run()


# ---- repair ---------------------------------------------------------------------------------
def recover(gdb: GuestMemory, layout: RepositoryLayout) -> journal.Repair | None:
    """(guest stopped) Finish a transaction a dead rig process left open; None if there is none.

    Raises when the journal cannot be honoured (its commit bytes are neither old nor new)."""
    state = journal.decode_header(gdb.read_memory(layout.journal, journal.HEADER_SIZE))
    if state is None or not state.open:
        return None
    entry = journal.decode_payload(state, gdb.read_memory(layout.journal + journal.HEADER_SIZE, state.length)
                                   if state.length else b"")
    if entry is None:  # the header never matched a payload: no write of that transaction happened
        gdb.write_memory(layout.journal, journal.idle_header(state.sequence))
        return None
    current = gdb.read_many([(w.address, w.length) for w in entry.writes])
    repair = journal.repair(entry, current)
    log.info("journal: %s", repair.summary())
    if repair.direction is journal.Direction.LOST:
        raise RigError(repair.summary(),
                       hint="something else changed the guest there; reboot it (invoke halt; invoke boot)")
    _write_back(gdb, repair.writes, entry.operation)
    gdb.write_memory(layout.journal, journal.idle_header(state.sequence))
    return repair


def _write_back(gdb: GuestMemory, writes: Sequence[MemoryWrite], operation: str) -> None:
    """A repair's writes, read back; if even those do not stick the journal stays open."""
    try:
        _write_checked(gdb, writes, check=writes)
    except _ReadBackDiffers as differs:
        raise RigError(f"repairing '{operation}': {differs.write.role} at {differs.write.address:#x} does not "
                       "read back as written; the change stays recorded as half-done",
                       hint="the guest memory there is not writable; reboot the guest (invoke halt; invoke boot)") from None
