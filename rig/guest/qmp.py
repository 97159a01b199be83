"""QEMU's run state through QMP, and the lock that lets one rig process at a time drive a guest.

The GDB stub can tell a running guest from a stopped one only to the gdb attached to it; QMP
(QEMU's machine protocol, on a unix socket of the private run directory) tells anyone: a guest
that a dead rig process left stopped reads as ``debug``. The rig talks QMP through qemu.qmp,
QEMU's own Python library.
"""
from __future__ import annotations

import errno
import fcntl
import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from qemu.qmp.legacy import QEMUMonitorProtocol

from rig.errors import RigError

log = logging.getLogger(__name__)
_QMP_TIMEOUT_S = 3.0


@dataclass(frozen=True)
class RunState:
    running: bool
    status: str   # QMP's RunState: "running", "debug" (stopped by gdb), "paused", "guest-panicked", ...


def query_status(socket: Path) -> RunState | None:
    """The guest's run state, or None when it has no QMP socket (booted by an older rig)."""
    if not socket.exists():
        return None
    monitor = QEMUMonitorProtocol(str(socket))
    monitor.settimeout(_QMP_TIMEOUT_S)
    try:
        monitor.connect(negotiate=True)
        reply = dict(monitor.cmd("query-status"))  # the command's return value
    except (OSError, Exception) as error:  # qemu.qmp raises its own ConnectError/ExecuteError kinds
        raise RigError(f"QEMU's monitor at {socket} does not answer ({error})",
                       hint="is QEMU itself stopped or wedged? invoke halt; invoke boot") from error
    finally:
        monitor.close()
    return RunState(bool(reply.get("running")), str(reply.get("status", "unknown")))


@contextmanager
def guest_lock(run_dir: Path, timeout_s: float = 60.0) -> Iterator[None]:
    """Hold the guest for one rig command (gdb takes one client; two commands would interleave
    their stops). The kernel drops the lock when its holder dies, so a killed command never
    leaves the guest locked."""
    path = run_dir / "rig.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as error:
                if error.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                if time.monotonic() > deadline:
                    raise RigError(f"another rig command has held the guest for {timeout_s:.0f} s",
                                   hint="wait for it to finish (invoke bench takes about a minute), "
                                        "or stop it") from None
                time.sleep(0.05)
        yield
    finally:
        os.close(fd)  # closing drops the lock
