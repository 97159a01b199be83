"""The background guest that ``invoke boot`` leaves running and later tasks attach to.

Its state file (``<cache>/run/guest.json``) records how to reach it: QEMU's pid,
the private run directory with the console and GDB sockets, and which kernel
build and clock it runs with.
"""
from __future__ import annotations

import json
import shutil
import tempfile
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

from rig import instrument, paths
from rig.errors import RigError
from rig.gdb.mi import GdbDied
from rig.guest import accel as accel_mod
from rig.guest import qmp
from rig.guest.accel import Clock
from rig.guest import crash
from rig.guest.crash import ConsoleWatch, CrashRecord
from rig.guest.qmp import RunState
from rig.guest.initrd import build_initrd
from rig.instrument import Instrumenter
from rig.guest.machine import BootInfo, MachineConfig, QemuMachine, pid_is_qemu
from rig.kernel.build import KernelBuild, Progress, ensure_kernel

log = logging.getLogger(__name__)


@dataclass
class GuestState:
    pid: int
    run_dir: str
    kernel_root: str
    initrd: str
    accel: str
    icount_shift: int | None
    accel_reason: str
    boot_seconds: float
    release: str
    started_at: str

    @property
    def clock(self) -> Clock:
        return Clock(self.accel, self.icount_shift)

    @property
    def kernel(self) -> KernelBuild:
        return KernelBuild(Path(self.kernel_root))

    def machine_config(self) -> MachineConfig:
        return MachineConfig(bzimage=self.kernel.bzimage, initrd=Path(self.initrd), run_dir=Path(self.run_dir),
                             clock=self.clock)


def _state_file() -> Path:
    return paths.cache_dir("run") / "guest.json"


def background_run_dir() -> Path:
    return paths.cache_dir("run") / "guest"


def running() -> GuestState | None:
    """The background guest, if its QEMU is still alive (a stale state file is removed)."""
    path = _state_file()
    if not path.exists():
        return None
    state = GuestState(**json.loads(path.read_text()))
    if pid_is_qemu(state.pid):
        return state
    path.unlink(missing_ok=True)
    return None


@dataclass(frozen=True)
class PreparedGuest:
    """Everything needed to launch a guest: kernel, initrd, clock."""

    kernel: KernelBuild
    initrd: Path
    clock: Clock
    accel_reason: str

    def config(self, run_dir: Path) -> MachineConfig:
        return MachineConfig(bzimage=self.kernel.bzimage, initrd=self.initrd, run_dir=run_dir, clock=self.clock)


def prepare(source: Path | None = None, accel: str = "auto", icount_shift: int | None = None,
            progress: Progress | None = None) -> PreparedGuest:
    kernel = ensure_kernel(source, progress=progress) if progress else ensure_kernel(source)
    initrd = build_initrd(paths.cache_dir("guest"))
    if icount_shift is not None:
        if accel == "kvm":
            raise RigError("-icount needs TCG; it cannot be combined with --accel kvm", hint="drop --icount")
        choice = accel_mod.AccelChoice("tcg", "-icount needs TCG")
    else:
        choice = accel_mod.choose(accel, kernel.bzimage)
    return PreparedGuest(kernel=kernel, initrd=initrd, clock=Clock(choice.accel, icount_shift),
                         accel_reason=choice.reason)


@contextmanager
def private_guest(prepared: PreparedGuest) -> Iterator[QemuMachine]:
    """A guest of the caller's own in a private run directory (short: unix socket paths are
    limited to 108 bytes), always shut down and removed afterwards."""
    run_dir = Path(tempfile.mkdtemp(prefix="ts-"))
    machine = QemuMachine(prepared.config(run_dir))
    try:
        machine.launch()
        yield machine
    finally:
        machine.shutdown()
        shutil.rmtree(run_dir, ignore_errors=True)


