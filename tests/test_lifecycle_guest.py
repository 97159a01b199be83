"""What every command does around its work, on a real background guest in a cache of its own:
a guest left stopped by a dead rig process is resumed and repaired by the next command, which
says so; a command that crashes the guest fails with the crash decoded and the log kept."""
from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import private_run_dir
from rig import session, tools
from rig.errors import RigError
from rig.gdb import dying
from rig.guest import lifecycle, qmp
from rig.guest.crash import GuestCrashed, last_crash
from rig.guest.machine import QemuMachine
from rig.splicer.kinds import Mode


@pytest.fixture
def background(prepared: lifecycle.PreparedGuest, monkeypatch: pytest.MonkeyPatch) -> Iterator[lifecycle.GuestState]:
    """`invoke boot`'s guest, in a cache of its own so a user's guest is never touched."""
    monkeypatch.setenv("TRAPSPLICE_CACHE", str(private_run_dir()))
    state, _ = lifecycle.boot_background(prepared)
    try:
        yield state
    finally:
        lifecycle.halt()


def test_next_command_resumes_and_repairs_a_guest_a_dead_command_left_stopped(
        background: lifecycle.GuestState, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with session.instrumenter(start=False) as (_, instrumenter):
        instrumenter.prep(install=True)  # the repository first, so the cut lands in the splice
    dies = dying.launcher(tmp_path, 5, tools.require("gdb"))  # journal, header, patch, table entry, slot record
    with pytest.raises(RigError):
        with session.instrumenter(start=False, gdb_path=str(dies)) as (_, instrumenter):
            instrumenter.splice("tcp_sync_mss", mode=Mode.TRAP)
    config = background.machine_config()
    left = qmp.query_status(config.qmp_socket)
    assert left is not None and not left.running  # nobody attached, the guest held stopped
    caplog.set_level(logging.WARNING, logger="rig")
    _, machine = session.console()  # what `invoke console` does first
    try:
        assert machine.console.request("ping", timeout=15).str_field("pong") == "1"
    finally:
        machine.detach()
    said = " ".join(record.getMessage() for record in caplog.records)
    assert f"QMP status '{left.status}'" in said and "resumed" in said
    assert "interrupted 'splice" in said and "rolled it back" in said
    with session.instrumenter(start=False) as (_, instrumenter):
        assert instrumenter.repair is None and instrumenter.audit() == [] and instrumenter.active()[1] == []


def test_a_crash_fails_the_command_with_the_oops_decoded_and_the_log_kept(background: lifecycle.GuestState) -> None:
    with pytest.raises(GuestCrashed) as crashed:
        with session.instrumenter(start=False) as (state, instrumenter):
            spliced = instrumenter.splice("sys_getpid", mode=Mode.TRAP)
            with instrumenter.gdb.stopped():  # a patch gone bad: ud2 where its displaced code starts
                instrumenter.gdb.write_memory(spliced.plan.patch_address + 8, b"\x0f\x0b")
            console = QemuMachine.attach(state.machine_config(), state.pid)
            console.console.request("bench getpid 1", timeout=20)
    error = crashed.value
    assert "patch area of slot 0" in str(error) and "Attempted to kill init" in str(error)
    assert any("trap at sys_getpid+0x0" in line for line in error.splices)
    record = last_crash(session.crash_dir())
    assert record is not None and Path(record.log).exists()
    assert lifecycle.running() is None  # panic=1 and -no-reboot: QEMU is gone
