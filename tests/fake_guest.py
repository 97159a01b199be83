"""FakeGuest: the guest behind gdb as an in-memory byte map, for ``rig.instrument`` without QEMU.

It satisfies :class:`rig.gdb.memory.GuestMemory` and the :class:`rig.gdb.batch.Pipeline` a real
:class:`~rig.gdb.batch.Batch` runs on: it answers the three gdb/MI commands a batch sends
(``-data-read-memory-bytes``, ``-data-write-memory-bytes``, ``-data-list-register-values``, and the
``restore`` of a binary file larger writes go through) in order, as gdb does, so the rig's own
pipelining and answer parsing are what the tests run.

The memory is the rig guest's 64 MiB direct map at 0xC0000000 (sparse pages), zero except for vmlinux's
allocated sections at their link addresses, the IDT as 2.4's ``trap_init`` leaves it
(:func:`emulator.kernel_idt`) and the e820 map the rig boots with (the repository's physical
16-20 MiB left out). Beyond it nothing is mapped: a read there fails as gdb's does.

What a guest would do on its own is explicit: tasks (:meth:`FakeGuest.add_task`), the vCPU's
registers (:attr:`FakeGuest.registers`), a hook run at every stop (:attr:`FakeGuest.on_stop`),
and a gdb that dies right after its k-th memory write (:meth:`FakeGuest.die_after_writes`, as
``rig.gdb.dying`` does on a real guest), after which :meth:`FakeGuest.reattach` plays the next
command's fresh gdb.
"""
from __future__ import annotations

import atexit
import copy
import shlex
import shutil
import struct
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from emulator import DIRECT_MAP, DIRECT_MAP_SIZE, KERNEL_CS, kernel_idt

from rig.errors import RigError
from rig.gdb.batch import Batch
from rig.gdb.memory import BatchedAccess
from rig.gdb.mi import GdbCommandError, GdbDied, MiResult
from rig.guest.kernel_layout import TaskLayout
from rig.splicer.image import KernelImage
from rig.splicer.repository import RepositoryLayout

# gdb's i386 numbering (the first 16; the fake has no x87/SSE registers).
REGISTER_NAMES = ["eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi",
                  "eip", "eflags", "cs", "ss", "ds", "es", "fs", "gs"]
MiB = 1 << 20
# What `mem=exactmap mem=640K@0 mem=15M@1M mem=44M@20M` leaves in 2.4's e820 map (type 1: RAM).
RIG_E820 = ((0, 640 << 10, 1), (1 * MiB, 15 * MiB, 1), (20 * MiB, 44 * MiB, 1))
PAGE = 4096
TASKS_BASE = DIRECT_MAP + 8 * MiB    # physical 8 MiB: RAM far above the kernel image, for fake tasks
_E820_ENTRY = struct.Struct("<QQI")


_blobs: list[Path] = []


def _blob_directory() -> Path:
    """One scratch directory for this test process's fakes, removed when it exits."""
    if not _blobs:
        _blobs.append(Path(tempfile.mkdtemp(prefix="ts-fake-")))
        atexit.register(shutil.rmtree, _blobs[0], True)
    return _blobs[0]


