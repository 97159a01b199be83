"""The kernel instrumentation manager: applies splice plans to the running guest through gdb.

The pure splicer (``rig.splicer``) decides *what* to write; this module reads the guest's
state, checks that it is safe, and writes, with the guest stopped:

* a **prep stop** reads the repository header, slot table, IDT and task list, then the guest
  runs again while the host plans;
* a **staging stop** re-checks everything the plan rests on (function text, expected bytes, the
  slot still free, no task inside the window or the patch area), journals the whole change and
  writes what no branch leads to yet (patch area, springboards, dispatch bucket, slot record
  and flag), read back; the journal stays open. Nothing is written if any check fails. A free
  slot whose old patch a task may still return to (a splice undone while the task slept under
  it) is *held*: the batch is planned again on other free slots;
* the **splice stop** (the one timed as the guest's stall) checks the busy rule again and the
  bytes under the point against the journal, writes the gates and the instrumentation point
  last, reads them back and closes the journal. A point found busy only here is retried, then
  the staged writes are taken back.

The guest memory is the record of what is spliced (the repository's slot table), so any
later ``invoke`` reads it back; nothing about live splices is kept on the host.
"""
from __future__ import annotations

import struct
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Literal, TypeVar, overload

from rig.errors import RigError
from rig.gdb.batch import Batch, Pending
from rig.gdb.memory import GuestMemory
from rig.gdb.mi import GdbDied
from rig.gdb.session import GdbSession
from rig.guest.kernel_layout import TaskLayout, task_layout
from rig.guest.machine import REPOSITORY_PHYS, REPOSITORY_SIZE
from rig.kernel.build import KernelBuild
from rig.splicer import dispatch, idt, journal, modes, repository
from rig.splicer.analysis import FunctionCode, disassemble_function
from rig.splicer.image import ByteRange, KernelImage, Symbol
from rig.splicer.journal import Repair
from rig.splicer.kinds import Mode, PatchKind, Policy, SpliceRefused
from rig.splicer.live import LiveSplices
from rig.splicer.memory import MemoryWrite
from rig.splicer.modes import OwnVector, int3
from rig.splicer.padding import padding_gaps
from rig.splicer.plan import SplicePlan, plan_auto, plan_splice, undo_writes
from rig.splicer.repository import Header, RepositoryLayout, SlotRecord
from rig.splicer.stackcheck import BusyWord, busy_words
from rig.instrument.transaction import Transaction, apply_writes, recover

T = TypeVar("T")
_MAX_TASKS = 512
_BUSY_RETRY_PAUSE_S = 0.01
_E820_RAM = 1
_E820_ENTRY = struct.Struct("<QQI")


@cache
def load_image(vmlinux: Path) -> KernelImage:
    return KernelImage.load(vmlinux)


@cache
def _decoded(image: KernelImage, symbol: Symbol) -> FunctionCode:
    """A function decoded once per image (a batch names the same function at every instruction)."""
    return disassemble_function(image, symbol)


@dataclass(frozen=True)
class ActiveSplice:
    slot: int
    record: SlotRecord
    function: str
    offset: int
    hits: int

    @property
    def mode(self) -> str:
        return Mode(self.record.mode).name.lower()


@dataclass(frozen=True)
class SpliceResult:
    plan: SplicePlan
    stall_s: float        # host time the guest was held stopped to check and write the point
    busy_retries: int
    vector: int
    prep_stall_s: float = 0.0  # the earlier stop that read the repository and the task list
    stage_stall_s: float = 0.0  # the stop between them that wrote what no branch leads to yet
    held_slots: tuple[int, ...] = ()  # free slots passed over: a task or the vCPU may still return into their patch


@dataclass(frozen=True)
class PointRequest:
    """One point of a batch, with everything :meth:`Instrumenter.splice` takes."""

    function: str
    mode: Mode = Mode.TRAP
    policy: Policy | None = None      # None: auto (the tactics in turn)
    offset: int | None = None
    address: int | None = None
    patch_kind: PatchKind = PatchKind.COUNTER
    springboards: int | None = None
    call_target: int | None = None
    own_vector: bool = False


@dataclass(frozen=True)
class BatchResult:
    plans: list[SplicePlan]
    vectors: list[int]                # per plan: the IDT vector its branch raises (0: a jmp)
    refused: list[tuple[PointRequest, SpliceRefused]]
    stall_s: float                    # host time the guest was held stopped to check and write the points
    prep_stall_s: float
    busy_retries: int
    stage_stall_s: float = 0.0        # the stop before it that wrote patches, records, buckets (nothing live)
    held_slots: tuple[int, ...] = ()  # free slots passed over: a task or the vCPU may still return into their patch


@dataclass(frozen=True)
class UnspliceResult:
    slot: int
    function: str
    point: int
    hits: int
    stall_s: float
    prep_stall_s: float = 0.0


@dataclass
class _PlannedBatch:
    """A batch planned against the prep stop's snapshot; nothing written yet."""

    live_records: list[SlotRecord]
    plans: list[SplicePlan] = field(default_factory=list)
    vectors: list[int] = field(default_factory=list)
    refused: list[tuple[PointRequest, SpliceRefused]] = field(default_factory=list)
    codes: dict[int, FunctionCode] = field(default_factory=dict)
    wide: list[ByteRange] = field(default_factory=list)  # windows of more than one whole instruction


class _SlotsHeld(Exception):
    """(staging stop, nothing written) Free slots the plans took are held: plan again without ``held``."""

    def __init__(self, held: dict[int, BusyWord]) -> None:
        super().__init__(f"held slots {sorted(held)}")
        self.held = held


