"""Start a child (QEMU, gdb) that cannot outlive this process: :func:`spawn`.

Why not ``PR_SET_PDEATHSIG``: it fires when the *thread* that forked the child exits, not the
process, so a child spawned in a pool thread (Dask runs tasks in pool threads) would die while its
owner lives on; and nobody but the child can clear it, which a detached guest (``invoke boot``)
needs. Instead this process keeps the write end of a pipe, the lifeline, that no other process
holds; the kernel closes it when the process dies, however it dies, and a small watchdog process
(:mod:`rig.reaper.watchdog`) that reads the other end stops the child on end of file. The watchdog
signals through a pidfd (never a reused pid) and exits as soon as the child exits.

The child waits at a gate (a shell that reads one line, then execs the real program, same pid)
until its watchdog runs: if this process dies in between, the gate reads end of file and the
program never starts. So there is no moment at which the child runs unguarded.
"""
from __future__ import annotations

import errno
import fcntl
import logging
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rig.reaper import watchdog

log = logging.getLogger(__name__)

SHELL = "/bin/bash"  # not dash (Debian's sh): it takes only fds 0-9 in a redirection
GATE_EXIT = 125  # the gate's status when its owner died before opening it
# $1 is the gate's fd; it is closed before the exec, so the program never sees it.
_GATE = f'fd=$1; shift; read -r go <&"$fd" || exit {GATE_EXIT}; exec {{fd}}<&-; exec "$@"'
_WATCHDOG = Path(watchdog.__file__)
_WATCHDOG_EXIT_S = 15.0  # normally milliseconds; more only if the child resists SIGTERM

# Write ends this process must not share: a fork without exec (multiprocessing's "fork") would
# otherwise hold a lifeline open after this process died, keeping its children alive.
_OWNED: set[int] = set()


def _close_owned_in_fork() -> None:
    for fd in list(_OWNED):
        try:
            os.close(fd)
        except OSError:
            pass
    _OWNED.clear()


os.register_at_fork(after_in_child=_close_owned_in_fork)


class Lifeline:
    """This process's hold on one child: :meth:`close` after the child was stopped and reaped,
    :meth:`release` to let it run on alone. Until one of them, the child dies with this process."""

    def __init__(self, child_pid: int, watchdog_process: subprocess.Popen[bytes], fd: int) -> None:
        self.child_pid = child_pid
        self.watchdog = watchdog_process
        self._fd: int | None = fd

    @property
    def held(self) -> bool:
        return self._fd is not None

    def close(self) -> None:
        """The watchdog exits (were the child still running, it would stop it first). Safe twice."""
        self._end(b"")

    def release(self) -> None:
        """The child may outlive this process (a detached guest); the watchdog exits without a signal."""
        self._end(watchdog.RELEASE)

    def _end(self, word: bytes) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        _OWNED.discard(fd)
        try:
            if word:
                os.write(fd, word)
        except BrokenPipeError:
            pass  # the watchdog already left: the child exited
        finally:
            os.close(fd)
        try:
            self.watchdog.wait(timeout=_WATCHDOG_EXIT_S)
        except subprocess.TimeoutExpired:
            # Left running, it still guards the child and exits with it.
            log.warning("watchdog of pid %d still running after %.0f s", self.child_pid, _WATCHDOG_EXIT_S)


GENTLE = (signal.SIGTERM, signal.SIGKILL)


def spawn(argv: Sequence[str], *, stop_signals: Sequence[signal.Signals] = GENTLE, grace_s: float = 5.0,
          **popen: Any) -> tuple[subprocess.Popen[bytes], Lifeline]:
    """``subprocess.Popen(argv, **popen)`` whose child dies with this process, unless the returned
    lifeline is released first: the watchdog sends it ``stop_signals`` in turn, ``grace_s`` apart."""
    if popen.get("shell"):
        raise ValueError("spawn() takes an argv, not a shell command")
    if not popen.get("close_fds", True):
        raise ValueError("close_fds=False would hand other children's lifelines to this one")
    if shutil.which(argv[0]) is None:  # what Popen would raise; behind the gate it would be exit 127
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), argv[0])
    gate, opener = _pipe()
    _OWNED.add(opener)
    try:
        try:
            child: subprocess.Popen[bytes] = subprocess.Popen(
                gated(gate, argv), pass_fds=(*popen.pop("pass_fds", ()), gate), **popen)
        finally:
            os.close(gate)
        try:
            lifeline = _watch(child.pid, stop_signals, grace_s)
        except BaseException:
            _discard_gated(child, opener)
            raise
        try:
            os.write(opener, b"go\n")
        except BaseException:
            lifeline.close()  # the watchdog stops whatever is left of the child
            child.wait()
            raise
    finally:
        if opener in _OWNED:
            _OWNED.discard(opener)
            os.close(opener)
    log.debug("pid %d: %s, watched by pid %d", child.pid, argv[0], lifeline.watchdog.pid)
    return child, lifeline


def gated(gate: int, argv: Sequence[str]) -> list[str]:
    """``argv`` behind the gate: it starts once a line arrives on fd ``gate``, never at end of file."""
    return [SHELL, "-c", _GATE, "trapsplice-gate", str(gate), *argv]


def _watch(pid: int, stop_signals: Sequence[signal.Signals], grace_s: float) -> Lifeline:
    pidfd = _above_stdio(os.pidfd_open(pid))  # the child is ours and not reaped: the pid is still it
    lifeline_read, lifeline_write = _pipe()
    _OWNED.add(lifeline_write)
    try:
        process = subprocess.Popen([sys.executable, "-I", "-S", str(_WATCHDOG), str(pidfd), str(grace_s),
                                    *(str(int(sig)) for sig in stop_signals)],
                                   stdin=lifeline_read, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                   pass_fds=(pidfd,), start_new_session=True)  # no ^C meant for us
    except BaseException:
        _OWNED.discard(lifeline_write)
        os.close(lifeline_write)
        raise
    finally:
        os.close(lifeline_read)
        os.close(pidfd)
    return Lifeline(pid, process, lifeline_write)


def _discard_gated(child: subprocess.Popen[bytes], opener: int) -> None:
    """The gate never opens: the shell exits without starting the program."""
    _OWNED.discard(opener)
    os.close(opener)
    try:
        child.wait(timeout=5.0)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()


def _pipe() -> tuple[int, int]:
    read_end, write_end = os.pipe()  # both close-on-exec: no other child inherits them
    return _above_stdio(read_end), _above_stdio(write_end)


def _above_stdio(fd: int) -> int:
    """Passed fds keep their number in the child: keep them clear of its stdin, stdout and stderr."""
    if fd > 2:
        return fd
    moved = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3)
    os.close(fd)
    return moved
