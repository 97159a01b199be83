"""An owner process for the reaper tests, run as a script: it starts children the way the rig does,
from pool threads that have ended by the time it reports (as a Dask worker's task threads may),
prints one JSON line (its children's and their watchdogs' pids), then waits until killed or until
its stdin closes.

    reaper_owner.py sleep [--release] [--fork]   a `sleep` child through rig.reaper.lifeline.spawn
    reaper_owner.py guest BZIMAGE INITRD RUN_DIR  a real QemuMachine, and a GdbSession attached to it
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import rig
from rig.reaper.lifeline import Lifeline, spawn

T = TypeVar("T")


def in_pool_thread(work: Callable[[], T]) -> T:
    """``work()`` in a pool thread that has exited when this returns."""
    pool = ThreadPoolExecutor(max_workers=1)
    try:
        return pool.submit(work).result()
    finally:
        pool.shutdown(wait=True)


def sleep_child(release: bool, fork: bool) -> dict[str, Any]:
    child, lifeline = in_pool_thread(lambda: spawn(["sleep", "1000"]))
    forks = []
    if fork:
        forked = os.fork()  # without exec, as multiprocessing's "fork" does: it must not hold the lifeline
        if forked == 0:
            time.sleep(1000)
            os._exit(0)
        forks.append(forked)
    if release:
        lifeline.release()
    # The spawning thread is gone; the child must still run (PR_SET_PDEATHSIG would have killed it).
    assert child.poll() is None, child.returncode
    return {"children": [child.pid], "watchdogs": [lifeline.watchdog.pid], "forks": forks}


def guest(bzimage: Path, initrd: Path, run_dir: Path) -> dict[str, Any]:
    from rig.gdb.session import GdbSession
    from rig.guest.accel import Clock
    from rig.guest.machine import MachineConfig, QemuMachine

    machine = QemuMachine(MachineConfig(bzimage=bzimage, initrd=initrd, run_dir=run_dir, clock=Clock("tcg")))
    in_pool_thread(machine.launch)
    gdb = GdbSession()

    def attach() -> None:
        gdb.launch()
        gdb.attach(machine.config.gdb_socket)
        gdb.cont()

    in_pool_thread(attach)
    # Both spawning threads are gone; both children must still answer.
    assert machine.console.request("ping", timeout=30).str_field("pong") == "1"
    assert gdb.register_names()
    lifelines: list[Lifeline] = [machine._lifeline, gdb._lifeline]  # type: ignore[list-item]
    return {"children": [machine.pid, gdb.pid], "watchdogs": [line.watchdog.pid for line in lifelines]}


def main() -> int:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="what", required=True)
    sleep = sub.add_parser("sleep")
    sleep.add_argument("--release", action="store_true")
    sleep.add_argument("--fork", action="store_true")
    booted = sub.add_parser("guest")
    for name in ("bzimage", "initrd", "run_dir"):
        booted.add_argument(name, type=Path)
    args = parser.parse_args()
    if args.what == "sleep":
        report = sleep_child(args.release, args.fork)
    else:
        report = guest(args.bzimage, args.initrd, args.run_dir)
    print(json.dumps({**report, "owner": os.getpid(), "rig": str(Path(rig.__file__).parent)}), flush=True)
    sys.stdin.read()  # until killed, or until the test closes our stdin
    return 0


if __name__ == "__main__":
    sys.exit(main())