def boot_background(prepared: PreparedGuest, ready_timeout: float = 60.0) -> tuple[GuestState, BootInfo]:
    """Boot a guest that keeps running after this process exits."""
    existing = running()
    if existing is not None:
        raise RigError(f"a guest is already running (qemu pid {existing.pid}, started {existing.started_at})",
                       hint="use it, or stop it first with: invoke halt")
    machine = QemuMachine(prepared.config(background_run_dir()))
    boot = machine.launch(ready_timeout=ready_timeout)
    state = GuestState(pid=boot.pid, run_dir=str(machine.config.run_dir), kernel_root=str(prepared.kernel.root),
                       initrd=str(prepared.initrd), accel=prepared.clock.accel,
                       icount_shift=prepared.clock.icount_shift, accel_reason=prepared.accel_reason,
                       boot_seconds=round(boot.boot_seconds, 3), release=boot.ready.kernel,
                       started_at=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    _state_file().write_text(json.dumps(asdict(state), indent=2))
    machine.detach()
    return state, boot


def attach() -> tuple[GuestState, QemuMachine]:
    """Connect to the running background guest's console (resuming it first if a dead rig
    process left it stopped)."""
    state = running()
    if state is None:
        raise RigError("no guest is running", hint="start one with: invoke boot")
    resume_if_left_stopped(state)
    return state, QemuMachine.attach(state.machine_config(), state.pid)


def resume_if_left_stopped(state: GuestState) -> RunState | None:
    """A guest that QMP shows stopped while no rig command holds it was left so by a rig process
    that died: attach (which repairs an interrupted change) and let it run; say so. Returns the
    state it was found in, or None if it was running (or has no QMP socket)."""
    config = state.machine_config()
    found = qmp.query_status(config.qmp_socket)
    if found is None or found.running:
        return None
    with qmp.guest_lock(config.run_dir):
        found = qmp.query_status(config.qmp_socket)
        if found is None or found.running:
            return None  # the command that held it let it go
        with instrument.connect(config.gdb_socket, state.kernel) as manager:
            _announce(found, manager)
    return found


def _announce(found: RunState | None, manager: Instrumenter) -> None:
    if found is not None and not found.running:
        log.warning("the guest was found stopped (QMP status '%s') with no rig command attached: an earlier one "
                    "died holding it; resumed", found.status)
    if manager.repair is not None:
        log.warning("%s", manager.repair.summary())


@contextmanager
def instrumenter(start: bool = True, gdb_path: str | None = None) -> Iterator[tuple[GuestState, Instrumenter]]:
    """The running guest (booted first if ``start`` and none runs) with gdb attached to it, held
    for this process alone; an interrupted change found on attaching is finished first."""
    state = running()
    if state is None:
        if not start:
            raise RigError("no guest is running", hint="start one with: invoke boot")
        state, _ = boot_background(prepare())
    config = state.machine_config()
    with qmp.guest_lock(config.run_dir), watched(state) as watch:
        found = qmp.query_status(config.qmp_socket)
        try:
            with instrument.connect(config.gdb_socket, state.kernel, gdb_path=gdb_path) as manager:
                _announce(found, manager)
                watch.splices = _remember_splices(state, manager)
                manager.on_change = lambda: setattr(watch, "splices", _remember_splices(state, manager))
                yield state, manager
        except GdbDied as died:
            raise GdbDied(died.message, hint="the guest may be left stopped in the middle of a change: the next "
                                             "invoke command repairs it from the guest's journal and lets it run "
                                             "(invoke status)") from died


@contextmanager
def watched(state: GuestState) -> Iterator[ConsoleWatch]:
    """Run a command with the guest's console watched for an oops, BUG or panic: one fails the
    command with the crash decoded against vmlinux, the splices that were live, and the console
    log kept in the crash directory (``invoke status`` shows the last one)."""
    config = state.machine_config()
    watch = ConsoleWatch.start(config.console_log, instrument.load_image(state.kernel.vmlinux),
                               crash_dir=crash_dir(), splices=_remembered_splices(state))
    with watch.guard():
        yield watch


def crash_dir() -> Path:
    return paths.cache_dir("crashes")


def last_crash() -> CrashRecord | None:
    """The last guest crash a command saw (its decoded summary and the kept console log)."""
    return crash.last_crash(crash_dir())


def _splices_file(state: GuestState) -> Path:
    return Path(state.run_dir) / "splices.json"


def _remember_splices(state: GuestState, manager: Instrumenter) -> list[str]:
    """The live splices, one line each, noted on the host for a crash report: once the guest is
    dead its memory (the real record) cannot be read."""
    _, active = manager.active()
    lines = [f"slot {a.slot}: {a.mode}{' (own vector)' if a.record.vector else ''} at {a.function}+{a.offset:#x}"
             for a in active]
    _splices_file(state).write_text(json.dumps(lines))
    return lines


def _remembered_splices(state: GuestState) -> list[str]:
    try:
        return [str(line) for line in json.loads(_splices_file(state).read_text())]
    except (OSError, ValueError):
        return []


def halt() -> GuestState | None:
    """Stop the background guest; returns what was stopped (None if nothing ran)."""
    state = running()
    if state is None:
        return None
    QemuMachine.attach(state.machine_config(), state.pid, connect_console=False).shutdown()
    _state_file().unlink(missing_ok=True)
    return state
