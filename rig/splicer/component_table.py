"""The component table: which components are loaded where in the repository (pure encoding).

Like the slot table, it lives in guest memory, so any later ``invoke`` reads back what is loaded:

    table+0x00  magic "TSCOMPTB", version, entry count, region base, region size
    table+0x20  ENTRY_SIZE-byte entries: in-use flag, name (NUL-padded), base, size,
                sha256 of the object file (the host finds its cached copy by it)

Components take first-fit, 16-byte aligned space in the component region after the table.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

from rig.errors import RigError
from rig.splicer.component import ComponentRefused
from rig.splicer.memory import MemoryWrite
from rig.splicer.repository import (COMPONENT_REGION_OFFSET, COMPONENT_TABLE_OFFSET, COMPONENT_TABLE_SIZE,
                                    RepositoryLayout)

MAGIC = b"TSCOMPTB"
VERSION = 1
NAME_MAX = 32
ENTRY_SIZE = 96
HEADER_SIZE = 0x20
ENTRIES = (COMPONENT_TABLE_SIZE - HEADER_SIZE) // ENTRY_SIZE
ALIGN = 16
FILLER = 0xCC  # an unloaded component's bytes: a stray call into them stops loudly (int3)

_HEADER = struct.Struct("<8sIIII")
_ENTRY = struct.Struct("<B3x32sII32s")


@dataclass(frozen=True)
class ComponentEntry:
    name: str
    base: int
    size: int
    sha256: str

    @property
    def end(self) -> int:
        return self.base + self.size

    def contains(self, address: int) -> bool:
        return self.base <= address < self.end


@dataclass(frozen=True)
class ComponentTable:
    region_base: int
    region_size: int
    entries: tuple[ComponentEntry | None, ...]  # None: a free entry

    def loaded(self) -> list[tuple[int, ComponentEntry]]:
        return [(index, entry) for index, entry in enumerate(self.entries) if entry is not None]

    def find(self, name: str) -> tuple[int, ComponentEntry] | None:
        for index, entry in self.loaded():
            if entry.name == name:
                return index, entry
        return None

    def free_index(self) -> int:
        for index, entry in enumerate(self.entries):
            if entry is None:
                return index
        raise RigError(f"all {len(self.entries)} component table entries are in use",
                       "unload a component first (invoke unload NAME)")

    def free_gaps(self) -> list[tuple[int, int]]:
        """(start, length) of the unused stretches of the region, in address order."""
        gaps, cursor = [], self.region_base
        for entry in sorted((e for _, e in self.loaded()), key=lambda e: e.base):
            if entry.base > cursor:
                gaps.append((cursor, entry.base - cursor))
            cursor = max(cursor, _align(entry.end))
        end = self.region_base + self.region_size
        if end > cursor:
            gaps.append((cursor, end - cursor))
        return gaps

    def largest_gap(self) -> int:
        return max((length for _, length in self.free_gaps()), default=0)

    def allocate(self, size: int, what: str) -> int:
        """First fit; refuses with the sizes when nothing fits."""
        for start, length in self.free_gaps():
            if length >= size:
                return start
        free = sum(length for _, length in self.free_gaps())
        raise ComponentRefused("too-large", f"{what} needs {size} bytes; the component region holds "
                               f"{self.region_size} bytes, {free} free, the largest free stretch is "
                               f"{self.largest_gap()} bytes", "unload components (invoke unload NAME) or make it smaller")


def table_address(layout: RepositoryLayout) -> int:
    return layout.base + COMPONENT_TABLE_OFFSET


def empty_table(layout: RepositoryLayout) -> ComponentTable:
    base = layout.base + COMPONENT_REGION_OFFSET
    if base >= layout.base + layout.size:
        raise RigError(f"a {layout.size:#x}-byte repository has no room for components",
                       "use the default 4 MiB repository")
    return ComponentTable(base, layout.base + layout.size - base, (None,) * ENTRIES)


def encode_header(table: ComponentTable) -> bytes:
    return _HEADER.pack(MAGIC, VERSION, len(table.entries), table.region_base, table.region_size).ljust(HEADER_SIZE, b"\0")


def encode_entry(entry: ComponentEntry | None) -> bytes:
    if entry is None:
        return bytes(ENTRY_SIZE)
    name = entry.name.encode()
    if len(name) >= NAME_MAX:
        raise RigError(f"component name {entry.name!r} is longer than {NAME_MAX - 1} bytes", "rename the source file")
    return _ENTRY.pack(1, name, entry.base, entry.size, bytes.fromhex(entry.sha256)).ljust(ENTRY_SIZE, b"\0")


def decode_table(raw: bytes) -> ComponentTable | None:
    """None when the table was never written (no component loaded since boot)."""
    magic, version, count, region_base, region_size = _HEADER.unpack_from(raw)
    if magic != MAGIC:
        return None
    if version != VERSION or count > ENTRIES:
        raise RigError(f"component table version {version} with {count} entries is not one this rig wrote",
                       "reboot the guest (invoke halt; invoke boot)")
    entries: list[ComponentEntry | None] = []
    for index in range(count):
        in_use, name, base, size, sha = _ENTRY.unpack_from(raw, HEADER_SIZE + index * ENTRY_SIZE)
        entries.append(ComponentEntry(name.rstrip(b"\0").decode(errors="replace"), base, size, sha.hex())
                       if in_use else None)
    return ComponentTable(region_base, region_size, tuple(entries))


def entry_address(layout: RepositoryLayout, index: int) -> int:
    return table_address(layout) + HEADER_SIZE + index * ENTRY_SIZE


def load_writes(layout: RepositoryLayout, table: ComponentTable, index: int, entry: ComponentEntry,
                image: bytes, fresh: bool) -> list[MemoryWrite]:
    """The component's bytes first, its table entry last (a header first if the table is new)."""
    writes = []
    if fresh:
        writes.append(MemoryWrite(table_address(layout), encode_header(table) + bytes(ENTRIES * ENTRY_SIZE),
                                  "component-table"))
    writes.append(MemoryWrite(entry.base, image, "component"))
    writes.append(MemoryWrite(entry_address(layout, index), encode_entry(entry), "component-entry"))
    return writes


def unload_writes(layout: RepositoryLayout, index: int, entry: ComponentEntry) -> list[MemoryWrite]:
    """Entry cleared first (nothing can find it any more), then its bytes filled with int3."""
    return [MemoryWrite(entry_address(layout, index), encode_entry(None), "component-entry"),
            MemoryWrite(entry.base, bytes([FILLER]) * entry.size, "component")]


def _align(value: int) -> int:
    return (value + ALIGN - 1) // ALIGN * ALIGN
