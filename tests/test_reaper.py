"""rig.reaper on real processes: a child started through spawn() dies with its owner process, even
after a SIGKILL and when the thread that started it is long gone; its watchdog goes too; a released
child (a detached guest) lives on; normal shutdown leaves no watchdog behind. The guest's own QEMU
and gdb: tests/test_reaper_guest.py."""
from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from rig.gdb.session import GdbSession
from rig.reaper import lifeline
from rig.reaper.lifeline import spawn

from reaper_harness import EXIT_DEADLINE_S, start_owner


def test_a_killed_owners_child_and_watchdog_exit() -> None:
    owner = start_owner("sleep")  # spawned in a pool thread that has exited, and still running
    try:
        owner.kill()
        assert owner.wait_exited(owner.pids("children", "watchdogs")) == []
    finally:
        owner.clean_up()


def test_a_fork_of_the_owner_does_not_keep_the_child_alive() -> None:
    owner = start_owner("sleep", "--fork")
    try:
        owner.kill()  # the fork, which still runs, got no copy of the lifeline
        assert owner.wait_exited(owner.pids("children", "watchdogs")) == []
        assert all(owner.alive(pid) for pid in owner.pids("forks"))
    finally:
        owner.clean_up()


def test_a_released_child_outlives_its_killed_owner() -> None:
    owner = start_owner("sleep", "--release")
    try:
        assert owner.wait_exited(owner.pids("watchdogs")) == []  # released: its watchdog left at once
        owner.kill()
        assert all(owner.alive(pid) for pid in owner.pids("children"))
    finally:
        owner.clean_up()


def test_the_gate_starts_nothing_when_its_owner_dies_before_opening_it(tmp_path: Path) -> None:
    ran = tmp_path / "ran"
    gate, opener = os.pipe()
    child = subprocess.Popen(lifeline.gated(gate, ["touch", str(ran)]), pass_fds=(gate,))
    os.close(gate)
    os.close(opener)  # what the kernel does when the owner dies before the watchdog runs
    assert child.wait(timeout=EXIT_DEADLINE_S) == lifeline.GATE_EXIT
    assert not ran.exists()


def test_the_gated_program_gets_its_argv_and_not_the_gate(tmp_path: Path) -> None:
    out = tmp_path / "out"
    child, line = spawn(["sh", "-c", 'printf "%s|" "$@"; ls /proc/self/fd', "sh", "a b", "", "$HOME"],
                        stdin=subprocess.DEVNULL, stdout=out.open("wb"), stderr=subprocess.DEVNULL)
    try:
        assert child.wait(timeout=EXIT_DEADLINE_S) == 0
    finally:
        line.close()
    words, fds = out.read_text().split("|")[:-1], out.read_text().rsplit("|", 1)[1].split()
    assert words == ["a b", "", "$HOME"]
    assert set(fds) <= {"0", "1", "2", "3"}  # 3: ls's own /proc/self/fd; the gate's fd is closed


def test_normal_shutdown_leaves_no_watchdog() -> None:
    child, line = spawn(["sleep", "1000"])
    child.terminate()
    child.wait(timeout=EXIT_DEADLINE_S)
    line.close()
    assert line.watchdog.returncode == 0 and not line.held


def test_a_child_that_exits_on_its_own_takes_its_watchdog_along() -> None:
    child, line = spawn(["true"])
    try:
        assert child.wait(timeout=EXIT_DEADLINE_S) == 0
        assert line.watchdog.wait(timeout=EXIT_DEADLINE_S) == 0  # before the lifeline is closed
    finally:
        line.close()


@pytest.mark.parametrize("stop_signals, status", [(lifeline.GENTLE, -signal.SIGTERM),
                                                  ((signal.SIGKILL,), -signal.SIGKILL)])
def test_closing_the_lifeline_of_a_running_child_stops_it(stop_signals: tuple[signal.Signals, ...],
                                                          status: int) -> None:
    child, line = spawn(["sleep", "1000"], stop_signals=stop_signals)
    line.close()
    assert child.wait(timeout=EXIT_DEADLINE_S) == status


def test_a_missing_program_is_refused_before_anything_starts(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        spawn([str(tmp_path / "no-such-program")])


def test_a_gdb_session_closes_its_watchdog_too() -> None:
    gdb = GdbSession()
    gdb.launch()
    line = gdb._lifeline
    assert line is not None and line.watchdog.poll() is None
    gdb.close()
    assert line.watchdog.returncode == 0 and gdb._lifeline is None
