"""Compile C snippets to real i386 machine code at test time (gcc -m32 -O2 -c).

Kernel-like flags: no PIC (the kernel is linked at fixed addresses), no CET landing pads.
Tests that need it call :func:`compile_c`; without a working ``gcc -m32`` they skip.
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

KERNEL_LIKE_FLAGS = ["-m32", "-O2", "-fno-pic", "-fno-pie", "-fcf-protection=none",
                     "-fno-asynchronous-unwind-tables", "-fno-stack-protector"]


def compile_c(source: str, directory: Path, name: str = "snippet", extra: list[str] | None = None) -> Path:
    """Return the path of the object file built from ``source`` (skips the test without gcc -m32)."""
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("gcc is not installed (apt-get install gcc gcc-multilib)")
    src = directory / f"{name}.c"
    obj = directory / f"{name}.o"
    src.write_text(source)
    result = subprocess.run([gcc, *KERNEL_LIKE_FLAGS, *(extra or []), "-c", str(src), "-o", str(obj)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        if "-m32" in result.stderr or "bits/" in result.stderr or "gnu/stubs-32" in result.stderr:
            pytest.skip(f"gcc -m32 does not work here (apt-get install gcc-multilib): {result.stderr[:200]}")
        raise AssertionError(f"gcc failed on the test snippet:\n{result.stderr}")
    return obj


def function_bytes(obj: Path, name: str) -> bytes:
    """The bytes of one function as the object file holds them (via pyelftools)."""
    from rig.splicer.image import KernelImage

    image = KernelImage.load(obj)
    sym = image.function(name)
    return image.text_bytes(sym.address, sym.size)
