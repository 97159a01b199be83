"""Compile a C file the way the built kernel compiled its own files.

The kernel's flags (``-D__KERNEL__``, ``-O2 -fomit-frame-pointer -mpreferred-stack-boundary=2
-march=...``, ``-nostdinc``...) come from the config and the arch Makefile, so they are read
back from the build's own compile line for net/ipv4/tcp_output.c in its log rather than
re-derived: code compiled here follows the same calling conventions as the running kernel
(plain cdecl in this configuration: no ``-mregparm``).
"""
from __future__ import annotations

import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path

from rig.errors import RigError
from rig.kernel.build import KernelBuild, Toolchain

_REFERENCE_FILE = "tcp_output"  # any kernel C file would do; this is the one components replace
_DROP_PREFIXES = ("-DKBUILD_BASENAME=", "-I", "-DEXPORT_SYMTAB")


@dataclass(frozen=True)
class CompileResult:
    ok: bool
    argv: list[str]
    stderr: str


def kernel_cflags(kernel: KernelBuild) -> list[str]:
    """The compiler argv (compiler included) the kernel used, with its include path on this tree."""
    cc = Toolchain.load().cc
    marker = f"-DKBUILD_BASENAME={_REFERENCE_FILE} "
    for line in kernel.log.read_text(errors="replace").splitlines():
        if line.startswith(cc) and marker in line and " -c " in line:
            return _clean(shlex.split(line), kernel)
    raise RigError(f"the kernel build log {kernel.log} has no compile line for {_REFERENCE_FILE}.c",
                   hint="rebuild the kernel with the rig (invoke kernel) so its flags are on record")


def _clean(argv: list[str], kernel: KernelBuild) -> list[str]:
    out: list[str] = []
    skip_next = False
    for arg in argv:
        if skip_next:
            skip_next = False
            continue
        if arg in ("-c", "-pipe"):
            continue
        if arg == "-o":
            skip_next = True
            continue
        if arg.startswith(_DROP_PREFIXES) or arg.endswith(".c"):
            continue
        out.append(arg)
    return [*out, "-I", str(kernel.tree / "include")]


def compile_object(kernel: KernelBuild, source: Path, obj: Path, extra: list[str] | None = None) -> CompileResult:
    """``cc <kernel flags> <extra> -c source -o obj``; the caller decides what a failure means."""
    argv = [*kernel_cflags(kernel), *(extra or []), "-c", str(source), "-o", str(obj)]
    done = subprocess.run(argv, capture_output=True, text=True)
    return CompileResult(done.returncode == 0, argv, done.stderr)


def argv_text(argv: list[str]) -> str:
    return " ".join(shlex.quote(a) for a in argv)
