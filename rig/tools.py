"""Host tools the rig shells out to, and the Debian package that provides each."""
from __future__ import annotations

import shutil
import subprocess

from rig.errors import RigError

# tool -> Debian 12 package that installs it
PACKAGES: dict[str, str] = {
    "qemu-system-i386": "qemu-system-x86",
    "gdb": "gdb",
    "gcc": "gcc",
    "make": "make",
    "patch": "patch",
    "bzip2": "bzip2",
    "tar": "tar",
    "genext2fs": "genext2fs",
}


def require(tool: str) -> str:
    """Absolute path of ``tool``, or a RigError naming the package to install."""
    path = shutil.which(tool)
    if path is None:
        package = PACKAGES.get(tool, tool)
        raise RigError(f"required tool '{tool}' is not installed",
                       hint=f"apt-get install {package}  (or run ./bootstrap)")
    return path


def require_gcc_m32() -> None:
    """gcc must be able to build and link 32-bit code (gcc-multilib)."""
    require("gcc")
    probe = subprocess.run(["gcc", "-m32", "-x", "c", "-", "-o", "/dev/null"],
                           input=b"int main(void){return 0;}", capture_output=True)
    if probe.returncode != 0:
        raise RigError("gcc cannot build 32-bit (-m32) programs",
                       hint="apt-get install gcc-multilib  (or run ./bootstrap)")


def gcc_version() -> str:
    require("gcc")
    out = subprocess.run(["gcc", "--version"], capture_output=True, text=True, check=True)
    return out.stdout.splitlines()[0].strip()
