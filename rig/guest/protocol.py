"""Host side of the guest init's line protocol on the serial console.

The guest prints ``@ready proto=1 kernel=<release>`` once, then answers each
request ``<id> <command> [args...]`` with exactly one ``@<id> ok key=value ...``
or ``@<id> err <message>``.  ``@event <name> key=value ...`` lines are
unsolicited; lines not starting with ``@`` are kernel printk noise.

:class:`GuestConsole` works over any pexpect spawn object: an ``fdspawn`` on
the unix socket of a ``-chardev socket,...,server=on`` serial port, or a
``pexpect.spawn`` of QEMU with ``-serial stdio``.
"""
from __future__ import annotations

import itertools
import socket
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pexpect
import pexpect.fdpexpect

from rig.errors import RigError

PROTOCOL_VERSION = 1
TAIL_LINES_KEPT = 200


class GuestCommandError(RigError):
    """The guest answered ``err``: the request was understood and refused."""

    def __init__(self, command: str, guest_message: str, tail: str) -> None:
        super().__init__(f"guest refused '{command}': {guest_message}",
                         hint=f"recent console output:\n{tail}" if tail else None)
        self.command = command
        self.guest_message = guest_message


def parse_fields(tokens: list[str], line: str) -> dict[str, str]:
    """``key=value`` tokens to a dict; anything else means a garbled line."""
    fields: dict[str, str] = {}
    for token in tokens:
        key, sep, value = token.partition("=")
        if not sep or not key:
            raise RigError(f"malformed guest line (token {token!r} is not key=value): {line!r}",
                           hint="the console may be shared with another program, or the guest "
                                "init does not match this rig version")
        fields[key] = value
    return fields


@dataclass(frozen=True)
class Reply:
    id: int
    ok: bool
    fields: dict[str, str] = field(default_factory=dict)
    message: str = ""   # the text of an err reply
    raw: str = ""

    def str_field(self, name: str) -> str:
        try:
            return self.fields[name]
        except KeyError:
            raise RigError(f"guest reply has no field '{name}': {self.raw!r}",
                           hint="the guest init may be older than the rig; rebuild the initrd") from None

    def int_field(self, name: str) -> int:
        value = self.str_field(name)
        try:
            return int(value, 10)
        except ValueError:
            raise RigError(f"guest reply field {name}={value!r} is not an integer: {self.raw!r}") from None

    def bool_field(self, name: str) -> bool:
        return self.int_field(name) != 0


@dataclass(frozen=True)
class Event:
    name: str
    fields: dict[str, str]
    raw: str


@dataclass(frozen=True)
class ReadyInfo:
    proto: int
    kernel: str
    fields: dict[str, str]
    raw: str


Parsed = Reply | Event | ReadyInfo | None


def parse_line(line: str) -> Parsed:
    """Classify one console line; ``None`` for noise (anything not starting with '@')."""
    line = line.strip("\r\n")
    if not line.startswith("@"):
        return None
    head, _, rest = line.partition(" ")
    tokens = rest.split()
    if head == "@ready":
        fields = parse_fields(tokens, line)
        try:
            proto = int(fields["proto"])
        except (KeyError, ValueError):
            raise RigError(f"guest banner without a valid proto=: {line!r}") from None
        return ReadyInfo(proto=proto, kernel=fields.get("kernel", ""), fields=fields, raw=line)
    if head == "@event":
        if not tokens:
            raise RigError(f"guest event without a name: {line!r}")
        return Event(name=tokens[0], fields=parse_fields(tokens[1:], line), raw=line)
    ident = head[1:]
    if not ident.isdigit() or not tokens or tokens[0] not in ("ok", "err"):
        return None  # '@' from something else (e.g. a printk that starts with '@'): noise
    if tokens[0] == "ok":
        return Reply(id=int(ident), ok=True, fields=parse_fields(tokens[1:], line), raw=line)
    message = rest.partition(" ")[2].strip()
    return Reply(id=int(ident), ok=False, message=message, raw=line)


