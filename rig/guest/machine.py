"""The QEMU process that runs the Linux 2.4.20 guest.

:class:`QemuMachine` owns one qemu-system-i386 process, in the manner of QEMU's own
``qemu.machine.QEMUMachine``: ``launch()`` starts it and waits for the guest's
init banner, ``shutdown()`` stops it with timeouts, and as a context manager it
never leaks the process.  ``detach()`` hands a running guest over to a state file
(``invoke boot``); :meth:`QemuMachine.attach` takes it back (later tasks).  Until it is
detached, the guest also dies with this process, however this process dies (a SIGKILL
included): a watchdog holds its lifeline (:mod:`rig.reaper.lifeline`).

Every endpoint is private: the serial console, the GDB stub and QMP are unix sockets
in a 0700 run directory, and the two NICs (i82557b, driven by 2.4.20's eepro100)
hang off one QEMU hub of their own, with no route to any network: a frame one
sends reaches only the other (the workload's traffic through the driver).
"""
from __future__ import annotations

import logging
import os
import shlex
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from rig import tools
from rig.errors import RigError
from rig.guest.accel import Clock
from rig.guest.protocol import GuestConsole, ReadyInfo
from rig.reaper.lifeline import Lifeline, spawn
from rig.splicer import repository

log = logging.getLogger(__name__)
MIB = 1 << 20
# The component repository: physical 16-20 MiB, left out of the e820 map by
# mem=exactmap so the kernel never allocates it, yet 2.4 still maps it in its
# direct map at PAGE_OFFSET + 16 MiB = 0xC1000000.  No kernel change needed.
PAGE_OFFSET = 0xC0000000  # 2.4 i386: the kernel's direct map of physical memory starts here
REPOSITORY_PHYS = repository.DEFAULT_BASE - PAGE_OFFSET
REPOSITORY_SIZE = repository.DEFAULT_SIZE
GUEST_MEMORY_MB = 64
MEMORY_MAP = (f"mem=exactmap mem=640K@0 mem={REPOSITORY_PHYS // MIB - 1}M@1M "
              f"mem={GUEST_MEMORY_MB - (REPOSITORY_PHYS + REPOSITORY_SIZE) // MIB}M"
              f"@{(REPOSITORY_PHYS + REPOSITORY_SIZE) // MIB}M")
BOOT_ARGS = f"console=ttyS0 root=/dev/ram0 init=/init panic=1 {MEMORY_MAP}"

_SOCKET_APPEAR_S = 10.0
_SHUTDOWN_GRACE_S = 5.0


@dataclass
class MachineConfig:
    bzimage: Path
    initrd: Path
    run_dir: Path
    clock: Clock = field(default_factory=lambda: Clock("tcg"))
    memory_mb: int = GUEST_MEMORY_MB
    extra_append: str = ""
    # None: QEMU's default SeaBIOS (~1 s to the init banner under TCG). qboot is faster to start
    # but leaves 2.4.20 hanging in "Calibrating delay loop" (no timer interrupt arrives).
    firmware: str | None = None

    @property
    def console_socket(self) -> Path:
        return self.run_dir / "console.sock"

    @property
    def gdb_socket(self) -> Path:
        return self.run_dir / "gdb.sock"

    @property
    def qmp_socket(self) -> Path:
        return self.run_dir / "qmp.sock"

    @property
    def console_log(self) -> Path:
        return self.run_dir / "console.log"

    @property
    def qemu_log(self) -> Path:
        return self.run_dir / "qemu.log"

    def argv(self) -> list[str]:
        append = f"{BOOT_ARGS} {self.extra_append}".strip()
        argv = [tools.require("qemu-system-i386"), "-name", "trapsplice", "-machine", "pc",
                *self.clock.qemu_args(), "-m", str(self.memory_mb), "-nodefaults", "-display", "none",
                "-no-reboot", "-kernel", str(self.bzimage), "-initrd", str(self.initrd), "-append", append,
                "-chardev", f"socket,id=console,path={self.console_socket},server=on,wait=on,"
                            f"logfile={self.console_log}",
                "-serial", "chardev:console",
                "-chardev", f"socket,id=gdb,path={self.gdb_socket},server=on,wait=off",
                "-gdb", "chardev:gdb",
                "-qmp", f"unix:{self.qmp_socket},server=on,wait=off",
                "-netdev", "hubport,id=isolated,hubid=0",
                "-device", "i82557b,netdev=isolated,romfile=",
                # a second NIC on the same hub: the workload's frames go eth0 -> hub -> eth1
                "-netdev", "hubport,id=isolated1,hubid=0",
                "-device", "i82557b,netdev=isolated1,romfile="]
        if self.firmware:
            argv += ["-bios", self.firmware]
        return argv


@dataclass(frozen=True)
class BootInfo:
    pid: int
    boot_seconds: float
    ready: ReadyInfo


