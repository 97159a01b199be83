"""The watchdog process beside one guarded child (see :mod:`rig.reaper.lifeline`).

``python watchdog.py PIDFD GRACE_S SIGNAL...`` with stdin the read end of the owner's lifeline:

* the child exits (its pidfd turns readable): nothing left to guard, exit;
* the owner writes :data:`RELEASE` (a detached guest): exit and leave the child running;
* end of file on the lifeline: the owner closed it or died, however it died and whichever of
  its threads spawned the child; send the child each SIGNAL in turn, GRACE_S apart until it
  has exited, then exit.

Signals go through the pidfd, so a pid reused after the child was reaped is never hit. Run by
path with ``python -I -S``: standard library only, nothing of the rig is imported.
"""
from __future__ import annotations

import os
import select
import signal
import sys

RELEASE = b"r"
LIFELINE_FD = 0


def exited(pidfd: int, timeout_s: float) -> bool:
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    return bool(poller.poll(int(timeout_s * 1000)))


def stop(pidfd: int, grace_s: float, signals: list[int]) -> None:
    for sig in signals:
        try:
            signal.pidfd_send_signal(pidfd, sig)
        except ProcessLookupError:
            return
        if exited(pidfd, grace_s):
            return


def watch(pidfd: int, grace_s: float, signals: list[int]) -> None:
    poller = select.poll()
    poller.register(LIFELINE_FD, select.POLLIN)
    poller.register(pidfd, select.POLLIN)
    while True:
        ready = {fd for fd, _ in poller.poll()}
        if pidfd in ready:
            return
        word = os.read(LIFELINE_FD, 1)
        if word == RELEASE:
            return
        if word == b"":
            stop(pidfd, grace_s, signals)
            return


def main(argv: list[str]) -> int:
    # Own session already (no ^C from the owner's terminal); stay deaf to what is left.
    for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGPIPE):
        signal.signal(sig, signal.SIG_IGN)
    watch(int(argv[1]), float(argv[2]), [int(sig) for sig in argv[3:]])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
