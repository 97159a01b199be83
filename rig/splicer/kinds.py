"""The kinds a splice is made of, in one place: its mode, its window policy, its patch kind, and
the refusal every planning step raises."""
from __future__ import annotations

import enum

from rig.errors import Refused


class Mode(enum.IntEnum):
    """What the instrumentation point's branch is (stored in the slot record)."""

    TRAP = 1   # int $n through a DPL-0 interrupt gate (shared vector + table, or a vector of its own)
    JMP = 2    # jmp rel32, or jmp rel8 hops through springboards
    INT3 = 3   # int3 (1 byte) through the kernel's own vector 3, re-pointed at a chaining stub


class Policy(enum.IntEnum):
    """Which bytes the branch may take (stored in the slot record)."""

    SINGLE = 1     # overwrite only the instruction at the point (the paper's)
    DISPLACE = 2   # overwrite whole instructions covering the branch, relocate them


class PatchKind(enum.Enum):
    """What the patch does before it replays the displaced instructions."""

    COUNTER = "counter"  # pushfd; inc dword [counter]; popfd; <displaced>; jmp back
    EMPTY = "empty"      # <displaced>; jmp back (for measuring the bare branch cost)
    CALL = "call"        # pushfd; pushad; call <call_target>; popad; popfd; <displaced>; jmp back
    # Splicing to a component (call_target = the component's function); both count hits first.
    REPLACE = "replace"  # jmp <call_target>: at a function entry it takes the caller's frame and
                         # returns to the caller; the old code is bypassed (no displaced copy)
    WRAP = "wrap"        # pushfd; pushad; push esp; call <call_target>; pop; popad; popfd;
                         # <displaced>; jmp back -- the target gets the saved frame (registers,
                         # flags, then the interrupted stack: return address and arguments)


class SpliceRefused(Refused):
    """A splice that cannot be made safely."""
