"""No QEMU or gdb outlives the process that started it, on a real 2.4.20 guest: an owner process
boots one and attaches gdb, each from a pool thread that then ends (the guest still answers), and is
SIGKILLed, as a Dask nanny kills a worker; QEMU, gdb and their watchdogs exit. A detached guest
(``invoke boot``) is released and runs on; a normal shutdown leaves no watchdog."""
from __future__ import annotations

import shutil

from rig.guest import lifecycle
from rig.guest.machine import QemuMachine, pid_is_qemu

from conftest import private_run_dir
from reaper_harness import start_owner


def test_a_killed_owners_qemu_and_gdb_exit(prepared: lifecycle.PreparedGuest) -> None:
    run_dir = private_run_dir()
    owner = start_owner("guest", str(prepared.kernel.bzimage), str(prepared.initrd), str(run_dir),
                        report_timeout_s=240)
    try:
        qemu, gdb = owner.pids("children")
        assert pid_is_qemu(qemu) and owner.alive(gdb)
        owner.kill()
        assert owner.wait_exited([qemu, gdb, *owner.pids("watchdogs")]) == []
    finally:
        owner.clean_up()
        shutil.rmtree(run_dir, ignore_errors=True)


def test_shutdown_takes_the_watchdog_along(prepared: lifecycle.PreparedGuest) -> None:
    with lifecycle.private_guest(prepared) as machine:
        line = machine._lifeline
        assert line is not None and line.watchdog.poll() is None
    assert line.watchdog.returncode == 0 and machine._lifeline is None


def test_a_detached_guest_is_released_and_runs_on(prepared: lifecycle.PreparedGuest) -> None:
    run_dir = private_run_dir()
    machine = QemuMachine(prepared.config(run_dir))
    boot = None
    try:
        boot = machine.launch()
        line = machine._lifeline
        assert line is not None
        machine.detach()
        assert line.watchdog.returncode == 0 and not line.held  # gone without signalling QEMU
        assert pid_is_qemu(boot.pid)
        again = QemuMachine.attach(prepared.config(run_dir), boot.pid)
        assert again.console.request("ping").str_field("pong") == "1"
        again.shutdown()
        assert not pid_is_qemu(boot.pid)
    finally:
        machine.shutdown()
        if boot is not None and pid_is_qemu(boot.pid):  # the test failed after detaching
            QemuMachine.attach(prepared.config(run_dir), boot.pid, connect_console=False).shutdown()
        shutil.rmtree(run_dir, ignore_errors=True)