class FakeGuest(BatchedAccess):
    """A stopped-or-running guest in sparse pages of bytes; see the module docstring."""

    def __init__(self, image: KernelImage, task_layout: TaskLayout, layout: RepositoryLayout | None = None,
                 e820: Sequence[tuple[int, int, int]] = RIG_E820) -> None:
        self.image = image
        self.task_layout = task_layout
        self.layout = layout or RepositoryLayout()
        assert DIRECT_MAP <= self.layout.base and self.layout.base + self.layout.size <= DIRECT_MAP + DIRECT_MAP_SIZE
        self._pages: dict[int, bytearray] = {}  # page number -> bytes; a page never written reads as zero
        for section in image.sections.values():
            if section.data:
                self.poke(section.address, section.data)
        self.poke(image.symbol("idt_table").address, kernel_idt(image))
        e820_map = image.symbol("e820").address
        self.poke(e820_map, struct.pack("<I", len(e820)) + b"".join(_E820_ENTRY.pack(*e) for e in e820))
        self.init_task = image.symbol("init_task_union").address
        # 2.4's static INIT_TASK links init_task to itself: the list holds only init until fork.
        assert self.next_task(self.init_task) == self.init_task
        self._free_task = TASKS_BASE
        # An idle vCPU as gdb usually finds it: in the kernel, on init's stack.
        self.registers: dict[str, int] = {name: 0 for name in REGISTER_NAMES}
        self.registers.update(eip=image.symbol("default_idle").address, cs=KERNEL_CS, ss=0x18,
                              esp=self.init_task + task_layout.stack_size - 0x40, eflags=0x246)
        self.running = True              # as connect() leaves it
        self.stops = 0                   # interrupts of a running guest (stopped() on a running guest)
        self.last_stall_s: float | None = None
        self.on_stop: Callable[[FakeGuest], None] | None = None  # runs at every stop: the guest "ran"
        self.writes: list[tuple[int, bytes]] = []   # every memory write a command made, in order
        self.read_only: list[tuple[int, int]] = []   # (address, length): writes there do not stick
        self.command_count = 0
        self.dead = False
        self._die_after: int | None = None
        self.blob_path: Path | None = _blob_directory() / "writes.bin"  # fakes run one at a time

    # ---- the test's side: no stop needed, nothing counted ----------------------------------------
    def peek(self, address: int, length: int) -> bytes:
        if not self.mapped(address, length):
            raise ValueError(f"{address:#x}+{length} is outside the fake guest's memory")
        out = bytearray()
        for page, start, end in self._spans(address, length):
            chunk = self._pages.get(page)
            out += chunk[start:end] if chunk is not None else bytes(end - start)
        return bytes(out)

    def poke(self, address: int, data: bytes) -> None:
        if not self.mapped(address, len(data)):
            raise ValueError(f"{address:#x}+{len(data)} is outside the fake guest's memory")
        done = 0
        for page, start, end in self._spans(address, len(data)):
            self._pages.setdefault(page, bytearray(PAGE))[start:end] = data[done:done + end - start]
            done += end - start

    @staticmethod
    def mapped(address: int, length: int) -> bool:
        return DIRECT_MAP <= address and address + length <= DIRECT_MAP + DIRECT_MAP_SIZE

    def next_task(self, task: int) -> int:
        return int.from_bytes(self.peek(task + self.task_layout.next_task, 4), "little")

    def add_task(self, stack_words: Sequence[int] = ()) -> int:
        """A sleeping task appended to init's list (as 2.4's SET_LINKS does), its saved esp
        pointing at ``stack_words`` near the top of its kernel stack; its task_struct address."""
        lay = self.task_layout
        task, self._free_task = self._free_task, self._free_task + lay.stack_size
        last = self.init_task
        while self.next_task(last) != self.init_task:
            last = self.next_task(last)
        esp = task + lay.stack_size - 0x40 - 4 * len(stack_words)
        self.poke(esp, struct.pack(f"<{len(stack_words)}I", *stack_words))
        self.poke(task + lay.thread_esp, esp.to_bytes(4, "little"))
        self.poke(task + lay.next_task, self.init_task.to_bytes(4, "little"))
        self.poke(last + lay.next_task, task.to_bytes(4, "little"))
        return task

    def tasks(self) -> list[int]:
        order, task = [self.init_task], self.next_task(self.init_task)
        while task != self.init_task:
            order.append(task)
            task = self.next_task(task)
        return order

    def clone(self) -> FakeGuest:
        """An independent guest with this one's memory, registers and run state (a fresh write log,
        no hook, no armed death): one setup, many experiments."""
        twin = copy.copy(self)
        twin._pages = {page: bytearray(chunk) for page, chunk in self._pages.items()}
        twin.registers, twin.read_only = dict(self.registers), list(self.read_only)
        twin.writes, twin.stops, twin.command_count, twin.on_stop, twin._die_after = [], 0, 0, None, None
        return twin

    def die_after_writes(self, count: int) -> None:
        """gdb dies right after the ``count``-th memory write from now (that write lands)."""
        self._die_after = count

    def reattach(self) -> None:
        """The next command's gdb: attaching stops the guest (a dead gdb left it stopped anyway)."""
        self.dead, self._die_after, self.running = False, None, False

    # ---- run control (GuestMemory) ---------------------------------------------------------------
    @contextmanager
    def stopped(self) -> Iterator[FakeGuest]:
        """As GdbSession.stopped: a running guest is interrupted (counted) and continued after."""
        was_running = self.running
        self.last_stall_s = None
        started = time.perf_counter()
        if was_running:
            self.interrupt()
        try:
            yield self
        finally:
            if was_running:
                self.cont()  # a dead gdb cannot: GdbDied, the guest stays stopped
                self.last_stall_s = time.perf_counter() - started

    def interrupt(self) -> None:
        self._alive()
        if self.running:
            self.running = False
            self.stops += 1
            if self.on_stop is not None:
                self.on_stop(self)

    def cont(self) -> None:
        self._alive()
        self.running = True

    # ---- Pipeline: what a Batch sends --------------------------------------------------------
    def require_stopped(self, action: str) -> None:
        self._alive()
        if self.running:
            raise RigError(f"cannot {action} while the guest runs",
                           hint="use 'with gdb.stopped():' or call interrupt() first")

    def register_names(self) -> list[str]:
        return list(REGISTER_NAMES)

    def commands(self, commands: Sequence[str], timeout_s: float | None = None) -> list[MiResult]:
        """Execute in order, as gdb does; an ``^error`` is raised after the rest ran (gdb runs them
        all), a death at once (commands after the fatal write never reach the guest)."""
        results: list[MiResult] = []
        error: GdbCommandError | None = None
        for command in commands:
            self._alive()
            self.command_count += 1
            try:
                results.append(self._execute(command))
            except GdbCommandError as failed:
                error = error or failed
                results.append(MiResult(command, self.command_count, "error", {"msg": failed.gdb_message}))
        if error is not None:
            raise error
        return results

    def _execute(self, command: str) -> MiResult:
        name, *args = command.split()
        if name == "-data-read-memory-bytes":
            address, length = int(args[0], 16), int(args[1])
            if not self.mapped(address, length):  # gdb's answer for unmapped memory (half in: refused whole here)
                raise GdbCommandError(command, "Unable to read memory.")
            block = {"begin": f"{address:#x}", "offset": "0x0", "end": f"{address + length:#x}",
                     "contents": self.peek(address, length).hex()}
            return MiResult(command, self.command_count, "done", {"memory": [block]})
        if name == "-data-write-memory-bytes":
            address, data = int(args[0], 16), bytes.fromhex(args[1])
            if not self.mapped(address, len(data)):
                raise GdbCommandError(command, f"Could not write memory at {address:#x}")
            return self._write(command, address, data)
        if name == "-interpreter-exec" and args[:2] == ["console", '"restore']:
            # restore FILE binary BIAS START END: the file's bytes START..END at BIAS + START
            path, kind, bias, start, end = shlex.split(command.split(None, 2)[2])[0].split()[1:]
            assert kind == "binary"
            data = Path(path).read_bytes()[int(start, 16):int(end, 16)]
            address = int(bias, 16) + int(start, 16)
            if not self.mapped(address, len(data)):  # gdb only warns, and answers ^done
                return MiResult(command, self.command_count, "done", {},
                                log=["warning: restore: memory write failed ((undocumented errno -1)).\n"])
            return self._write(command, address, data)
        if name == "-data-list-register-values" and args[0] == "x":
            values = [{"number": number, "value": f"{self.registers[REGISTER_NAMES[int(number)]]:#x}"}
                      for number in args[1:]]
            return MiResult(command, self.command_count, "done", {"register-values": values})
        raise AssertionError(f"the fake guest does not know {command!r}")

    def _write(self, command: str, address: int, data: bytes) -> MiResult:
        self.poke(address, self._stuck(address, data) if self.read_only else data)
        self.writes.append((address, data))
        if self._die_after is not None:
            self._die_after -= 1
            if self._die_after == 0:
                self.dead = True
                raise GdbDied("gdb died (fake: killed right after a memory write)")
        return MiResult(command, self.command_count, "done", {})

    # ---- GuestMemory --------------------------------------------------------------------------
    def batch(self) -> Batch:
        return Batch(self)

    def read_registers(self, names: Sequence[str] | None = None) -> dict[str, int]:
        batch = self.batch()
        pending = batch.registers(list(names) if names is not None else REGISTER_NAMES)
        batch.run()
        return pending.value

    # ---- inside ------------------------------------------------------------------------------
    def _alive(self) -> None:
        if self.dead:
            raise GdbDied("the fake guest's gdb is dead", hint="reattach() plays the next command's gdb")

    def _stuck(self, address: int, data: bytes) -> bytes:
        """``data`` as it lands: bytes in a read-only range keep their value, as ROM would."""
        now = self.peek(address, len(data))
        return bytes(now[i] if any(start <= address + i < start + length for start, length in self.read_only)
                     else value for i, value in enumerate(data))

    @staticmethod
    def _spans(address: int, length: int) -> Iterator[tuple[int, int, int]]:
        """(page, start, end) pieces of a region, page by page."""
        while length > 0:
            page, start = divmod(address, PAGE)
            end = min(PAGE, start + length)
            yield page, start, end
            address, length = address + end - start, length - (end - start)
