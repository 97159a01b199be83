"""Compile C snippets to real i386 machine code at test time (gcc -m32 -O2 -c).

Kernel-like flags: no PIC (the kernel is linked at fixed addresses), no CET landing pads.
Tests that need it call :func:`compile_c`; without a working ``gcc -m32`` they skip.
"""
from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest

KERNEL_LIKE_FLAGS = ["-m32", "-O2", "-fno-pic", "-fno-pie", "-fcf-protection=none",
                     "-fno-asynchronous-unwind-tables", "-fno-stack-protector"]
# gcc's own defaults for 32-bit code, as the bench's instruction-size tests compile it
PLAIN_FLAGS = ["-m32", "-O2"]


def compile_c(source: str, directory: Path, name: str = "snippet", extra: list[str] | None = None,
              flags: Sequence[str] = KERNEL_LIKE_FLAGS) -> Path:
    """Return the path of the object ``directory/name.o`` built from ``source`` with ``flags`` + ``extra``.

    Skips the test without a working gcc -m32; any other compile error fails it.
    """
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("gcc is not installed (apt-get install gcc gcc-multilib)")
    src = directory / f"{name}.c"
    obj = directory / f"{name}.o"
    src.write_text(source)
    result = subprocess.run([gcc, *flags, *(extra or []), "-c", str(src), "-o", str(obj)],
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


# ---- the splicer tests' real code ------------------------------------------------------------
SNIPPETS = r"""
extern int ext(int);
extern void noreturn_ext(void) __attribute__((noreturn));
int counter;

/* A short loop: its back-edge target sits one instruction into a 5-byte window. */
int loopy(int n) { int s = 0; for (int i = 0; i < n; i++) s += i * counter; return s; }

/* A call and a conditional branch that a displace window must relocate. */
int caller(int x) { if (x > 3) return ext(x) + 1; return x; }

/* A switch: gcc emits jmp *table(,%eax,4) with the table in .rodata. */
int sw(int x) {
    switch (x) {
    case 0: return ext(1); case 1: return ext(7) + 2; case 2: return 9;
    case 3: return ext(x * 5); case 4: return ext(4) - 3; case 5: return 77;
    default: return -1;
    }
}

/* An indirect tail call: jmp *%reg with unknown targets. */
int tail(int (*f)(int), int x) { return f(x + 1); }

/* ud2 in the middle of a function. */
int trapper(int x) { if (x == 42) __builtin_trap(); return x * 7; }

/* Entry is a 1-byte push %ebp (frame pointer kept for this file). */
int framed(int a, int b) { return ext(a) + b; }

static int small1(int x) { return x + 1; }
static int small2(int x) { return x * 3; }
int use_smalls(int x) { return small1(x) + small2(x); }
"""


@pytest.fixture(scope="session")
def snippet_object(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("splicer-c")
    return compile_c(SNIPPETS, directory, "snippets",
                     ["-falign-functions=16", "-fno-omit-frame-pointer", "-fno-inline", "-fno-reorder-blocks-and-partition",
                      "-foptimize-sibling-calls"])