def _all_held(held: dict[int, BusyWord]) -> SpliceRefused:
    """The refusal when every free slot the batch has not taken is held (the lowest one named)."""
    slot = min(held)
    word = held[slot]
    return SpliceRefused("busy", f"no usable repository slot left: the {len(held)} other free slot(s) hold code a "
                         f"task or the vCPU may still return to ({word.origin} holds {word.value:#x}, inside "
                         f"slot {slot}'s patch area {word.range.start:#x}+{word.range.length})",
                         "a task sleeps in the patch of a splice undone earlier; retry once it has woken, "
                         "or undo a live splice to free its slot")


@dataclass(frozen=True)
class _BusyReads:
    registers: Pending[dict[str, int]]
    heads: dict[int, Pending[bytes]]                          # task -> its bytes from next_task to thread.esp
    stacks: dict[int, tuple[int, Pending[bytes]]]             # task -> (from, its stack from there up)


def _u32(raw: bytes) -> int:
    return int.from_bytes(raw, "little")


def _with_retries(attempt_once: Callable[[], T], retries: int) -> tuple[T, int]:
    """Run a stop that may be refused as busy again, with the guest running in between."""
    for attempt in range(retries + 1):
        try:
            return attempt_once(), attempt
        except SpliceRefused as refused:
            if refused.reason != "busy" or attempt == retries:
                raise
            time.sleep(_BUSY_RETRY_PAUSE_S)  # let the guest run on before looking again
    raise AssertionError("unreachable")


@dataclass(frozen=True)
class GuestSnapshot:
    """What the prep stop read: enough to plan without the guest stopped."""

    header: Header
    slots: list[SlotRecord]
    tasks: list[tuple[int, int]]  # (task_struct address, saved kernel esp)
    int3_gate: bytes              # IDT vector 3 (the kernel's, or re-pointed at the rig's int3 stub)
    idt: bytes | None = None      # the whole IDT, when a plan needs a vector of its own

    def active(self) -> list[tuple[int, SlotRecord]]:
        return [(index, record) for index, record in enumerate(self.slots) if record.in_use]


