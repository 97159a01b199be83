"""The composition root: a rig command's view of the guest.

Everything a task needs around its work is put together here, above the layers it joins
(``rig.guest`` boots and owns QEMU, ``rig.instrument`` splices through gdb, ``rig.guest.crash``
reads the console): the background guest found or booted, the per-guest lock, gdb attached with
an interrupted change repaired and the guest resumed if a dead command left it stopped, the
console watched for a crash, and the live splices noted on the host for a crash report.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from rig import paths
from rig.errors import RigError
from rig.gdb.mi import GdbDied
from rig.guest import crash, qmp
from rig.guest.crash import ConsoleWatch, CrashRecord
from rig.guest.lifecycle import GuestState, boot_background, prepare, running
from rig.guest.machine import QemuMachine
from rig.guest.qmp import RunState
from rig.instrument import Instrumenter, connect, load_image

log = logging.getLogger(__name__)


def _running(start: bool = False) -> GuestState:
    """The background guest, booted first if ``start`` and none runs."""
    state = running()
    if state is not None:
        return state
    if not start:
        raise RigError("no guest is running", hint="start one with: invoke boot")
    state, _ = boot_background(prepare())
    return state


def console() -> tuple[GuestState, QemuMachine]:
    """The running background guest's console (the guest resumed first if a dead rig process
    left it stopped)."""
    state = _running()
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
        with connect(config.gdb_socket, state.kernel) as instrumenter:
            _announce(found, instrumenter)
    return found


def _announce(found: RunState | None, instrumenter: Instrumenter) -> None:
    if found is not None and not found.running:
        log.warning("the guest was found stopped (QMP status '%s') with no rig command attached: an earlier one "
                    "died holding it; resumed", found.status)
    if instrumenter.repair is not None:
        log.warning("%s", instrumenter.repair.summary())


@contextmanager
def instrumenter(start: bool = True, gdb_path: str | None = None) -> Iterator[tuple[GuestState, Instrumenter]]:
    """The running guest (booted first if ``start`` and none runs) with gdb attached to it, held
    for this process alone; an interrupted change found on attaching is finished first."""
    state = _running(start)
    config = state.machine_config()
    with qmp.guest_lock(config.run_dir), watched(state) as watch:
        found = qmp.query_status(config.qmp_socket)
        try:
            with connect(config.gdb_socket, state.kernel, gdb_path=gdb_path) as instrumenter:
                _announce(found, instrumenter)
                watch.splices = _remember_splices(state, instrumenter)
                instrumenter.on_change = lambda: setattr(watch, "splices", _remember_splices(state, instrumenter))
                yield state, instrumenter
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
    watch = ConsoleWatch.start(config.console_log, load_image(state.kernel.vmlinux),
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


def _remember_splices(state: GuestState, instrumenter: Instrumenter) -> list[str]:
    """The live splices, one line each, noted on the host for a crash report: once the guest is
    dead its memory (the real record) cannot be read."""
    _, active = instrumenter.active()
    lines = [f"slot {a.slot}: {a.mode}{' (own vector)' if a.record.vector else ''} at {a.function}+{a.offset:#x}"
             for a in active]
    _splices_file(state).write_text(json.dumps(lines))
    return lines


def _remembered_splices(state: GuestState) -> list[str]:
    try:
        return [str(line) for line in json.loads(_splices_file(state).read_text())]
    except (OSError, ValueError):
        return []
