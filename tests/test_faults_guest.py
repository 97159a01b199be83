"""Fault injection on the real guest: the rig's gdb killed right after each write of an operation
(splice in every mode, unsplice with all four modes live, repository install, component load);
the next command must find the half-made change, finish it forward or back, say so, and leave
the kernel text and repository consistent (the rig's audit) and the guest answering."""
from __future__ import annotations

from collections.abc import Iterator

import pytest

from conftest import private_run_dir
from rig.instrument import faults
from rig.guest import lifecycle
from rig.guest.machine import QemuMachine
from rig.kernel.build import KernelBuild
from rig.splicer.kinds import Mode


def assert_all_repaired(run: faults.FaultRun) -> None:
    cut = [i for i in run.injections if i.cut]
    assert run.writes >= 3, f"{run.operation}: only {run.writes} writes were cut"
    assert run.lost == 0 and run.guest_deaths == 0, [i for i in run.injections if i.lost or not i.alive]
    assert all(i.found_status != "running" for i in cut), "a dead gdb leaves the guest stopped"
    assert run.torn >= 2 and run.repaired == run.torn
    directions = {i.direction for i in cut if i.direction}
    assert directions == {"forward", "back"}, directions  # cut before and after the commit write
    assert not run.injections[-1].cut and run.injections[-1].repair is None  # the last try finished alone


@pytest.mark.parametrize("function,mode,own", [("tcp_sync_mss", Mode.TRAP, False), ("sys_getppid", Mode.TRAP, True),
                                               ("tcp_sync_mss", Mode.INT3, False), ("sys_getpid", Mode.JMP, False)],
                         ids=["trap", "trap-own-vector", "int3", "jmp"])
def test_splice_cut_at_every_write(fresh_guest: QemuMachine, kernel: KernelBuild, function: str, mode: Mode,
                                   own: bool) -> None:
    scenario = faults.splice_scenario(function, mode, own_vector=own)
    run = faults.inject_each_write(fresh_guest, kernel, scenario.name, scenario.operation, setup=scenario.setup)
    assert_all_repaired(run)


@pytest.mark.parametrize("index", range(len(faults.LIVE_SET)), ids=["jmp", "trap", "int3", "trap-own-vector"])
def test_unsplice_cut_at_every_write_with_all_modes_live(fresh_guest: QemuMachine, kernel: KernelBuild,
                                                         index: int) -> None:
    scenario = faults.unsplice_scenario(index)
    run = faults.inject_each_write(fresh_guest, kernel, scenario.name, scenario.operation, setup=scenario.setup)
    assert_all_repaired(run)
    # Cut after its point came back (forward), the splice is gone; before, it is still whole.
    for injection in run.injections:
        assert not injection.problems


def test_component_load_cut_at_every_write(fresh_guest: QemuMachine, kernel: KernelBuild) -> None:
    scenario = faults.component_load_scenario()
    run = faults.inject_each_write(fresh_guest, kernel, scenario.name, scenario.operation, setup=scenario.setup)
    assert_all_repaired(run)


@pytest.fixture
def guests(prepared: lifecycle.PreparedGuest) -> Iterator[list[QemuMachine]]:
    """Fresh guests on demand; each replaces (and shuts down) the one before."""
    machines: list[QemuMachine] = []
    yield machines
    for machine in machines:
        machine.shutdown()


def test_repository_install_cut_at_every_write(guests: list[QemuMachine], prepared: lifecycle.PreparedGuest,
                                               kernel: KernelBuild) -> None:
    def fresh() -> QemuMachine:
        if guests:
            guests[-1].shutdown()
        machine = QemuMachine(prepared.config(private_run_dir()))
        machine.launch()
        guests.append(machine)
        return machine

    scenario = faults.install_scenario()
    run = faults.inject_each_write(fresh(), kernel, scenario.name, scenario.operation, setup=scenario.setup,
                                   fresh_guest=fresh)
    assert_all_repaired(run)


def test_a_batch_cut_at_every_write(fresh_guest: QemuMachine, kernel: KernelBuild) -> None:
    """Every instruction of sys_getpid (traps and, at its ret, an int3 with vector 3 re-pointed) in one
    transaction: cut anywhere, all of it or none."""
    scenario = faults.batch_scenario("sys_getpid")
    run = faults.inject_each_write(fresh_guest, kernel, scenario.name, scenario.operation, setup=scenario.setup)
    assert_all_repaired(run)
