"""Several gdb/MI requests sent as one pipeline: the guest's stop window pays one round trip.

Reads, writes and register reads are queued, then :meth:`Batch.run` sends every command
before reading the first answer (gdb executes them in order, so a read queued after a write
sees the written bytes).  Each queued read returns a :class:`Pending` that holds its value
once the batch has run.

Writes of :data:`RESTORE_MIN_BYTES` or more go through gdb's ``restore FILE binary`` from one
file of the batch's bytes instead of ``-data-write-memory-bytes``: gdb 13 parses that command's
hex argument with one ``sscanf`` per byte, each of which measures the rest of the string, so the
cost grows with the square of the length (measured on the QEMU stub: 2 KiB 2.2 ms, 16 KiB
19 ms, 128 KiB 290-400 ms, against 0.3, 1.2 and 8 ms restored from a file).  Both end in the
same ``M`` packets to the stub.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Generic, Protocol, TypeVar

from rig.errors import RigError
from rig.gdb.mi import GdbCommandError, MiResult, mi_quote


T = TypeVar("T")
_HEX_RE = re.compile(r"0x[0-9a-fA-F]+")
# Below this a -data-write-memory-bytes is cheaper (restore opens and reads a file: ~0.1 ms a
# command against ~0.05 ms; 20 writes of 128 bytes took 3.5 ms as MI writes, 2.9 ms restored).
RESTORE_MIN_BYTES = 64
RESTORE_COMMAND = "restore"  # rig.gdb.dying counts these as memory writes too
# A read command costs about what 1 KiB more of a read does (~0.1 ms against ~0.1 us a byte,
# measured): regions closer than this are read as one.
READ_GAP = 512


@dataclass
class Pending(Generic[T]):
    """The answer to one queued request, available after ``Batch.run()``."""

    _value: T | None = None
    _done: bool = False

    @property
    def value(self) -> T:
        if not self._done:
            raise RuntimeError("the batch has not run yet")
        return self._value  # type: ignore[return-value]

    def _set(self, value: T) -> None:
        self._value, self._done = value, True


class Pipeline(Protocol):
    """What a batch needs of the gdb session (GdbSession): the session builds batches, so the
    batch knows it only by this."""

    def commands(self, commands: Sequence[str], timeout_s: float | None = None) -> list[MiResult]: ...

    def require_stopped(self, action: str) -> None: ...

    def register_names(self) -> list[str]: ...

    @property
    def blob_path(self) -> Path | None:
        """A file the batch may fill with write data for gdb's ``restore`` (None: MI writes only)."""
        ...


