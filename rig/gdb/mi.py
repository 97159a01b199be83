"""A fast gdb/MI channel: tokened commands and a token-matched read loop.

pygdbmi's GdbController waits ``time_to_check_for_additional_output_sec`` (0.2 s)
after every response. Here each command carries a numeric token and we read gdb's
stdout (non-blocking, ``select`` with a deadline) only until the result record with
that token arrives, which costs about a millisecond per command. Lines are parsed with
pygdbmi's own MI parser. Several commands may be in flight at once (batching); gdb
answers them in order, so stream output between two result records belongs to the
oldest unanswered command.
"""
from __future__ import annotations

import logging
import os
import re
import select
import subprocess
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from pygdbmi.gdbmiparser import parse_response

from rig.errors import RigError

log = logging.getLogger(__name__)

# Result classes that end a command: ^done, ^running, ^connected, ^error, ^exit.
_RESULT_CLASSES = frozenset({"done", "running", "connected", "error", "exit"})


class GdbCommandError(RigError):
    """gdb answered a command with ``^error``."""

    def __init__(self, command: str, gdb_message: str, hint: str | None = None) -> None:
        super().__init__(f"gdb command {command!r} failed: {gdb_message}", hint)
        self.command = command
        self.gdb_message = gdb_message


class GdbTimeout(RigError):
    """gdb did not answer (or the guest did not stop) in time."""


class GdbDied(RigError):
    """The gdb process went away while we were talking to it."""


@dataclass
class MiResult:
    """The result record of one command plus the stream output it produced."""

    command: str
    token: int
    result_class: str
    payload: dict[str, Any]
    console: list[str] = field(default_factory=list)
    log: list[str] = field(default_factory=list)

    @property
    def console_text(self) -> str:
        return "".join(self.console)


