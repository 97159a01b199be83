"""Splice latency: how long the guest is held stopped to splice or unsplice (host-timed).

Under TCG the guest's TSC stands still while gdb holds the VM, so the stall is timed on the host
(stop -> continue of the splice stop itself; the prep stop before it is reported apart).
"""
from __future__ import annotations

import statistics
from collections.abc import Callable
from typing import Any

from rig.instrument import Instrumenter
from rig.splicer.plan import PatchKind
from rig.splicer.repository import Mode, Policy

FUNCTION = "sys_getpid"


def _summary(values: list[float]) -> dict[str, float]:
    ms = [v * 1000 for v in values]
    return {"n": len(ms), "median_ms": statistics.median(ms), "max_ms": max(ms), "min_ms": min(ms),
            "mean_ms": statistics.fmean(ms)}


def measure(instr: Instrumenter, cycles: int, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """``cycles`` splice/unsplice pairs per mode at the entry of sys_getpid (counting probe)."""
    note = progress or (lambda _: None)
    result: dict[str, Any] = {"function": FUNCTION, "cycles": cycles, "modes": {}}
    for mode in (Mode.JMP, Mode.TRAP):
        splice_s: list[float] = []
        prep_s: list[float] = []
        unsplice_s: list[float] = []
        retries = 0
        for index in range(cycles):
            note(f"{mode.name.lower()} splice/unsplice {index + 1}/{cycles}")
            done = instr.splice(FUNCTION, mode=mode, policy=Policy.SINGLE, patch_kind=PatchKind.COUNTER)
            prep_s.append(instr.last_prep_stall_s or 0.0)
            splice_s.append(done.stall_s)
            retries += done.busy_retries
            unsplice_s.append(instr.unsplice(done.plan.slot).stall_s)
        result["modes"][mode.name.lower()] = {"splice": _summary(splice_s), "unsplice": _summary(unsplice_s),
                                              "prep": _summary(prep_s), "busy_retries": retries,
                                              "splice_stall_s": splice_s, "unsplice_stall_s": unsplice_s}
    return result