@dataclass
class Batch:
    session: Pipeline
    _commands: list[str] = field(default_factory=list)
    _finishers: list[Callable[[MiResult], None]] = field(default_factory=list)
    _blob: bytearray = field(default_factory=bytearray)   # the bytes the queued restores read

    def read(self, address: int, length: int) -> Pending[bytes]:
        check_region(address, length)
        pending: Pending[bytes] = Pending()
        self._queue(f"-data-read-memory-bytes {address:#x} {length}",
                    lambda result: pending._set(memory_contents(result, address, length)))
        return pending

    def reads(self, regions: Sequence[tuple[int, int]], gap: int = READ_GAP) -> list[Pending[bytes]]:
        """One pending per (address, length), regions that lie within ``gap`` of each other read
        as one (the bytes between them are read and dropped: all of it must be readable)."""
        pendings: list[Pending[bytes]] = [Pending() for _ in regions]
        order = sorted(range(len(regions)), key=lambda i: regions[i][0])
        runs: list[tuple[int, int, list[int]]] = []  # start, end, the regions inside
        for index in order:
            address, length = regions[index]
            check_region(address, length)
            if runs and address <= runs[-1][1] + gap:
                start, end, inside = runs[-1]
                inside.append(index)
                runs[-1] = (start, max(end, address + length), inside)
            else:
                runs.append((address, address + length, [index]))
        for start, end, inside in runs:
            whole = self.read(start, end - start)
            self._finishers[-1] = _split_after(self._finishers[-1], whole, start,
                                               [(regions[i], pendings[i]) for i in inside])
        return pendings

    def write(self, address: int, data: bytes) -> None:
        check_region(address, len(data))
        path = self.session.blob_path
        offset = len(self._blob)
        if len(data) < RESTORE_MIN_BYTES or path is None or address < offset:
            self._queue(f"-data-write-memory-bytes {address:#x} {bytes(data).hex()}", lambda result: None)
            return
        self._blob += data
        # restore FILE binary BIAS START END writes the file's bytes START..END at BIAS + START.
        command = restore_command(path, address - offset, offset, offset + len(data))
        self._queue(f"-interpreter-exec console {mi_quote(command)}", _restored(address, len(data)))

    def registers(self, names: Sequence[str]) -> Pending[dict[str, int]]:
        """Integer registers by name (names must exist on the target: see GdbSession.register_names)."""
        all_names = self.session.register_names()
        unknown = [name for name in names if name not in all_names]
        if unknown:
            raise RigError(f"the target has no register(s) {', '.join(unknown)}",
                           hint=f"known: {', '.join(n for n in all_names if n)}")
        numbers = " ".join(str(all_names.index(name)) for name in names)
        pending: Pending[dict[str, int]] = Pending()
        self._queue(f"-data-list-register-values x {numbers}",
                    lambda result: pending._set(register_values(result, all_names)))
        return pending

    def _queue(self, command: str, finish: Callable[[MiResult], None]) -> None:
        self._commands.append(command)
        self._finishers.append(finish)

    def __len__(self) -> int:
        return len(self._commands)

    def run(self) -> None:
        """Send everything, then collect every answer (raises on the first gdb error)."""
        commands, finishers = self._commands, self._finishers
        self._commands, self._finishers = [], []
        blob, self._blob = self._blob, bytearray()
        if not commands:
            return
        self.session.require_stopped(f"run {len(commands)} memory/register request(s)")
        if blob:
            path = self.session.blob_path
            assert path is not None
            path.write_bytes(blob)
        try:
            results = self.session.commands(commands)
        except GdbCommandError as error:
            raise GdbCommandError(error.command, error.gdb_message,
                                  hint="the address is not mapped in the guest right now") from error
        for finish, result in zip(finishers, results):
            finish(result)


def _split_after(finish_whole: Callable[[MiResult], None], whole: Pending[bytes], start: int,
                 parts: list[tuple[tuple[int, int], Pending[bytes]]]) -> Callable[[MiResult], None]:
    """A merged read's finisher, then each region's slice of what it read."""
    def finish(result: MiResult) -> None:
        finish_whole(result)
        for (address, length), pending in parts:
            pending._set(whole.value[address - start:address - start + length])
    return finish


def restore_command(path: Path, bias: int, start: int, end: int) -> str:
    """The CLI command that writes bytes ``start``..``end`` of ``path`` to ``bias + start``."""
    return f"{RESTORE_COMMAND} {path} binary {bias:#x} {start:#x} {end:#x}"


def _restored(address: int, length: int) -> Callable[[MiResult], None]:
    """A restore answers ^done even when the target refused the write: it only warns."""
    def finish(result: MiResult) -> None:
        warnings = [line.strip() for line in result.log if "warning" in line]
        if warnings:
            raise GdbCommandError(result.command, f"writing {length} bytes at {address:#x}: {warnings[0]}",
                                  hint="the address is not mapped in the guest right now")
    return finish


def check_region(address: int, length: int) -> None:
    if address < 0 or length <= 0 or address + length > 1 << 32:
        raise ValueError(f"bad guest memory region {address:#x}+{length}")


def memory_contents(result: MiResult, address: int, length: int) -> bytes:
    """Join the blocks of a -data-read-memory-bytes answer; insist on all ``length`` bytes."""
    data = bytearray()
    expected = address
    for block in result.payload.get("memory", []):
        begin = int(str(block["begin"]), 16) + int(str(block.get("offset", "0x0")), 16)
        if begin != expected:
            break
        chunk = bytes.fromhex(str(block["contents"]))
        data += chunk
        expected += len(chunk)
    if len(data) != length:
        raise GdbCommandError(result.command, f"only {len(data)} of {length} bytes at {address:#x} are readable",
                              hint="part of the region is not mapped in the guest right now")
    return bytes(data)


def register_values(result: MiResult, all_names: Sequence[str]) -> dict[str, int]:
    registers: dict[str, int] = {}
    for entry in result.payload.get("register-values", []):
        value = str(entry.get("value", ""))
        if _HEX_RE.fullmatch(value):
            registers[all_names[int(entry["number"])]] = int(value, 16)
    return registers
