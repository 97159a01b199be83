"""The busy-point check (as Ksplice does it): is any task stopped inside code we rewrite?

A saved EIP or a return address on a sleeping task's kernel stack that lies strictly inside a
window (after its first byte) would resume in the middle of overwritten bytes. The first byte is
fine: resuming there executes the new branch. Stack words are a conservative superset of return
addresses, so a stale word can cause a false "busy" but never a missed one.
"""
from __future__ import annotations

import bisect
import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from rig.splicer.image import ByteRange


@dataclass(frozen=True)
class BusyWord:
    value: int
    range: ByteRange
    origin: str  # e.g. "pid 12 stack +0x1c" or "eip"


def busy_words(ranges: Sequence[ByteRange], words: Iterable[tuple[int, str]],
               allow_first_byte: bool = True) -> list[BusyWord]:
    """Words (value, origin) that point into one of ``ranges``.

    For a splice window pass ``allow_first_byte=True``; for code that disappears entirely
    (a patch being removed) pass ``False``, since resuming anywhere in it is unsafe. Ranges are
    searched by bisection: a batch of a thousand windows against every stack word stays cheap.
    """
    ordered = sorted(ranges, key=lambda r: r.start)
    starts = [r.start for r in ordered]
    reach = list(itertools.accumulate((r.end for r in ordered), max))  # furthest end so far
    hits: list[BusyWord] = []
    for value, origin in words:
        index = bisect.bisect_right(starts, value) - 1
        # Walk back while an earlier range could still cover the value (ranges may overlap).
        while index >= 0 and reach[index] > value:
            rng = ordered[index]
            low = rng.start + 1 if allow_first_byte else rng.start
            if low <= value < rng.end:
                hits.append(BusyWord(value, rng, origin))
            index -= 1
    return hits
