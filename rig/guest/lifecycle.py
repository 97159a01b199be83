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

from rig import paths
from rig.errors import RigError
from rig.guest import accel as accel_mod
from rig.guest.accel import Clock
from rig.guest.initrd import build_initrd
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
    initrd = build_initrd()  # in a directory keyed by its inputs: checkouts on one machine never share one
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
    """Connect to the running background guest's console."""
    state = running()
    if state is None:
        raise RigError("no guest is running", hint="start one with: invoke boot")
    return state, QemuMachine.attach(state.machine_config(), state.pid)


def halt() -> GuestState | None:
    """Stop the background guest; returns what was stopped (None if nothing ran)."""
    state = running()
    if state is None:
        return None
    QemuMachine.attach(state.machine_config(), state.pid, connect_console=False).shutdown()
    _state_file().unlink(missing_ok=True)
    return state
