"""What a plan asks of guest memory: one write, with the bytes expected there beforehand."""
from __future__ import annotations

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