def mi_quote(text: str) -> str:
    """An MI c-string, for arguments with spaces or quotes (paths, expressions)."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


_MEMORY_RESULT = re.compile(r'(\d+)\^done,memory=\[((?:\{begin="0x[0-9a-f]+",offset="0x[0-9a-f]+",'
                            r'end="0x[0-9a-f]+",contents="[0-9a-f]*"\},?)*)\]')
_MEMORY_BLOCK = re.compile(r'\{begin="(0x[0-9a-f]+)",offset="(0x[0-9a-f]+)",end="(0x[0-9a-f]+)",'
                           r'contents="([0-9a-f]*)"\}')


def parse_memory_result(line: str) -> dict[str, Any] | None:
    """pygdbmi's record for a ``-data-read-memory-bytes`` answer, parsed with one regex.

    Memory reads dominate the splice stop window, and pygdbmi's general parser unescapes the
    hex contents character by character (5 ms for the 16 KiB slot table, measured); the answer's
    shape is fixed, so a regex gives the same record. Any other line returns None.
    """
    match = _MEMORY_RESULT.fullmatch(line)
    if match is None:
        return None
    blocks = [{"begin": begin, "offset": offset, "end": end, "contents": contents}
              for begin, offset, end, contents in _MEMORY_BLOCK.findall(match.group(2))]
    return {"type": "result", "message": "done", "payload": {"memory": blocks},
            "token": int(match.group(1))}


class MiChannel:
    """Talks MI to one running gdb process; tracks whether the inferior runs."""

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        assert process.stdin and process.stdout and process.stderr
        self._process = process
        self._stdin_fd = process.stdin.fileno()
        self._stdout_fd = process.stdout.fileno()
        self._stderr_fd = process.stderr.fileno()
        for fd in (self._stdin_fd, self._stdout_fd, self._stderr_fd):
            os.set_blocking(fd, False)
        self._read_fds = [self._stdout_fd, self._stderr_fd]
        self._next_token = 1
        self._out_buffer = b""
        self._stderr_tail = b""
        self._pending: deque[MiResult] = deque()  # sent, not yet answered; oldest first
        self._answered: dict[int, MiResult] = {}
        self.running = False  # from *running / *stopped records
        self.last_stop: dict[str, Any] | None = None
        self.stop_count = 0
        self.notifications: deque[dict[str, Any]] = deque(maxlen=200)  # recent =... records

    # --- sending -------------------------------------------------------------

    def send(self, command: str) -> int:
        """Queue ``command`` (an MI command, e.g. ``-data-read-memory-bytes 0x0 4``); return its token."""
        return self.send_many([command])[0]

    def send_many(self, commands: list[str], deadline: float | None = None) -> list[int]:
        """Send several commands in one write; replies are read later with :meth:`wait`."""
        tokens: list[int] = []
        data = bytearray()
        for command in commands:
            if "\n" in command:
                raise ValueError(f"MI command must be one line: {command!r}")
            token = self._next_token
            self._next_token += 1
            tokens.append(token)
            self._pending.append(MiResult(command, token, "", {}))
            data += f"{token}{command}\n".encode()
            log.debug("gdb <- %d%.200s", token, command)  # %.200s: cut lazily, only when logged
        self._write_all(bytes(data), deadline or time.monotonic() + 10.0)
        return tokens

    def _write_all(self, data: bytes, deadline: float) -> None:
        # Keep reading while writing: a big batch could otherwise fill both pipes and deadlock.
        view = memoryview(data)
        while view:
            self._check_alive("writing a command")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise GdbTimeout("timed out writing commands to gdb", hint="gdb is stuck; close the session")
            readable, writable, _ = select.select(self._read_fds, [self._stdin_fd], [],
                                                  remaining)
            if readable:
                self._read_available(readable)
            if writable:
                try:
                    written = os.write(self._stdin_fd, view)
                except BlockingIOError:
                    continue
                except BrokenPipeError:
                    raise self._died("writing a command") from None
                view = view[written:]

    # --- receiving -----------------------------------------------------------

    def wait(self, token: int, timeout: float) -> MiResult:
        """Read until the result record of ``token``; return it (``^error`` is returned, not raised)."""
        deadline = time.monotonic() + timeout
        while token not in self._answered:
            self._pump(deadline, f"waiting for the answer to {self._command_of(token)!r}")
        return self._answered.pop(token)

    def wait_until(self, predicate: Any, timeout: float, what: str) -> None:
        """Read output until ``predicate()`` is true (e.g. until the guest stopped)."""
        deadline = time.monotonic() + timeout
        while not predicate():
            self._pump(deadline, what)

    def poll(self) -> None:
        """Take in whatever gdb has already written, without waiting."""
        self._check_alive("polling")
        readable, _, _ = select.select(self._read_fds, [], [], 0)
        if readable:
            self._read_available(readable)

    def _pump(self, deadline: float, what: str) -> None:
        self._check_alive(what)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise GdbTimeout(f"timed out {what}",
                             hint="the guest or QEMU's GDB stub stopped answering; is QEMU still running?")
        readable, _, _ = select.select(self._read_fds, [], [], remaining)
        if readable:
            self._read_available(readable)

    def _read_available(self, readable: list[int]) -> None:
        if self._stderr_fd in readable:
            chunk = self._read_fd(self._stderr_fd)
            if chunk:
                self._stderr_tail = (self._stderr_tail + chunk)[-4000:]
            elif chunk == b"":
                self._read_fds.remove(self._stderr_fd)  # closed: stop selecting on it
        if self._stdout_fd in readable:
            chunk = self._read_fd(self._stdout_fd)
            if chunk == b"":
                raise self._died("reading its output")
            if chunk is None:
                return
            self._out_buffer += chunk
            *lines, self._out_buffer = self._out_buffer.split(b"\n")
            for line in lines:
                self._handle_line(line.decode("utf-8", "replace").rstrip("\r"))

    @staticmethod
    def _read_fd(fd: int) -> bytes | None:
        """Available bytes; ``b""`` at end of file; None when nothing is there yet."""
        try:
            return os.read(fd, 1 << 16)
        except BlockingIOError:
            return None

    def _handle_line(self, line: str) -> None:
        if not line or line.startswith("(gdb)"):
            return
        log.debug("gdb -> %.200s", line)
        record = parse_memory_result(line) or parse_response(line)
        kind = record["type"]
        if kind == "result":
            self._handle_result(record)
        elif kind in ("console", "log", "target", "output"):
            if self._pending:
                target = self._pending[0].console if kind != "log" else self._pending[0].log
                target.append(str(record["payload"]))
        elif kind == "notify":
            message = record["message"]
            if message == "running":
                self.running = True
            elif message == "stopped":
                self.running = False
                self.last_stop = record["payload"] or {}
                self.stop_count += 1
            else:
                self.notifications.append(record)

    def _handle_result(self, record: dict[str, Any]) -> None:
        token = record.get("token")
        if not self._pending:
            return  # an answer nobody asked for (e.g. untokened); nothing waits on it
        head = self._pending[0]
        if token is not None and token != head.token:
            # gdb answers in order; a mismatch means we lost track. Match by token anyway.
            matches = [p for p in self._pending if p.token == token]
            if not matches:
                return
            head = matches[0]
        self._pending.remove(head)
        head.result_class = record["message"]
        head.payload = record["payload"] or {}
        if head.result_class == "running":
            self.running = True
        self._answered[head.token] = head

    # --- health --------------------------------------------------------------

    def _command_of(self, token: int) -> str:
        for pending in self._pending:
            if pending.token == token:
                return pending.command
        return f"token {token}"

    def _check_alive(self, what: str) -> None:
        if self._process.poll() is not None:
            raise self._died(what)

    def _died(self, what: str) -> GdbDied:
        code = self._process.poll()
        tail = self.stderr_tail.strip()
        detail = f"; its stderr ended with: {tail[-500:]}" if tail else ""
        return GdbDied(f"gdb exited (status {code}) while {what}{detail}",
                       hint="run the same gdb by hand to see why; check the gdb install")

    @property
    def stderr_tail(self) -> str:
        return self._stderr_tail.decode("utf-8", "replace")