class Instrumenter:
    """Splice, unsplice and list splices in the guest behind ``gdb`` (an attached session)."""

    def __init__(self, gdb: GuestMemory, kernel: KernelBuild, layout: RepositoryLayout | None = None) -> None:
        self.gdb = gdb
        self.kernel = kernel
        self.image = load_image(kernel.vmlinux)
        self.layout = layout or RepositoryLayout()
        self.tasks_layout: TaskLayout = task_layout(kernel)
        self.last_prep_stall_s: float | None = None
        self.repair: Repair | None = None  # what connect() found and finished of an interrupted change
        self.on_change: Callable[[], None] | None = None  # called after every splice and unsplice

    # ---- reading the guest (caller holds it stopped) ----------------------------------------
    def read_header(self) -> Header | None:
        """(guest stopped) The repository header, or None when no repository is installed yet."""
        raw = self.gdb.read_memory(self.layout.base, repository.header_size())
        if raw[:len(repository.MAGIC)] != repository.MAGIC:
            return None
        return repository.decode_header(raw)

    def read_slots(self) -> list[SlotRecord]:
        """(guest stopped) Every slot's record, fetching only those the in-use flags name."""
        flags = self.gdb.read_memory(self.layout.in_use_flag(0), self.layout.slots)
        used = [slot for slot, flag in enumerate(flags) if flag]
        size = repository.SLOT_RECORD_SIZE
        batch = self.gdb.batch()
        # Slots are taken lowest-free-first, so the live ones mostly form a few runs: one read each.
        runs = [(first, batch.read(self.layout.slot_record(first), (end - first) * size)) for first, end in _runs(used)]
        batch.run()
        records = {first + i: raw.value[i * size:(i + 1) * size] for first, raw in runs
                   for i in range(len(raw.value) // size)}
        empty = repository.decode_slot(bytes(size))
        return [repository.decode_slot(records[slot]) if slot in records else empty
                for slot in range(self.layout.slots)]

    def _read_tasks(self) -> list[tuple[int, int]]:
        """Walk init_task's circular list: (task address, thread.esp) for every task."""
        init = self.image.symbol("init_task_union").address
        lay = self.tasks_layout
        tasks: list[tuple[int, int]] = []
        task = init
        while len(tasks) < _MAX_TASKS:
            next_raw, esp_raw = self.gdb.read_many([(task + lay.next_task, 4), (task + lay.thread_esp, 4)])
            tasks.append((task, int.from_bytes(esp_raw, "little")))
            task = int.from_bytes(next_raw, "little")
            if task == init:
                return tasks
        raise RigError(f"the guest's task list did not close after {_MAX_TASKS} tasks",
                       hint="the guest kernel may be corrupted; reboot it (invoke halt; invoke boot)")

    def _check_repository_reserved(self) -> None:
        """Refuse to use repository memory the kernel may allocate (guest booted without our memmap)."""
        e820 = self.image.symbol("e820").address
        count = int.from_bytes(self.gdb.read_memory(e820, 4), "little")
        raw = self.gdb.read_memory(e820 + 4, min(count, 32) * _E820_ENTRY.size)
        low, high = REPOSITORY_PHYS, REPOSITORY_PHYS + REPOSITORY_SIZE
        for addr, size, kind in _E820_ENTRY.iter_unpack(raw):
            if kind == _E820_RAM and addr < high and low < addr + size:
                raise RigError(f"guest RAM {addr:#x}-{addr + size:#x} overlaps the component repository "
                               f"(physical {low:#x}-{high:#x}): the kernel may allocate it",
                               hint="boot the guest with the rig (invoke boot), whose mem=exactmap "
                                    "leaves that range reserved")

    def _install(self) -> Header:
        self._check_repository_reserved()
        idt_base = self.image.symbol("idt_table").address
        table = self.gdb.read_memory(idt_base, 256 * 8)
        vector = idt.find_free_vector(table, self.image.symbol("ignore_int").address)
        gate = idt.make_trap_gate(self.layout.handler).encode()
        writes = repository.install_writes(self.layout, vector, idt_base, gate,
                                           kernel_int3=self.image.symbol("int3").address)
        *body, gate_write = writes  # the gate last: nothing can trap into a half-made repository
        apply_writes(self.gdb, self.layout, "install the repository", [body, [gate_write]])
        header = self.read_header()
        assert header is not None
        return header

    def snapshot(self, install: bool = True, read_idt: bool = False) -> GuestSnapshot:
        """Read the repository (installing it first if asked and missing), the task list and,
        if asked, the IDT."""
        header = self.read_header()
        if header is None:
            if not install:
                raise RigError("no component repository in the guest yet (nothing was spliced since boot)",
                               hint="splice something first: invoke splice --func NAME")
            header = self._install()
        idt_base = self.image.symbol("idt_table").address
        table = self.gdb.read_memory(idt_base, 256 * idt.GATE_SIZE) if read_idt else None
        int3_gate = table[3 * idt.GATE_SIZE:4 * idt.GATE_SIZE] if table else self.gdb.read_memory(
            self._int3_gate_address, idt.GATE_SIZE)
        return GuestSnapshot(header=header, slots=self.read_slots(), tasks=self._read_tasks(), int3_gate=int3_gate,
                             idt=table)

    @contextmanager
    def _stopped(self) -> Iterator[None]:
        with self.gdb.stopped():
            yield

    @overload
    def prep(self, install: bool = True, read_idt: bool = False, missing_ok: Literal[False] = False) -> GuestSnapshot: ...

    @overload
    def prep(self, install: bool = True, read_idt: bool = False, *, missing_ok: bool) -> GuestSnapshot | None: ...

    def prep(self, install: bool = True, read_idt: bool = False, missing_ok: bool = False) -> GuestSnapshot | None:
        """The prep stop. ``missing_ok``: no repository yet is None, not an error (nothing to undo)."""
        with self._stopped():
            if missing_ok and not install and self.read_header() is None:
                return None
            snap = self.snapshot(install=install, read_idt=read_idt)
        self.last_prep_stall_s = self.gdb.last_stall_s
        return snap

    # ---- checks inside the splice stop --------------------------------------------------
    def _queue_busy(self, batch: Batch, tasks: Sequence[tuple[int, int]]) -> _BusyReads:
        """Queue what the busy check needs: the vCPU's registers, every known task's list link and
        saved esp as they are now, and their stacks from where the prep stop saw them."""
        lay, size = self.tasks_layout, self.tasks_layout.stack_size
        # One read a task covers both fields (72 and 632 bytes in on 2.4.20), and neighbouring
        # reads go as one (kernel threads' 8 KiB task unions lie side by side: a stack's top and
        # the next task's fields are 72 bytes apart): a command is what costs.
        low, high = min(lay.next_task, lay.thread_esp), max(lay.next_task, lay.thread_esp) + 4
        deep = [(task, esp & ~3) for task, esp in tasks if task < esp < task + size]
        pending = batch.reads([(task + low, high - low) for task, _ in tasks]
                              + [(start, task + size - start) for task, start in deep])
        heads = dict(zip((task for task, _ in tasks), pending))
        stacks = {task: (start, read) for (task, start), read in zip(deep, pending[len(tasks):])}
        return _BusyReads(batch.registers(["eip", "esp", "cs"]), heads, stacks)

    def _tasks_now(self, reads: _BusyReads) -> list[tuple[int, int]]:
        """The task list as it is in this stop: from the links read in it, or walked again when
        a task was forked since the prep stop (its link leads to a task not read)."""
        lay = self.tasks_layout
        low = min(lay.next_task, lay.thread_esp)
        now = {task: (_u32(head.value[lay.next_task - low:][:4]), _u32(head.value[lay.thread_esp - low:][:4]))
               for task, head in reads.heads.items()}
        init = self.image.symbol("init_task_union").address
        order: list[int] = []
        task = init
        while task in now and len(order) <= len(now):
            order.append(task)
            task = now[task][0]
            if task == init:
                return [(t, now[t][1]) for t in order]
        return self._read_tasks()

    def _busy_words(self, reads: _BusyReads) -> list[tuple[int, str]]:
        """(after the batch ran) Every word the vCPU or a sleeping task could resume at: the vCPU's
        eip, and each task's stack from its saved esp *now* (a task that slept deeper since the
        prep stop has the part below read in one more pipeline)."""
        size = self.tasks_layout.stack_size
        registers = reads.registers.value
        live: list[tuple[int, int]] = list(self._tasks_now(reads))
        if registers["cs"] & 3 == 0:  # in the kernel: the running task's live stack is not at thread.esp
            live.append((registers["esp"] & ~(size - 1), registers["esp"]))
        more = self.gdb.batch()
        pieces: list[tuple[str, int, bytes | Pending[bytes]]] = []
        for index, (task, esp) in enumerate(live):
            start = esp & ~3
            if not task < start < task + size:
                continue
            origin = "vcpu stack" if index == len(live) - 1 and registers["cs"] & 3 == 0 else f"task {task:#x}"
            have = reads.stacks.get(task)
            if have is not None and have[0] <= start:
                pieces.append((origin, start, have[1].value[start - have[0]:]))
            else:
                pieces.append((origin, start, more.read(start, task + size - start)))
        more.run()
        words: list[tuple[int, str]] = [(registers["eip"], "vcpu eip")]
        for origin, start, blob in pieces:
            data = blob if isinstance(blob, bytes) else blob.value
            words += [(value, f"{origin} +{index * 4:#x}")
                      for index, (value,) in enumerate(struct.iter_unpack("<I", data[: len(data) // 4 * 4]))]
        return words

    @staticmethod
    def _refuse_if_busy(windows: Sequence[ByteRange], gone: Sequence[ByteRange],
                        words: Sequence[tuple[int, str]]) -> None:
        hits: list[BusyWord] = busy_words(windows, words) + busy_words(gone, words, allow_first_byte=False)
        if hits:
            first = hits[0]
            raise SpliceRefused("busy", f"the point is busy: {first.origin} holds {first.value:#x}, inside "
                                f"{first.range.start:#x}+{first.range.length}",
                                "a task is stopped inside the bytes to rewrite; retry in a moment")

    def check_not_busy(self, tasks: Sequence[tuple[int, int]], windows: Sequence[ByteRange] = (),
                       gone: Sequence[ByteRange] = ()) -> None:
        """(guest stopped) Refuse if the vCPU or a sleeping task would resume inside ``windows``
        (after their first byte) or anywhere in ``gone`` (code about to disappear)."""
        batch = self.gdb.batch()
        reads = self._queue_busy(batch, tasks)
        batch.run()
        self._refuse_if_busy(windows, gone, self._busy_words(reads))

    def _check_function_text(self, code: FunctionCode, guest: bytes, active: Sequence[SlotRecord]) -> None:
        """The function's bytes in the guest equal vmlinux's, outside active splice windows."""
        built = self.image.text_bytes(code.start, code.end - code.start)
        spliced = [ByteRange(r.point, r.window_length) for r in active]
        for offset, (now, was) in enumerate(zip(guest, built)):
            address = code.start + offset
            if now != was and not any(address in window for window in spliced):
                raise RigError(f"{code.name}+{offset:#x} in the guest is {now:#04x}, vmlinux has {was:#04x}: "
                               "the running kernel is not the one the rig built",
                               hint="reboot the guest with the rig's kernel: invoke halt; invoke boot")

    # ---- the operations -------------------------------------------------------------------
    def resolve_point(self, function: str, offset: int | None = None, address: int | None = None) -> tuple[FunctionCode, int]:
        symbol = self.image.function(function, containing=address)  # an address picks one of same-named statics
        code = _decoded(self.image, symbol)
        if address is not None and offset is not None:
            raise RigError("give --offset or --addr, not both")
        point = address if address is not None else symbol.address + (offset or 0)
        if not code.start <= point < code.end:
            raise SpliceRefused("outside-function", f"{point:#x} is outside {function} "
                                f"({code.start:#x}-{code.end:#x})", f"offsets run from 0 to {code.end - code.start - 1}")
        return code, point

    def splice(self, function: str, mode: Mode = Mode.TRAP, policy: Policy | None = None,
               offset: int | None = None, address: int | None = None,
               patch_kind: PatchKind = PatchKind.COUNTER, retries: int = 20,
               springboards: int | None = None, call_target: int | None = None,
               own_vector: bool = False) -> SpliceResult:
        """One splice (a batch of one). ``springboards``/``call_target``: see
        :func:`rig.splicer.plan.plan_splice` (benchmarks). ``own_vector`` (trap mode): dispatch
        through a free IDT vector of the splice's own instead of the shared vector's table lookup."""
        request = PointRequest(function, mode, policy, offset, address, patch_kind, springboards, call_target,
                               own_vector)
        done = self.splice_many([request], retries=retries)
        return SpliceResult(done.plans[0], done.stall_s, done.busy_retries, done.vectors[0],
                            prep_stall_s=done.prep_stall_s, stage_stall_s=done.stage_stall_s,
                            held_slots=done.held_slots)

    def splice_many(self, requests: Sequence[PointRequest], retries: int = 20, strict: bool = True) -> BatchResult:
        """Plan every point, then apply them all, all or nothing (the kernel's ``text_poke_bp_batch``
        is the model): the repository side of every splice written and read back in a staging stop,
        then every point in one more stop. ``strict``: the first refusal in planning ends the batch
        (else refused points are listed in the result and the rest goes ahead).

        A free slot whose patch area a task or the vCPU may still return to (the relocated code of a
        splice undone while a task slept under it, e.g. in a displaced ``call``) is held: the staging
        stop names every held slot and, when the plans took one, writes nothing and the batch is
        planned again without them. Only when no free slot is left but held ones is the batch
        refused, as busy."""
        resolved = [(request, *self.resolve_point(request.function, request.offset, request.address))
                    for request in requests]
        snap = self.prep(read_idt=any(request.own_vector for request in requests))
        held: dict[int, BusyWord] = {}  # only for this call: a slot released by its task is free again
        # Each round avoids every slot seen held so far, so any slot it finds held is a new one and
        # the rounds end; in practice after one more (tasks only leave a free patch area, never enter).
        while True:
            planned = self._plan_batch(resolved, snap, held, strict)
            if not planned.plans:
                return BatchResult([], [], planned.refused, 0.0, self.last_prep_stall_s or 0.0, 0)
            try:
                return self._apply_batch(planned, snap, retries, held)
            except _SlotsHeld as found:
                held.update(found.held)

    def _plan_batch(self, resolved: Sequence[tuple[PointRequest, FunctionCode, int]], snap: GuestSnapshot,
                    held: dict[int, BusyWord], strict: bool) -> _PlannedBatch:
        """Every point planned against the prep stop's snapshot, each in the lowest slot neither in
        use nor ``held``."""
        live_records = [record for _, record in snap.active()]
        used = {index for index, _ in snap.active()}
        planned = _PlannedBatch(live_records)
        # Indexed once and grown with each plan's record: a point's checks do not rescan the batch.
        active = LiveSplices(live_records)
        lowest_free = 0  # slots only get taken here, so the lowest free one only moves up
        for request, code, point in resolved:
            while lowest_free < self.layout.slots and (lowest_free in used or lowest_free in held):
                lowest_free += 1
            if lowest_free == self.layout.slots:
                if held:  # free slots are left, each held: only waiting for the task helps
                    raise _all_held(held)
                self.layout.free_slot(used)  # all taken: refused
            slot = lowest_free
            own = self._free_own_vector(snap, exclude=set(planned.vectors)) if request.own_vector else None
            try:
                plan = self._plan(code, point, request.mode, request.policy, slot, request.patch_kind,
                                  snap.header.vector, active,
                                  springboards=request.springboards, call_target=request.call_target,
                                  own_vector=own)
            except SpliceRefused as refusal:
                if strict:
                    raise
                planned.refused.append((request, refusal))
                continue
            used.add(slot)
            planned.plans.append(plan)
            if plan.window.length > code.instruction_at(point).size:
                planned.wide.extend(plan.busy_ranges)
            if plan.record is not None:
                active.add(plan.record)
            planned.vectors.append(modes.select(request.mode, snap.header.vector, own).vector() or 0)  # jmp: none
            planned.codes[code.start] = code
        return planned

    def _held_slots(self, words: Sequence[tuple[int, str]], used: Collection[int]) -> dict[int, BusyWord]:
        """Free slots (not in ``used``) whose patch area one of ``words`` lies in, anywhere: code a
        task or the vCPU may still return to, which reusing the slot would overwrite."""
        first, size = self.layout.patch_area(0), repository.PATCH_AREA_SIZE
        held: dict[int, BusyWord] = {}
        for value, origin in words:
            slot = (value - first) // size  # one division a word: every stack word of every task
            if 0 <= slot < self.layout.slots and slot not in used and slot not in held:
                held[slot] = BusyWord(value, ByteRange(self.layout.patch_area(slot), size), origin)
        return held

    def _apply_batch(self, planned: _PlannedBatch, snap: GuestSnapshot, retries: int,
                     held: dict[int, BusyWord]) -> BatchResult:
        """The staging stop and the splice stop of a planned batch; :class:`_SlotsHeld` (nothing
        written) when the staging stop finds a slot the plans took held."""
        plans, codes, wide, live_records = planned.plans, planned.codes, planned.wide, planned.live_records
        # int3: vector 3 is re-pointed at the rig's stub before any point.
        gate = self._int3_gate_writes(snap.int3_gate, to_rig=True) if any(p.mode is Mode.INT3 for p in plans) else []
        # What no branch leads to yet (patch areas, springboards, dispatch buckets, slot records and
        # flags) is staged in a first stop; the gates and the points that make it live follow in a
        # second, the stop the guest notices.
        staged = [_whole_area(write) for plan in plans for write in plan.writes[:-1] if write.role != "idt-gate"]
        live = [write for plan in plans for write in plan.writes[:-1] if write.role == "idt-gate"] + gate
        points = [plan.writes[-1] for plan in plans]
        what = plans[0].summary() if len(plans) == 1 else f"{len(plans)} points in {len(codes)} function(s)"
        # Writes merge across gaps up to a patch area's size: the gaps then hold dispatch buckets,
        # records and text that do not change while the journal is open, never a live counter.
        transaction = Transaction(self.gdb, self.layout, f"splice {what}", [staged, [*live, *points]],
                                  commit=points[-1], merge_gap=repository.PATCH_AREA_SIZE - 1)
        gone = [ByteRange(self.layout.patch_area(plan.slot), repository.PATCH_AREA_SIZE) for plan in plans]
        windows = [window for plan in plans for window in plan.busy_ranges]
        used = {index for index, _ in snap.active()}

        def stage() -> None:
            with self._stopped():
                # One pipeline reads everything the plans rest on; then the staged writes.
                batch = self.gdb.batch()
                texts = [(code, batch.read(code.start, code.end - code.start)) for code in codes.values()]
                busy = self._queue_busy(batch, snap.tasks)
                transaction.queue_reads(batch)
                batch.run()
                for code, text in texts:
                    self._check_function_text(code, text.value, live_records)
                size = repository.SLOT_RECORD_SIZE
                taken = [plan.slot for plan in plans if transaction.old_at(self.layout.in_use_flag(plan.slot), 1) != b"\0"
                         or transaction.old_at(self.layout.slot_record(plan.slot), size)
                         != repository.encode_slot(snap.slots[plan.slot])]
                if taken:
                    raise RigError(f"repository slot(s) {', '.join(map(str, taken))} changed since it was read",
                                   hint="is another rig process splicing? retry")
                transaction.check()
                words = self._busy_words(busy)
                # Every free slot is looked at, not only those planned: the next round avoids them all.
                found = self._held_slots(words, used)
                if any(plan.slot in found for plan in plans):
                    raise _SlotsHeld(found)
                # Windows too, though the points wait for the next stop: a busy point writes nothing.
                self._refuse_if_busy(windows, gone, words)
                transaction.stage(1)

        def commit() -> None:
            with self._stopped():
                # The busy check again, in the stop that writes the points, and their bytes as journaled.
                # Only windows wider than one instruction need it: a window of one whole instruction has
                # no byte a task or the vCPU can resume at but its first (return addresses and interrupted
                # EIPs are instruction boundaries), so there the stop is the point and its read-back. The
                # staging stop checked every window and every patch area (nothing enters a free patch
                # area between the two stops: no branch leads there yet).
                batch = self.gdb.batch()
                busy = self._queue_busy(batch, snap.tasks) if wide else None
                transaction.queue_commit_reads(batch)
                batch.run()
                transaction.check_commit()
                if busy is not None:
                    self._refuse_if_busy(wide, (), self._busy_words(busy))
                transaction.apply()

        _, staging_retries = _with_retries(stage, retries)
        stage_stall_s = self.gdb.last_stall_s or 0.0
        try:
            _, commit_retries = _with_retries(commit, retries)
        except RigError as failed:
            if transaction.open and not isinstance(failed, GdbDied):  # (a dead gdb: the next command rolls back)
                with self._stopped():
                    transaction.abandon()
            raise
        self._changed()
        return BatchResult(plans, planned.vectors, planned.refused, self.gdb.last_stall_s or 0.0,
                           self.last_prep_stall_s or 0.0, staging_retries + commit_retries,
                           stage_stall_s=stage_stall_s,
                           held_slots=tuple(slot for slot in sorted(held) if slot < max(p.slot for p in plans)))

    def _own_vector(self, vector: int) -> OwnVector:
        """The gate a vector of a splice's own had before (at ``ignore_int``, as 2.4's setup_idt made it)."""
        free_gate = idt.make_trap_gate(self.image.symbol("ignore_int").address).encode()
        return OwnVector(vector, self.image.symbol("idt_table").address, free_gate)

    def _free_own_vector(self, snap: GuestSnapshot, exclude: Collection[int] = ()) -> OwnVector:
        """A vector whose gate is still the kernel's ignore_int gate (from the prep stop's IDT) and
        that no splice of the same batch took (``exclude``)."""
        assert snap.idt is not None
        try:
            vector = idt.find_free_vector(snap.idt, self.image.symbol("ignore_int").address, prefer=None,
                                          exclude={snap.header.vector, *exclude})
        except RigError:
            raise RigError("no free IDT vector for a trap splice of its own",
                           hint="use the shared vector (--dispatch table) or undo other own-vector splices") from None
        return self._own_vector(vector)

    @property
    def _int3_gate_address(self) -> int:
        return self.image.symbol("idt_table").address + 3 * idt.GATE_SIZE

    def _int3_gate_writes(self, gate_now: bytes, to_rig: bool) -> list[MemoryWrite]:
        return int3.vector3_writes(gate_now, self._int3_gate_address, self.image.symbol("int3").address,
                                   self.layout.int3_handler, to_rig)

    def _plan(self, code: FunctionCode, point: int, mode: Mode, policy: Policy | None, slot: int,
              patch_kind: PatchKind, vector: int, active: LiveSplices,
              springboards: int | None = None, call_target: int | None = None,
              own_vector: OwnVector | None = None) -> SplicePlan:
        """``policy=None`` is "auto": the tactics of :data:`rig.splicer.plan.TACTICS` in turn."""
        options = dict(patch_kind=patch_kind, vector=vector, springboard_space=padding_gaps(self.image),
                       active=active, springboards=springboards, call_target=call_target, own_vector=own_vector)
        if policy is None:
            return plan_auto(code, point, mode, self.layout, slot, **options)
        return plan_splice(code, point, mode, policy, self.layout, slot, **options)  # type: ignore[arg-type]

    def unsplice(self, slot: int, retries: int = 20) -> UnspliceResult:
        return self.unsplice_many([slot], retries=retries)[0]

    def unsplice_many(self, slots: Sequence[int] | None = None, retries: int = 20) -> list[UnspliceResult]:
        """Undo the splices in ``slots`` (None: every live one) in one guest stop: every point back
        first, then the repository side. A splice found busy waits for the next round (the guest
        runs in between) while the others go; after ``retries`` rounds the refusal names what was
        undone and what is still live."""
        done: list[UnspliceResult] = []
        remaining: list[int] | None = list(slots) if slots is not None else None
        busy: list[tuple[int, SpliceRefused]] = []
        for attempt in range(retries + 1):
            snap = self.prep(install=False, missing_ok=True)
            live = dict(snap.active()) if snap is not None else {}
            if remaining is None:
                remaining = sorted(live)
            missing = [slot for slot in remaining if slot not in live]
            if missing:
                raise RigError(f"no active splice in slot {missing[0]}",
                               hint=f"active slots: {', '.join(map(str, sorted(live))) or 'none'} (invoke splices)")
            if not remaining:
                return done
            assert snap is not None
            round_done, busy = self._unsplice_round(snap, remaining)
            done += round_done
            remaining = [slot for slot, _ in busy]
            if not remaining:
                break
            if attempt < retries:
                time.sleep(_BUSY_RETRY_PAUSE_S)  # let the guest run on before looking again
        if busy:
            if not done and len(busy) == 1:
                raise busy[0][1]
            undone = ", ".join(f"{r.slot} ({r.function})" for r in done) or "none"
            still = "; ".join(f"slot {slot}: {refusal.message}" for slot, refusal in busy)
            raise SpliceRefused("busy", f"unspliced {len(done)} of {len(done) + len(busy)}: undone {undone}; "
                                f"still live: {still}", "run invoke unsplice all again in a moment")
        return done

    def _unsplice_round(self, snap: GuestSnapshot, slots: Sequence[int]
                        ) -> tuple[list[UnspliceResult], list[tuple[int, SpliceRefused]]]:
        """One stop: the busy check for each of ``slots``, then one transaction for those not busy."""
        live = dict(snap.active())
        undos = {}
        for slot in slots:
            record = live[slot]
            if self.image.text_bytes(record.point, record.window_length) != record.original:
                raise RigError(f"slot record for {record.point:#x} holds bytes that differ from vmlinux",
                               hint="the repository is damaged; reboot the guest")
            own = self._own_vector(record.vector) if record.vector else None
            undos[slot] = undo_writes(self.layout, slot, record, expect_new=None, own_vector=own)
        everything = self._undo_transaction(snap, live, list(slots), undos)
        with self._stopped():
            # One pipeline: the busy check, the counters, and the old bytes for undoing them all.
            batch = self.gdb.batch()
            busy_reads = self._queue_busy(batch, snap.tasks)
            counters = {slot: batch.read(live[slot].counter_address, 4) for slot in slots if live[slot].counter_address}
            everything.queue_reads(batch)
            batch.run()
            words = self._busy_words(busy_reads)
            busy: list[tuple[int, SpliceRefused]] = []
            going: list[int] = []
            for slot in slots:
                try:
                    self._refuse_if_busy([ByteRange(live[slot].point, live[slot].window_length)],
                                         self._unsplice_gone(slot, live[slot]), words)
                    going.append(slot)
                except SpliceRefused as refusal:
                    busy.append((slot, refusal))
            if going == list(slots):
                everything.check()
                everything.apply()
            elif going:  # some are busy: undo the others alone (their own reads: one more pipeline)
                self._undo_transaction(snap, live, going, undos).run()
        results = [UnspliceResult(slot, self.image.function_at(live[slot].point).name, live[slot].point,
                                  _u32(counters[slot].value) if slot in counters else 0, self.gdb.last_stall_s or 0.0,
                                  prep_stall_s=self.last_prep_stall_s or 0.0) for slot in going]
        if going:
            self._changed()
        return results, busy

    def _undo_transaction(self, snap: GuestSnapshot, live: dict[int, SlotRecord], going: Sequence[int],
                          undos: dict[int, list[MemoryWrite]]) -> Transaction:
        """Undoing ``going`` as one transaction: every point back first (the last one commits), then
        the rest; vector 3 back to the kernel when no int3 splice stays."""
        staying = [record for slot, record in live.items() if slot not in going]
        points = [undos[slot][0] for slot in going]
        rest = [write for slot in going for write in undos[slot][1:]]
        if any(live[slot].mode == Mode.INT3 for slot in going) and not any(r.mode == Mode.INT3 for r in staying):
            rest += self._int3_gate_writes(snap.int3_gate, to_rig=False)
        names = ", ".join(f"slot {slot} ({self.image.function_at(live[slot].point).name} at {live[slot].point:#x})"
                          for slot in going[:3]) + (f" and {len(going) - 3} more" if len(going) > 3 else "")
        # Scattered buckets, records and flags merge as a splice's do (one stop: nothing runs between
        # reading a gap and rewriting it).
        return Transaction(self.gdb, self.layout, f"unsplice {names}", [points, rest], commit=points[-1],
                           merge_gap=repository.PATCH_AREA_SIZE - 1)

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    def _unsplice_gone(self, slot: int, record: SlotRecord) -> list[ByteRange]:
        """Code no one may be inside, anywhere, when a splice goes: its springboards (given back to
        padding), and the dispatch that still leads into it (its mode says which: the shared
        handlers, whose vCPU holds the saved EIP point+branch about to be looked up in an entry
        this releases, or the splice's own vector stub)."""
        own = self._own_vector(record.vector) if record.vector else None
        gone = [ByteRange(board.address, len(board.original)) for board in record.springboards]
        return gone + modes.of_record(record, own_vector=own).dispatch_code(self.layout, slot)

    def unsplice_all(self) -> list[UnspliceResult]:
        """Undo every live splice in one stop (busy ones in later rounds; see :meth:`unsplice_many`)."""
        return self.unsplice_many(None)

    def active(self) -> tuple[Header | None, list[ActiveSplice]]:
        """The repository header and every active splice with its live hit count."""
        with self._stopped():
            header = self.read_header()
            if header is None:
                return None, []
            slots = self.read_slots()
            found = []
            in_use = [(index, record) for index, record in enumerate(slots) if record.in_use]
            counters = self.gdb.read_many([(r.counter_address, 4) for _, r in in_use if r.counter_address])
            counts = iter(counters)
            for index, record in in_use:
                hits = int.from_bytes(next(counts), "little") if record.counter_address else 0
                symbol = self.image.function_at(record.point)
                found.append(ActiveSplice(index, record, symbol.name, record.point - symbol.address, hits))
        return header, found

    def audit(self) -> list[str]:
        """What in the guest disagrees with vmlinux and the repository's own records; [] when the
        two agree: the kernel text equals vmlinux outside live windows and springboards, every live
        splice's point holds its branch and its dispatch leads to its patch, no released slot can
        still be matched, vector 3 is the rig's exactly while int3 splices live, no journal is open."""
        # From _stext: head.S keeps the boot page tables in .text before it, and they change.
        start, end = self.image.symbol("_stext").address, self.image.symbol("_etext").address
        built = self.image.text_bytes(start, end - start)
        with self._stopped():
            batch = self.gdb.batch()
            guest_text = batch.read(start, end - start)
            journal_header = batch.read(self.layout.journal, journal.HEADER_SIZE)
            gate3 = batch.read(self._int3_gate_address, idt.GATE_SIZE)
            idt_table = batch.read(self.image.symbol("idt_table").address, 256 * idt.GATE_SIZE)
            table = batch.read(self.layout.table, dispatch.BUCKETS * dispatch.ENTRY.size)
            batch.run()
            header = self.read_header()
            live = [(i, r) for i, r in enumerate(self.read_slots()) if r.in_use] if header else []
        problems: list[str] = []
        state = journal.decode_header(journal_header.value)
        if state is not None and state.open:
            problems.append("a write journal is open (an interrupted change not yet repaired)")
        allowed = [ByteRange(r.point, r.window_length) for _, r in live]
        allowed += [ByteRange(b.address, len(b.original)) for _, r in live for b in r.springboards]
        differ = [] if guest_text.value == built else [  # the byte walk only where something differs
            start + i for i, (a, b) in enumerate(zip(guest_text.value, built))
            if a != b and not any(start + i in span for span in allowed)]
        for low, high in _runs(differ):
            problems.append(f"kernel text {low:#x}-{high:#x} ({self._where(low)}) differs from vmlinux")
        entries = dispatch.live_entries(table.value)
        for slot, record in live:
            problems += self._audit_splice(slot, record, guest_text.value[record.point - start:][:record.window_length],
                                           table.value, idt.gate_at(idt_table.value, record.vector) if record.vector else None)
        for bucket in set(entries) - {r.bucket for _, r in live}:
            problems.append(f"dispatch bucket {bucket} holds {entries[bucket]}, which no live splice owns: "
                            "the handlers would still match it")
        wants_rig = any(r.mode == Mode.INT3 for _, r in live)
        offset = idt.decode_gate(gate3.value).offset
        if offset != (self.layout.int3_handler if wants_rig else self.image.symbol("int3").address):
            problems.append(f"IDT vector 3 points at {offset:#x}, "
                            f"but {'some' if wants_rig else 'no'} int3 splice is live")
        return problems

    def _audit_splice(self, slot: int, record: SlotRecord, window: bytes, table: bytes,
                      own_gate: idt.Gate | None) -> list[str]:
        where = f"slot {slot} ({self._where(record.point)})"
        first = {Mode.TRAP: (0xCD,), Mode.INT3: (0xCC,), Mode.JMP: (0xE9, 0xEB)}[Mode(record.mode)]
        problems = []
        if not window or window[0] not in first:
            problems.append(f"{where}: the point holds {window.hex()}, not its {Mode(record.mode).name.lower()} branch")
        shared = record.mode in (Mode.TRAP, Mode.INT3) and not record.vector
        key = record.point + record.branch_length
        if shared and (dispatch.lookup(table, key) != record.bucket
                       or dispatch.ENTRY.unpack_from(table, record.bucket * dispatch.ENTRY.size)
                       != (key, record.patch_address)):
            problems.append(f"{where}: the handlers do not find (point+{record.branch_length}, patch) "
                            f"in its bucket {record.bucket}")
        if not shared and record.bucket != dispatch.NO_BUCKET:
            problems.append(f"{where}: a {Mode(record.mode).name.lower()} splice holds dispatch bucket {record.bucket}")
        if own_gate is not None and own_gate.offset != self.layout.vector_stub(slot):
            problems.append(f"{where}: its own vector {record.vector:#x} points at {own_gate.offset:#x}")
        return problems

    def _where(self, address: int) -> str:
        try:
            symbol = self.image.function_at(address)
        except RigError:
            return "outside any function"
        return f"{symbol.name}+{address - symbol.address:#x}"

    def hits_in(self, start: int, end: int) -> dict[int, tuple[int, str]]:
        """{point: (hits, mode)} of every live splice with its point in [start, end), counters read
        in one pipeline (the patch areas of neighbouring slots in one read)."""
        with self._stopped():
            if self.read_header() is None:
                return {}
            inside = [(slot, r) for slot, r in enumerate(self.read_slots())
                      if r.in_use and start <= r.point < end and r.counter_address]
            batch = self.gdb.batch()
            size = repository.PATCH_AREA_SIZE
            runs = [(first, batch.read(self.layout.counter(first), (last - first - 1) * size + 4))
                    for first, last in _runs([slot for slot, _ in inside])]
            batch.run()
        counts = {first + i: _u32(raw.value[i * size:i * size + 4]) for first, raw in runs
                  for i in range((len(raw.value) - 4) // size + 1)}
        return {r.point: (counts[slot], Mode(r.mode).name.lower()) for slot, r in inside}

    def counter(self, slot: int) -> int:
        """The hit counter of a slot's patch area (kept after unsplice, until the slot is reused)."""
        with self._stopped():
            return int.from_bytes(self.gdb.read_memory(self.layout.counter(slot), 4), "little")

    def handler_hits(self) -> int:
        with self._stopped():
            return int.from_bytes(self.gdb.read_memory(self.layout.handler_hits, 4), "little")


def _whole_area(write: MemoryWrite) -> MemoryWrite:
    """A free slot's patch write padded to its whole area: the areas of neighbouring slots become
    one write (never across a live slot's area, whose counter runs while a staged journal is open)."""
    if write.role != "patch":
        return write
    return MemoryWrite(write.address, write.data.ljust(repository.PATCH_AREA_SIZE, b"\0"), write.role, write.expect)


def _runs(addresses: Sequence[int]) -> list[tuple[int, int]]:
    """Consecutive addresses as half-open (start, end) runs."""
    runs: list[tuple[int, int]] = []
    for address in addresses:
        if runs and runs[-1][1] == address:
            runs[-1] = (runs[-1][0], address + 1)
        else:
            runs.append((address, address + 1))
    return runs


@contextmanager
def connect(gdb_socket: Path, kernel: KernelBuild, gdb_path: str | None = None) -> Iterator[Instrumenter]:
    """gdb attached to a running guest's stub, any interrupted change repaired, the guest left
    running; detached on exit. ``gdb_path``: another gdb (fault injection runs one that dies)."""
    with GdbSession(vmlinux=kernel.vmlinux, gdb_path=gdb_path) as gdb:
        gdb.attach(gdb_socket)  # QEMU stops the guest on connect
        manager = Instrumenter(gdb, kernel)
        # A rig process that died inside a change left its journal open: finish that change
        # before the guest runs on.
        manager.repair = recover(gdb, manager.layout)
        gdb.cont()
        yield manager
