"""A gdb that dies right after its k-th memory write: fault injection for the write journal.

``python -m rig.gdb.dying K REAL_GDB [gdb arguments...]`` runs the real gdb behind a relay of
its MI stream. It forwards commands until the K-th memory write (a ``-data-write-memory-bytes``
or a batch's ``restore`` of a binary file, see :mod:`rig.gdb.batch`), holds back
everything after that one, waits for gdb's answer to it (so exactly K writes reached the guest),
then kills gdb with SIGKILL and exits: to the rig it looks like its gdb died at that write, the
way a killed ``invoke`` or a crashed host would leave things. :func:`launcher` writes a small
executable that the rig can take as its gdb (``GdbSession(gdb_path=...)``).
"""
from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import threading
from pathlib import Path

_WRITE = re.compile(rb'^(\d+)(?:-data-write-memory-bytes\b|-interpreter-exec console "restore )')
KILLED_EXIT = 137


def launcher(directory: Path, after_writes: int, real_gdb: str) -> Path:
    """An executable in ``directory`` that runs this relay around ``real_gdb``."""
    path = directory / f"gdb-dies-after-{after_writes}"
    command = shlex.join([sys.executable, "-m", "rig.gdb.dying", str(after_writes), real_gdb])
    path.write_text(f'#!/bin/sh\nexec {command} "$@"\n')
    path.chmod(0o700)
    return path


def relay(after_writes: int, argv: list[str]) -> int:
    gdb = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert gdb.stdin is not None and gdb.stdout is not None
    fatal_token: list[bytes] = []
    seen = threading.Event()

    def commands_in() -> None:
        writes = 0
        for line in sys.stdin.buffer:
            match = _WRITE.match(line)
            writes += bool(match)
            fatal = match is not None and writes == after_writes
            if fatal:  # armed before gdb can answer it
                fatal_token.append(match.group(1))
                seen.set()
            gdb.stdin.write(line)
            gdb.stdin.flush()
            if fatal:
                return  # hold back everything after the fatal write
        gdb.stdin.close()

    threading.Thread(target=commands_in, daemon=True).start()
    out = sys.stdout.buffer
    for line in gdb.stdout:
        out.write(line)
        out.flush()
        if seen.is_set() and line.startswith(fatal_token[0] + b"^"):
            gdb.send_signal(signal.SIGKILL)
            gdb.wait()
            os._exit(KILLED_EXIT)
    return gdb.wait()


if __name__ == "__main__":
    sys.exit(relay(int(sys.argv[1]), sys.argv[2:]))
