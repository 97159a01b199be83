"""Where a number came from: host, accelerator, clock, kernel, compiler, rig version, seed.

Every table and figure of a report carries one of these (at least its ``summary()``),
so a number lifted out of a report still says what produced it.
"""
from __future__ import annotations

import datetime as dt
import shutil
import subprocess
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path

from rig.paths import REPO_ROOT

UNKNOWN = "unknown"


def host_cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    try:
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return UNKNOWN


def host_gcc_version() -> str:
    gcc = shutil.which("gcc")
    if gcc is None:
        return UNKNOWN
    done = subprocess.run([gcc, "--version"], capture_output=True, text=True, check=False)
    return done.stdout.splitlines()[0].strip() if done.returncode == 0 and done.stdout else UNKNOWN


def rig_git_commit(repo: Path = REPO_ROOT) -> str:
    """Short commit of the rig, with ``-dirty`` when tracked files changed since."""
    if shutil.which("git") is None:
        return UNKNOWN
    done = subprocess.run(["git", "-C", str(repo), "describe", "--always", "--dirty", "--abbrev=12"],
                          capture_output=True, text=True, check=False)
    return done.stdout.strip() if done.returncode == 0 and done.stdout.strip() else UNKNOWN


def trapsplice_version() -> str:
    try:
        return metadata.version("trapsplice")
    except metadata.PackageNotFoundError:
        return UNKNOWN


@dataclass(frozen=True)
class Provenance:
    host_cpu: str
    accelerator: str          # e.g. "tcg" or "none (static analysis)"
    clock_meaning: str        # what one unit of the reported numbers is
    kernel_build_id: str      # e.g. the vmlinux GNU build id or the kernel build's config hash
    gcc_version: str          # compiler that built the analysed code
    n: int                    # trials / repetitions behind each number
    date_iso: str
    rig_commit: str
    trapsplice_version: str
    seed: int | None

    @classmethod
    def collect(cls, *, accelerator: str, clock_meaning: str, n: int, seed: int | None = None,
                kernel_build_id: str = UNKNOWN, gcc_version: str | None = None) -> "Provenance":
        """Fill in what the host can tell; the caller supplies what only it knows."""
        return cls(
            host_cpu=host_cpu_model(),
            accelerator=accelerator,
            clock_meaning=clock_meaning,
            kernel_build_id=kernel_build_id,
            gcc_version=gcc_version if gcc_version is not None else host_gcc_version(),
            n=n,
            date_iso=dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat(),
            rig_commit=rig_git_commit(),
            trapsplice_version=trapsplice_version(),
            seed=seed,
        )

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    def summary(self) -> str:
        seed = "" if self.seed is None else f", seed {self.seed}"
        return (f"{self.date_iso}; host {self.host_cpu}; accel {self.accelerator}; clock: {self.clock_meaning}; "
                f"kernel {self.kernel_build_id}; gcc {self.gcc_version}; N={self.n}{seed}; "
                f"trapsplice {self.trapsplice_version} @ {self.rig_commit}")


def elf_build_id(elf_path: Path) -> str:
    """GNU build id of an ELF (vmlinux), or a content hash when the linker wrote none."""
    import hashlib

    from elftools.elf.elffile import ELFFile

    with open(elf_path, "rb") as handle:
        elf = ELFFile(handle)
        for section in elf.iter_sections():
            if section["sh_type"] != "SHT_NOTE":
                continue
            for note in section.iter_notes():
                if note["n_type"] == "NT_GNU_BUILD_ID":
                    return f"build-id {note['n_desc']}"
        handle.seek(0)
        digest = hashlib.sha256(handle.read()).hexdigest()
    return f"sha256 {digest[:16]}"
