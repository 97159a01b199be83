"""Choosing QEMU's accelerator, and saying what the guest's TSC means under it.

KVM is used only when it really runs an i386 guest: the presence of /dev/kvm is
not enough (a paravirtual nested /dev/kvm may accept the VM and then crawl
through the kernel's decompressor).  The probe boots the real kernel under KVM
for a few seconds and checks that it prints its banner; the verdict is cached
per host kernel, QEMU version and bzImage.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import select
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from rig import paths, tools
from rig.errors import RigError
from rig.reaper.lifeline import spawn

_PROBE_SECONDS = 6.0
_PROBE_MARK = b"Linux version 2.4"


@dataclass(frozen=True)
class Clock:
    """Which accelerator runs the guest and what one tick of its TSC means."""

    accel: str  # "tcg" or "kvm"
    icount_shift: int | None = None

    @property
    def name(self) -> str:
        return f"{self.accel}+icount(shift={self.icount_shift})" if self.icount_shift is not None else self.accel

    @property
    def unit(self) -> str:
        """What one TSC reading counts once divided by :attr:`tsc_per_unit` (reports name it so)."""
        if self.icount_shift is not None:
            return "guest instructions"
        return "CPU cycles" if self.accel == "kvm" else "host TSC ticks"

    @property
    def tsc_per_unit(self) -> int:
        """TSC ticks per :attr:`unit`: under -icount the TSC advances 2^shift per instruction."""
        return 2 ** self.icount_shift if self.icount_shift is not None else 1

    @property
    def meaning(self) -> str:
        if self.accel == "kvm":
            return f"real {self.unit} (hardware TSC under KVM)"
        if self.icount_shift is not None:
            return (f"{self.unit} executed x 2^{self.icount_shift} (TCG -icount: deterministic, "
                    f"not cycles)")
        return f"{self.unit} while the emulator runs (TCG: wall-clock time of the emulation, not guest cycles)"

    @property
    def deterministic(self) -> bool:
        return self.icount_shift is not None

    def qemu_args(self) -> list[str]:
        args = ["-accel", self.accel]
        if self.icount_shift is not None:
            if self.accel != "tcg":
                raise ValueError("-icount needs the TCG accelerator")
            args += ["-icount", f"shift={self.icount_shift},align=off,sleep=off"]
        return args


@dataclass(frozen=True)
class AccelChoice:
    accel: str
    reason: str


def _probe_cache_key(bzimage: Path) -> str:
    qemu = subprocess.run([tools.require("qemu-system-i386"), "--version"], capture_output=True, text=True)
    digest = hashlib.sha256()
    digest.update(platform.release().encode())
    digest.update(qemu.stdout.encode())
    digest.update(bzimage.read_bytes())
    return digest.hexdigest()[:24]


def kvm_runs_i386(bzimage: Path) -> tuple[bool, str]:
    """Boot the kernel under KVM briefly; True only if it reaches its banner in time."""
    if not os.path.exists("/dev/kvm"):
        return False, "no /dev/kvm"
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False, "/dev/kvm is not accessible to this user"
    cache_file = paths.cache_dir("probes") / "kvm-i386.json"
    key = _probe_cache_key(bzimage)
    if cache_file.exists():
        cached = json.loads(cache_file.read_text())
        if cached.get("key") == key:
            return cached["ok"], cached["reason"] + " (cached probe)"
    argv = [tools.require("qemu-system-i386"), "-accel", "kvm", "-m", "32", "-nodefaults", "-display", "none",
            "-no-reboot", "-serial", "stdio", "-kernel", str(bzimage), "-append", "console=ttyS0 panic=-1"]
    started = time.monotonic()
    proc, lifeline = spawn(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    ok, reason = False, f"KVM did not reach the kernel banner within {_PROBE_SECONDS:.0f} s"
    try:
        seen = b""
        assert proc.stdout is not None
        while time.monotonic() - started < _PROBE_SECONDS:
            ready, _, _ = select.select([proc.stdout], [], [], 0.2)
            if ready:
                chunk = os.read(proc.stdout.fileno(), 4096)
                if not chunk:
                    reason = f"qemu -accel kvm exited: {seen[-200:].decode(errors='replace').strip()}"
                    break
                seen += chunk
                if _PROBE_MARK in seen:
                    ok, reason = True, f"KVM booted the kernel to its banner in {time.monotonic() - started:.1f} s"
                    break
    finally:
        proc.kill()
        proc.wait(timeout=5)
        lifeline.close()
    cache_file.write_text(json.dumps({"key": key, "ok": ok, "reason": reason}))
    return ok, reason


def choose(requested: str, bzimage: Path) -> AccelChoice:
    """``requested`` is "auto", "tcg" or "kvm"."""
    if requested == "tcg":
        return AccelChoice("tcg", "requested")
    ok, why = kvm_runs_i386(bzimage)
    if requested == "kvm":
        if not ok:
            raise RigError(f"--accel kvm asked for, but KVM cannot run this i386 guest: {why}",
                           hint="use --accel tcg (or auto)")
        return AccelChoice("kvm", why)
    return AccelChoice("kvm", why) if ok else AccelChoice("tcg", f"KVM not usable: {why}")