class QemuMachine:
    """One qemu-system-i386 running the 2.4.20 guest."""

    def __init__(self, config: MachineConfig) -> None:
        self.config = config
        self._process: subprocess.Popen[bytes] | None = None
        self._lifeline: Lifeline | None = None
        self._pid: int | None = None
        self._console: GuestConsole | None = None
        self.boot: BootInfo | None = None

    # -- lifecycle -----------------------------------------------------------
    def launch(self, ready_timeout: float = 60.0) -> BootInfo:
        if self._pid is not None:
            raise RuntimeError("machine already launched")
        self.config.run_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.config.run_dir, 0o700)
        for stale in (self.config.console_socket, self.config.gdb_socket, self.config.qmp_socket,
                      self.config.console_log):
            stale.unlink(missing_ok=True)
        started = time.monotonic()
        log.debug("qemu: %s", shlex.join(self.config.argv()))
        with self.config.qemu_log.open("wb") as qemu_log:
            # A session of its own: the guest may outlive this process (invoke boot, once detached).
            self._process, self._lifeline = spawn(self.config.argv(), stdin=subprocess.DEVNULL, stdout=qemu_log,
                                                  stderr=subprocess.STDOUT, start_new_session=True)
        self._pid = self._process.pid
        try:
            self._connect_console()
            ready = self.console.wait_ready(timeout=ready_timeout)
        except BaseException as exc:
            tail = self._console_tail()
            self.shutdown()
            if isinstance(exc, RigError):
                raise RigError(f"guest did not come up: {exc.message}\n--- console tail ---\n{tail}",
                               hint=f"qemu log: {self.config.qemu_log}") from None
            raise
        self.boot = BootInfo(pid=self._pid, boot_seconds=time.monotonic() - started, ready=ready)
        return self.boot

    def _connect_console(self) -> None:
        deadline = time.monotonic() + _SOCKET_APPEAR_S
        while not self.config.console_socket.exists():
            if self._process is not None and self._process.poll() is not None:
                raise RigError(f"qemu exited at start (code {self._process.returncode}): "
                               f"{self.config.qemu_log.read_text(errors='replace').strip()[-800:]}",
                               hint="check the qemu command line in the log above")
            if time.monotonic() > deadline:
                raise RigError("qemu did not create its console socket in time")
            time.sleep(0.02)
        self._console = GuestConsole.connect_unix(self.config.console_socket)

    @property
    def console(self) -> GuestConsole:
        if self._console is None:
            raise RigError("not connected to the guest console")
        return self._console

    @property
    def pid(self) -> int | None:
        return self._pid

    def _console_tail(self) -> str:
        try:
            text = self.config.console_log.read_text(errors="replace")
        except OSError:
            return "(no console output)"
        return "\n".join(text.splitlines()[-25:]) or "(no console output)"

    def _close_console(self) -> None:
        if self._console is not None:
            self._console.close()
        self._console = None

    def shutdown(self, timeout: float = _SHUTDOWN_GRACE_S) -> None:
        """Stop QEMU: SIGTERM, then SIGKILL after ``timeout``. Safe to call twice."""
        self._close_console()
        pid, self._pid = self._pid, None
        if pid is None:
            return
        if self._process is not None:
            process, self._process = self._process, None
            try:
                if process.poll() is None:
                    log.debug("qemu pid %d: SIGTERM", pid)
                    process.terminate()
                    try:
                        process.wait(timeout=timeout)
                    except subprocess.TimeoutExpired:
                        log.debug("qemu pid %d: still there after %.0f s, SIGKILL", pid, timeout)
                        process.kill()
                        process.wait(timeout=timeout)
            finally:
                self._drop_lifeline(release=False)
        else:
            _stop_foreign(pid, timeout)
        for sock in (self.config.console_socket, self.config.gdb_socket, self.config.qmp_socket):
            sock.unlink(missing_ok=True)

    def detach(self) -> None:
        """Leave QEMU running on its own (``invoke boot``); this object no longer owns it."""
        self._close_console()
        self._drop_lifeline(release=True)
        if self._process is not None:
            # Forget the Popen without killing; the child is in its own session.
            self._process.returncode = 0
            self._process = None
        self._pid = None

    def _drop_lifeline(self, release: bool) -> None:
        lifeline, self._lifeline = self._lifeline, None
        if lifeline is None:
            return
        if release:
            lifeline.release()
        else:
            lifeline.close()

    @classmethod
    def attach(cls, config: MachineConfig, pid: int, connect_console: bool = True) -> "QemuMachine":
        """Take over a guest started by an earlier ``launch()`` + ``detach()``."""
        if not pid_is_qemu(pid):
            raise RigError(f"no guest is running (qemu pid {pid} is gone)", hint="start one with: invoke boot")
        machine = cls(config)
        machine._pid = pid
        if connect_console:
            machine._connect_console()
            machine.console.resync()
        return machine

    def __enter__(self) -> "QemuMachine":
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.shutdown()


def pid_is_qemu(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"qemu-system-i386" in cmdline and b"trapsplice" in cmdline


def _stop_foreign(pid: int, timeout: float) -> None:
    """Stop a QEMU this process did not start (it is not our child: poll /proc)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        log.debug("qemu pid %d: %s", pid, sig.name)
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            _reap_if_child(pid)
            if not pid_is_qemu(pid):
                return
            time.sleep(0.05)


def _reap_if_child(pid: int) -> None:
    """A QEMU launched and detached by this same process is still its child: reap it, no zombie."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass  # not our child (started by an earlier `invoke boot`): init reaps it
