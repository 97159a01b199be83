"""GdbSession: one gdb process attached to QEMU's GDB stub, with typed operations.

The session owns its gdb the way QEMU's ``machine.py`` owns QEMU: ``launch()`` starts
it, ``close()`` detaches (so the guest keeps running), asks gdb to exit, then
terminates and finally kills it, each step with a timeout; the context manager runs
``close()`` on every exit path, so no gdb process is left behind; and should this
process die before that (a SIGKILL included), a watchdog stops its gdb
(:mod:`rig.reaper.lifeline`).
"""
from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType

from rig import tools
from rig.errors import RigError
from rig.gdb.batch import Batch
from rig.gdb.memory import BatchedAccess
from rig.gdb.mi import GdbCommandError, GdbDied, GdbTimeout, MiChannel, MiResult, mi_quote
from rig.gdb.stub import StubAddress
from rig.reaper.lifeline import Lifeline, spawn

_HEX_RE = re.compile(r"0x[0-9a-fA-F]+")
log = logging.getLogger(__name__)


class GdbSession(BatchedAccess):
    """gdb/MI over pipes; every method that talks to gdb has a timeout.

    Typical use::

        with GdbSession(vmlinux=path) as gdb:
            gdb.attach("/run/guest/gdb.sock")      # the guest is now stopped
            code = gdb.read_memory(addr, 16)
            gdb.cont()
            with gdb.stopped():                     # interrupt, work, continue
                gdb.write_memory(addr, b"\\xcd\\x81")
            print(gdb.last_stall_s)
    """

    def __init__(self, vmlinux: str | os.PathLike[str] | None = None, *,
                 architecture: str = "i386",
                 command_timeout_s: float = 10.0,
                 attach_timeout_s: float = 15.0,
                 gdb_path: str | None = None) -> None:
        self.vmlinux = Path(vmlinux) if vmlinux is not None else None
        self.architecture = architecture
        self.command_timeout_s = command_timeout_s
        self.attach_timeout_s = attach_timeout_s
        self._gdb_path = gdb_path
        self._process: subprocess.Popen[bytes] | None = None
        self._lifeline: Lifeline | None = None
        self._mi: MiChannel | None = None
        self._stub: StubAddress | None = None
        self._register_names: list[str] | None = None
        self.last_stall_s: float | None = None  # host time from interrupt to continue, last stopped()
        self.command_count = 0
        self._scratch: Path | None = None  # a directory of this session's own: the batches' restore file

    # --- lifecycle -----------------------------------------------------------

    def __enter__(self) -> GdbSession:
        self.launch()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def launch(self) -> None:
        """Start gdb and prepare it (mi-async, architecture, symbols); nothing is attached yet."""
        if self._process is not None:
            raise RigError("this GdbSession is already launched")
        gdb = self._gdb_path or tools.require("gdb")
        if self.vmlinux is not None and not self.vmlinux.is_file():
            raise RigError(f"kernel symbol file {self.vmlinux} does not exist",
                           hint="build the kernel first (its build directory holds vmlinux)")
        # Should this process die, its gdb is killed, not terminated: on SIGTERM gdb would detach
        # and let the guest run on, perhaps mid-change; killed, it leaves the guest held stopped
        # for the next command's repair, as a gdb that died itself does.
        self._process, self._lifeline = spawn(
            [gdb, "--nx", "--quiet", "--interpreter=mi3"], stop_signals=(signal.SIGKILL,),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            start_new_session=True)  # a ^C meant for us must not reach gdb
        try:
            self._scratch = Path(tempfile.mkdtemp(prefix="ts-gdb-"))
            self._mi = MiChannel(self._process)
            # mi-async must be on before connecting: without it -exec-continue blocks gdb
            # and -exec-interrupt cannot be sent while the guest runs.
            for command in ("-gdb-set mi-async on",
                            "-gdb-set pagination off",
                            "-gdb-set confirm off",
                            "-gdb-set width 0",
                            "-gdb-set height 0",
                            # Always read the guest, never a cache or the file: the guest's text is live.
                            "-gdb-set code-cache off",
                            "-gdb-set stack-cache off",
                            "-gdb-set tcp connect-timeout 3",
                            f"-gdb-set architecture {self.architecture}"):
                self.command(command)
            if self.vmlinux is not None:
                self.command(f"-file-exec-and-symbols {mi_quote(str(self.vmlinux))}", timeout_s=60.0)
                # Loading an ELF picks its own architecture; keep the one asked for.
                self.command(f"-gdb-set architecture {self.architecture}")
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Detach (guest keeps running), ``-gdb-exit``, then terminate/kill. Safe to call twice."""
        process, mi = self._process, self._mi
        if process is None:
            return
        log.debug("gdb pid %d: detach, -gdb-exit, then terminate/kill if needed", process.pid)
        try:
            if mi is not None and process.poll() is None:
                if self._stub is not None:
                    try:
                        self.detach(timeout_s=3.0)
                    except RigError:
                        pass  # stub gone or gdb wedged: exit/kill below still clean up
                try:
                    mi.send("-gdb-exit")
                except RigError:
                    pass
                try:
                    process.wait(timeout=2.0)
                except subprocess.TimeoutExpired:
                    pass
        finally:
            try:
                self._reap(process)
            finally:
                if self._lifeline is not None:
                    self._lifeline.close()
                self._lifeline = None
            self._process = None
            self._mi = None
            self._stub = None
            if self._scratch is not None:
                shutil.rmtree(self._scratch, ignore_errors=True)
                self._scratch = None

    @staticmethod
    def _reap(process: subprocess.Popen[bytes]) -> None:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=2.0)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5.0)
        for pipe in (process.stdin, process.stdout, process.stderr):
            if pipe is not None:
                try:
                    pipe.close()
                except OSError:
                    pass

    @property
    def is_launched(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    # --- raw MI --------------------------------------------------------------

    @property
    def mi(self) -> MiChannel:
        if self._mi is None:
            raise RigError("the gdb session is not launched", hint="use 'with GdbSession(...) as gdb:'")
        return self._mi

    def command(self, command: str, timeout_s: float | None = None) -> MiResult:
        """Run one MI command; raise GdbCommandError on ``^error``."""
        mi = self.mi
        token = mi.send(command)
        self.command_count += 1
        result = mi.wait(token, timeout_s or self.command_timeout_s)
        return self._checked(result)

    def commands(self, commands: Sequence[str], timeout_s: float | None = None) -> list[MiResult]:
        """Send all commands before reading any answer (one round trip's worth of waiting)."""
        if not commands:
            return []
        mi = self.mi
        deadline_s = timeout_s or self.command_timeout_s
        tokens = mi.send_many(list(commands), time.monotonic() + deadline_s)
        self.command_count += len(tokens)
        results = [mi.wait(token, deadline_s) for token in tokens]
        for result in results:
            self._checked(result)
        return results

    @staticmethod
    def _checked(result: MiResult) -> MiResult:
        if result.result_class == "error":
            raise GdbCommandError(result.command, str(result.payload.get("msg", result.payload)))
        return result

    def console(self, cli_command: str, timeout_s: float | None = None) -> str:
        """A CLI command (``info registers``, ``x/4i $pc``) through ``-interpreter-exec console``; its output."""
        result = self.command(f"-interpreter-exec console {mi_quote(cli_command)}", timeout_s)
        return result.console_text

    # --- target connection ---------------------------------------------------

    def attach(self, stub: str | os.PathLike[str] | StubAddress) -> None:
        """Connect to QEMU's GDB stub. QEMU stops the guest when gdb connects."""
        if self._stub is not None:
            raise RigError(f"already attached to {self._stub.describe()}")
        address = StubAddress.parse(stub)
        address.check_present()
        try:
            # -target-select takes its argument verbatim (no MI unquoting), so no quotes here.
            self.command(f"-target-select remote {address.gdb_target()}",
                         timeout_s=self.attach_timeout_s)
        except GdbCommandError as error:
            raise RigError(f"gdb could not connect to QEMU's GDB stub at {address.describe()}: "
                           f"{error.gdb_message}",
                           hint="is the guest running, with -gdb on that address? "
                                "Only one gdb can be attached at a time.") from error
        except GdbTimeout as error:
            raise GdbTimeout(f"no answer from QEMU's GDB stub at {address.describe()} "
                             f"within {self.attach_timeout_s:.0f} s",
                             hint="is QEMU alive (not itself stopped with SIGSTOP)?") from error
        self._stub = address
        self.mi.running = False  # QEMU stopped the guest on connect
        self._wait_stopped("connecting")

    def detach(self, timeout_s: float | None = None) -> None:
        """Leave the guest running and drop the connection."""
        if self._stub is None:
            return
        try:
            # gdb refuses to detach from a running target; QEMU resumes the guest on detach.
            self.interrupt(timeout_s)
            self.command("-target-detach", timeout_s)
        finally:
            self._stub = None

    @property
    def is_attached(self) -> bool:
        return self._stub is not None

    @property
    def stub(self) -> StubAddress | None:
        return self._stub

    # --- run control ---------------------------------------------------------

    @property
    def is_stopped(self) -> bool:
        """True while the guest is halted by gdb (takes in pending async records first)."""
        self._require_attached("ask whether the guest is stopped")
        self.mi.poll()
        return not self.mi.running

    def interrupt(self, timeout_s: float | None = None) -> None:
        """Stop a running guest and wait until gdb reports it stopped. No-op when stopped."""
        self._require_attached("interrupt the guest")
        mi = self.mi
        mi.poll()
        if not mi.running:
            return
        self.command("-exec-interrupt", timeout_s)
        self._wait_stopped("waiting for the guest to stop after -exec-interrupt", timeout_s)

    def cont(self, timeout_s: float | None = None) -> None:
        """``-exec-continue``; returns as soon as gdb says the guest is running."""
        self._require_attached("continue the guest")
        mi = self.mi
        mi.poll()
        if mi.running:
            return
        result = self.command("-exec-continue", timeout_s)
        if result.result_class != "running":
            raise RigError(f"-exec-continue answered ^{result.result_class}, not ^running")

    @contextmanager
    def stopped(self) -> Iterator[GdbSession]:
        """Hold the guest stopped for the body; continue afterwards, even on errors.

        A guest that was already stopped on entry stays stopped and ``last_stall_s``
        becomes None. Otherwise ``last_stall_s`` is the host time from sending the
        interrupt to gdb acknowledging the continue (an upper bound of the guest's stall).
        """
        self._require_attached("stop the guest")
        was_running = not self.is_stopped
        self.last_stall_s = None
        started = time.perf_counter()
        if was_running:
            self.interrupt()
        try:
            yield self
        finally:
            if was_running:
                self.cont()
                self.last_stall_s = time.perf_counter() - started

    def _wait_stopped(self, what: str, timeout_s: float | None = None) -> None:
        mi = self.mi
        mi.wait_until(lambda: not mi.running, timeout_s or self.command_timeout_s, what)

    def _require_attached(self, action: str) -> None:
        if self._stub is None:
            raise RigError(f"cannot {action}: gdb is not attached to a guest", hint="call attach(stub) first")

    # --- memory --------------------------------------------------------------

    def batch(self) -> Batch:
        """Queue reads, writes and register reads; ``run()`` sends them as one pipeline."""
        return Batch(self)

    @property
    def blob_path(self) -> Path | None:
        """Where a batch puts the bytes of its larger writes for gdb's ``restore`` (see
        :mod:`rig.gdb.batch`); None when the path would need quoting on gdb's command line."""
        if self._scratch is None:
            return None
        path = self._scratch / "writes.bin"
        return None if any(c.isspace() or c in "\"'\\" for c in str(path)) else path

    def require_stopped(self, action: str) -> None:
        self._require_attached(action)
        if not self.is_stopped:
            raise RigError(f"cannot {action} while the guest runs",
                           hint="use 'with gdb.stopped():' or call interrupt() first")

    # --- registers and symbols -----------------------------------------------

    def register_names(self) -> list[str]:
        """gdb's register numbering for the connected target (cached)."""
        if self._register_names is None:
            result = self.command("-data-list-register-names")
            self._register_names = [str(name) for name in result.payload.get("register-names", [])]
        return self._register_names

    def read_registers(self, names: Sequence[str] | None = None) -> dict[str, int]:
        """Integer registers by name (eax, ..., eip, eflags, cs, ...; cr0/cr3 where QEMU offers them).

        Vector and x87 registers, whose values are not plain integers, are left out.
        """
        self._require_attached("read registers")
        all_names = self.register_names()
        wanted = [name for name in all_names if name] if names is None else list(names)
        batch = self.batch()
        pending = batch.registers(wanted)
        batch.run()
        return pending.value

    def symbol_address(self, name: str) -> int | None:
        """The address of a kernel symbol from the loaded vmlinux, or None if it has none."""
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.$]*", name):
            raise ValueError(f"not a symbol name: {name!r}")
        try:
            result = self.command(f"-data-evaluate-expression {mi_quote('&' + name)}")
        except GdbCommandError as error:
            if "No symbol" in error.gdb_message:
                return None
            raise
        # e.g. '(<text variable, no debug info> *) 0xc01f9c70 <tcp_sync_mss>'
        match = _HEX_RE.search(str(result.payload.get("value", "")))
        return int(match.group(0), 16) if match else None


__all__ = ["GdbSession", "GdbCommandError", "GdbTimeout", "GdbDied", "StubAddress"]