class GuestConsole:
    """Requests and replies over the guest's serial console."""

    def __init__(self, spawn: pexpect.spawnbase.SpawnBase, log_path: Path | None = None) -> None:
        self._spawn = spawn
        self._log = open(log_path, "ab") if log_path is not None else None
        self._buffer = ""
        self._tail: deque[str] = deque(maxlen=TAIL_LINES_KEPT)
        self._events: deque[Event] = deque()
        self._ids = itertools.count(1)
        self._owned_socket: socket.socket | None = None
        self.ready: ReadyInfo | None = None

    @classmethod
    def connect_unix(cls, path: Path, log_path: Path | None = None,
                     timeout: float = 10.0) -> GuestConsole:
        """Connect to a QEMU ``-chardev socket,path=PATH,server=on`` serial port."""
        deadline = time.monotonic() + timeout
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(str(path))
                break
            except (FileNotFoundError, ConnectionRefusedError) as exc:
                sock.close()
                if time.monotonic() >= deadline:
                    raise RigError(f"cannot connect to the guest serial socket {path}: {exc}",
                                   hint="is QEMU running with -chardev socket,path=...,server=on?") from None
                time.sleep(0.05)
        console = cls(pexpect.fdpexpect.fdspawn(sock.fileno()), log_path)
        console._owned_socket = sock
        return console

    def close(self) -> None:
        if self._owned_socket is not None:
            self._owned_socket.close()
            self._owned_socket = None
        if self._log is not None:
            self._log.close()
            self._log = None

    # --- reading ------------------------------------------------------------

    def tail(self, n: int = 20) -> str:
        """The last ``n`` console lines (noise included), for error messages."""
        lines = list(self._tail)[-n:]
        if self._buffer:
            lines.append(self._buffer)
        return "\n".join(lines[-n:])

    def _fill(self, deadline: float) -> bool:
        """Read what is available (waiting until ``deadline``); False on timeout."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        try:
            chunk: Any = self._spawn.read_nonblocking(size=4096, timeout=remaining)
        except pexpect.TIMEOUT:
            return False
        except pexpect.EOF:
            raise self._console_error("the guest console closed (QEMU exited or the socket dropped)") from None
        if self._log is not None:
            self._log.write(chunk if isinstance(chunk, bytes) else chunk.encode())
            self._log.flush()
        self._buffer += chunk.decode("utf-8", errors="replace") if isinstance(chunk, bytes) else chunk
        return True

    def _next_line(self, deadline: float) -> str | None:
        while "\n" not in self._buffer:
            if not self._fill(deadline):
                return None
        line, _, self._buffer = self._buffer.partition("\n")
        line = line.strip("\r")
        self._tail.append(line)
        return line

    def _next_message(self, deadline: float) -> Reply | Event | ReadyInfo | None:
        """The next protocol message; None on timeout. Noise is skipped, events are queued."""
        while True:
            line = self._next_line(deadline)
            if line is None:
                return None
            parsed = parse_line(line)
            if parsed is None:
                continue
            if isinstance(parsed, Event):
                self._events.append(parsed)
            return parsed

    def _messages(self, timeout: float, missing: str) -> Iterator[Reply | Event | ReadyInfo]:
        """Protocol messages as they arrive; RigError "<missing> within <timeout>s" when time is up."""
        deadline = time.monotonic() + timeout
        while True:
            message = self._next_message(deadline)
            if message is None:
                raise self._console_error(f"{missing} within {timeout:g}s")
            yield message

    def _console_error(self, message: str) -> RigError:
        return RigError(message, hint=f"recent console output:\n{self.tail()}")

    # --- API ----------------------------------------------------------------

    def wait_ready(self, timeout: float) -> ReadyInfo:
        """Wait for the boot banner ``@ready proto=1 kernel=...``."""
        for message in self._messages(timeout, "the guest did not print its @ready banner"):
            if isinstance(message, ReadyInfo):
                if message.proto != PROTOCOL_VERSION:
                    raise RigError(f"guest speaks protocol {message.proto}, the rig speaks "
                                   f"{PROTOCOL_VERSION}", hint="rebuild the initrd from this checkout")
                self.ready = message
                return message

    def request(self, command: str, timeout: float = 10.0) -> Reply:
        """Send one request and return its ``ok`` reply.

        Raises :class:`GuestCommandError` on an ``err`` reply and RigError on
        timeout, a closed console, or a guest that restarted meanwhile.
        """
        if "\n" in command or "\r" in command or not command.strip():
            raise RigError(f"invalid guest command {command!r}",
                           hint="a command is one non-empty line")
        ident = next(self._ids)
        self._spawn.send(f"{ident} {command}\n".encode())
        for message in self._messages(timeout, f"no reply from the guest to '{command}'"):
            if isinstance(message, ReadyInfo):
                self.ready = message
                raise self._console_error(f"the guest restarted while running '{command}'")
            if isinstance(message, Reply) and message.id == ident:
                if not message.ok:
                    raise GuestCommandError(command, message.message, self.tail())
                return message
            # replies to older ids (e.g. from before a resync) are stale: skip

    def events(self) -> list[Event]:
        """Events received so far and not yet taken; clears the queue."""
        taken = list(self._events)
        self._events.clear()
        return taken

    def wait_event(self, name: str, timeout: float) -> Event:
        """Take the first queued or newly arriving event called ``name``."""
        messages = self._messages(timeout, f"no '@event {name}' from the guest")
        while True:
            for event in self._events:
                if event.name == name:
                    self._events.remove(event)
                    return event
            next(messages)  # arriving events are queued by _next_message

    def resync(self, timeout: float = 10.0) -> Reply:
        """Get in step with an already running guest: blank line, drain, ping."""
        self._spawn.send(b"\n")
        # let stale output drain (events in it are still queued), for at most 1 s
        drain_end = time.monotonic() + 1.0
        while time.monotonic() < drain_end:
            if self._next_message(min(time.monotonic() + 0.2, drain_end)) is None:
                break
        self._buffer = ""  # a half line left over cannot be a reply to the ping
        return self.request("ping", timeout=timeout)
