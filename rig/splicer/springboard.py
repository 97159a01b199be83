"""Routes of ``jmp rel8`` hops through free padding, ending in a ``jmp rel32`` (GILK-style).

Breadth-first over placements in the free gaps, so the route found has the fewest hops.
A hop at address a occupies [a, a+2) (rel8) or [a, a+5) (the final rel32) and must be reachable
from the previous hop's end with a signed 8-bit displacement.
"""
from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from rig.splicer.image import ByteRange

REL8_SIZE = 2
REL32_SIZE = 5
REL8_MIN, REL8_MAX = -128, 127


@dataclass(frozen=True)
class Hop:
    address: int
    final: bool  # True: jmp rel32 to the patch; False: jmp rel8 to the next hop

    @property
    def size(self) -> int:
        return REL32_SIZE if self.final else REL8_SIZE


def free_ranges(gaps: Sequence[ByteRange], occupied: Sequence[ByteRange]) -> list[ByteRange]:
    """Gaps minus bytes other splices already use (their springboards)."""
    # Each gap is cut only by the used ranges that meet it, found by bisection (thousands of gaps
    # and of live springboards would otherwise be compared pairwise), applied in their given order.
    by_start = sorted(range(len(occupied)), key=lambda index: occupied[index].start)
    starts = [occupied[index].start for index in by_start]
    longest = max((used.length for used in occupied), default=0)
    result: list[ByteRange] = []
    for gap in sorted(gaps, key=lambda g: g.start):
        low = bisect.bisect_left(starts, gap.start - longest)
        high = bisect.bisect_right(starts, gap.end)
        meeting = sorted(index for index in by_start[low:high] if gap.overlaps(occupied[index]))
        result.extend(p for p in cut(gap, [occupied[index] for index in meeting]) if p.length >= REL8_SIZE)
    return result


def cut(gap: ByteRange, used_ranges: Sequence[ByteRange]) -> list[ByteRange]:
    """The pieces of ``gap`` left when each of ``used_ranges`` is taken out, in their order."""
    pieces = [gap]
    for used in used_ranges:
        next_pieces = []
        for piece in pieces:
            if not piece.overlaps(used):
                next_pieces.append(piece)
                continue
            if used.start > piece.start:
                next_pieces.append(ByteRange(piece.start, used.start - piece.start))
            if used.end < piece.end:
                next_pieces.append(ByteRange(used.end, piece.end - used.end))
        pieces = next_pieces
    return pieces


def find_route(source: int, free: Sequence[ByteRange], max_hops: int) -> list[Hop] | None:
    """Hops after the rel8 at ``source`` (its first byte); None when no route within max_hops.

    ``max_hops`` counts springboards (the jmp at the point itself is not one).
    """
    starts = [r.start for r in free]
    queue: deque[tuple[int, tuple[Hop, ...], frozenset[int]]] = deque([(source, (), frozenset())])
    seen: set[tuple[int, bool]] = set()
    while queue:
        jump_at, route, used = queue.popleft()
        origin = jump_at + REL8_SIZE
        low, high = origin + REL8_MIN, origin + REL8_MAX
        candidates = _reachable(free, starts, low, high)
        # A final hop here ends the search: BFS order makes it a shortest route.
        for index, rng in candidates:
            if index in used:
                continue
            spot = max(rng.start, low)
            if spot <= high and spot + REL32_SIZE <= rng.end:
                return [*route, Hop(spot, True)]
        if len(route) + 1 >= max_hops:
            continue
        for index, rng in candidates:
            if index in used:
                continue
            for spot in {max(rng.start, low), min(rng.end - REL8_SIZE, high)}:
                if rng.start <= spot <= rng.end - REL8_SIZE and low <= spot <= high \
                        and (spot, False) not in seen:
                    seen.add((spot, False))
                    queue.append((spot, (*route, Hop(spot, False)), used | {index}))
    return None


def _reachable(free: Sequence[ByteRange], starts: list[int], low: int, high: int) -> list[tuple[int, ByteRange]]:
    first = max(0, bisect.bisect_left(starts, low) - 1)
    out = []
    for index in range(first, len(free)):
        rng = free[index]
        if rng.start > high:
            break
        if rng.end > low:
            out.append((index, rng))
    return out


def find_route_exact(source: int, free: Sequence[ByteRange], springboards: int) -> list[Hop] | None:
    """A route of exactly ``springboards`` hops after the rel8 at ``source``, or None.

    The first ``springboards - 1`` hops are jmp rel8, the last a jmp rel32; no two hops share a
    free range. Used to measure chains of a chosen length even where a shorter one exists.
    Depth-first over the few ranges a rel8 reaches (at most 255 bytes), trying each range's
    near and far end, so the search stays small.
    """
    if springboards < 1:
        raise ValueError("a route has at least one springboard")
    starts = [r.start for r in free]
    failed: set[tuple[int, int]] = set()  # (jump address, springboards still to place)

    def search(jump_at: int, left: int, used: frozenset[int]) -> list[Hop] | None:
        if (jump_at, left) in failed:
            return None
        origin = jump_at + REL8_SIZE
        low, high = origin + REL8_MIN, origin + REL8_MAX
        for index, rng in _reachable(free, starts, low, high):
            if index in used:
                continue
            if left == 1:
                spot = max(rng.start, low)
                if spot <= high and spot + REL32_SIZE <= rng.end:
                    return [Hop(spot, True)]
                continue
            for spot in sorted({max(rng.start, low), min(rng.end - REL8_SIZE, high)}):
                if rng.start <= spot <= rng.end - REL8_SIZE and low <= spot <= high:
                    rest = search(spot, left - 1, used | {index})
                    if rest is not None:
                        return [Hop(spot, False), *rest]
        failed.add((jump_at, left))
        return None

    return search(source, springboards, frozenset())
