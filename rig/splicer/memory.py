"""What a plan asks of guest memory: one write, with the bytes expected there beforehand."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class MemoryWrite:
    address: int
    data: bytes
    role: str                      # "patch", "springboard", "trap-table", "slot", "point", ...
    expect: bytes | None = None    # bytes that must be there before writing (None: don't care)

    @property
    def end(self) -> int:
        return self.address + len(self.data)

    def __str__(self) -> str:
        return f"{self.role:<12} {self.address:#010x} {len(self.data):4d} bytes"


MERGE_GAP = 64  # bytes between two writes that one write (gap rewritten as it was) may span: a command
# costs about what 64 more bytes do, and a gap of unused bytes (a patch area's tail) is not worth sending


def spans(ranges: Sequence[tuple[int, int]], gap: int = MERGE_GAP) -> list[tuple[int, int]]:
    """(start, end) ranges merged where they overlap or lie within ``gap`` of each other."""
    merged: list[tuple[int, int]] = []
    for start, end in sorted(ranges):
        if merged and start <= merged[-1][1] + gap:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def coalesce(group: Sequence[MemoryWrite], old_at: Callable[[int, int], bytes], keep_last: MemoryWrite | None = None,
             gap: int = MERGE_GAP) -> list[MemoryWrite]:
    """Fewer, larger writes with the same effect: neighbours within ``gap`` become one write, the
    bytes between them rewritten with what they hold now (``old_at``). A group whose writes
    overlap keeps its order and is left as it is. The write containing ``keep_last`` is put last
    (a commit write stays the group's last)."""
    ordered = sorted(group, key=lambda w: w.address)
    if any(a.end > b.address for a, b in zip(ordered, ordered[1:])):
        return list(group)
    merged: list[list[MemoryWrite]] = []
    for write in ordered:
        if merged and write.address <= merged[-1][-1].end + gap:
            merged[-1].append(write)
        else:
            merged.append([write])
    out = []
    for run in merged:
        if len(run) == 1:
            out.append(run[0])
            continue
        start, end = run[0].address, run[-1].end
        data = bytearray(old_at(start, end - start))
        for write in run:
            data[write.address - start:write.end - start] = write.data
        roles = sorted({w.role for w in run})
        out.append(MemoryWrite(start, bytes(data), f"{len(run)} writes: {', '.join(roles)}"))
    if keep_last is not None:
        last = next(i for i, w in enumerate(out) if w.address <= keep_last.address < w.end)
        out.append(out.pop(last))
    return out
