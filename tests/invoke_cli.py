"""Running the real `invoke` command line of this repository, as a user does, in a subprocess."""
from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from rig import paths

INVOKE = Path(sys.executable).with_name("invoke")  # the venv's invoke, next to its python


@dataclass(frozen=True)
class Run:
    args: tuple[str, ...]
    code: int
    out: str

    @property
    def error_line(self) -> str:
        """The one-line error the user sees (rich wraps long lines: joined back into one)."""
        text = " ".join(line.strip() for line in self.out.splitlines())
        return text.split(" hint: ")[0]


def run_invoke(*args: str, cache: Path, no_source: bool = True, timeout: float = 60) -> Run:
    """`invoke ARGS` from the repository root with its cache at ``cache``: a private one finds no
    guest, so a task that got past its argument checks would say so instead of touching a guest of
    someone else's. ``no_source``: the kernel source is a path that does not exist, so nothing can
    be downloaded or built either. A wide terminal keeps each message on one line."""
    environment = {**os.environ, "TRAPSPLICE_CACHE": str(cache), "COLUMNS": "200", "NO_COLOR": "1",
                   "TERM": "dumb"}
    environment.pop("TRAPSPLICE_KERNEL_SOURCE", None)
    if no_source:
        environment["TRAPSPLICE_KERNEL_SOURCE"] = str(cache / "no-such-source.tar.bz2")
    done = subprocess.run([str(INVOKE), *args], cwd=paths.REPO_ROOT, env=environment, capture_output=True,
                          text=True, timeout=timeout)
    return Run(tuple(args), done.returncode, done.stdout + done.stderr)
