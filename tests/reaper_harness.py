"""Running ``reaper_owner.py`` as a real owner process, killing it, and watching what it started.

The test process is not the parent of what the owner started (and once the owner is dead, whoever
adopts its orphans may never reap them), so exits are watched through pidfds: one turns readable
when its process has exited, zombie or reaped.
"""
from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
OWNER = Path(__file__).with_name("reaper_owner.py")
EXIT_DEADLINE_S = 30.0  # generous: the watchdog's SIGTERM grace is 5 s, on a busy 2-core host


@dataclass
class Owner:
    process: subprocess.Popen[str]
    report: dict[str, Any]
    pidfds: dict[int, int] = field(default_factory=dict)

    def pids(self, *kinds: str) -> list[int]:
        return [pid for kind in kinds for pid in self.report.get(kind, [])]

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def alive(self, pid: int) -> bool:
        return pid in self.pidfds and not _readable(self.pidfds[pid], 0.0)

    def wait_exited(self, pids: list[int], deadline_s: float = EXIT_DEADLINE_S) -> list[int]:
        """Those of ``pids`` still running after ``deadline_s``."""
        deadline = time.monotonic() + deadline_s
        running = list(pids)
        while running and time.monotonic() < deadline:
            running = [pid for pid in running if self.alive(pid) and not _readable(self.pidfds[pid], 0.1)]
        return running

    def clean_up(self) -> None:
        """Kill whatever is still running (a failed test must not leak either) and close the pidfds."""
        if self.process.poll() is None:
            self.kill()
        for pidfd in self.pidfds.values():
            if not _readable(pidfd, 0.0):
                try:
                    signal.pidfd_send_signal(pidfd, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            os.close(pidfd)
        self.pidfds.clear()
        if self.process.stdin is not None:
            self.process.stdin.close()
        if self.process.stdout is not None:
            self.process.stdout.close()


def start_owner(*args: str, report_timeout_s: float = 60.0) -> Owner:
    """The owner running ``reaper_owner.py ARGS`` with this checkout's rig, once it has reported."""
    environment = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen([sys.executable, str(OWNER), *args], cwd=REPO, env=environment,
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    owner = Owner(process, {})
    try:
        if not select.select([process.stdout], [], [], report_timeout_s)[0]:
            raise AssertionError(f"the owner did not report within {report_timeout_s:.0f} s")
        line = process.stdout.readline()
        if not line:
            raise AssertionError(f"the owner exited (status {process.wait()}) before reporting; see its stderr")
        owner.report = json.loads(line)
        assert Path(owner.report["rig"]) == REPO / "rig", owner.report["rig"]  # this checkout's code
        for pid in owner.pids("children", "watchdogs", "forks"):
            try:
                owner.pidfds[pid] = os.pidfd_open(pid)
            except ProcessLookupError:
                pass  # already exited and reaped by the owner (a released child's watchdog)
    except BaseException:
        owner.clean_up()
        raise
    return owner


def _readable(pidfd: int, timeout_s: float) -> bool:
    return bool(select.select([pidfd], [], [], timeout_s)[0])
