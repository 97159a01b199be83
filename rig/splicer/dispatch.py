"""The shared handlers' dispatch table: open addressing on the trapping EIP, as kprobes keeps a
hash table for the same job, so the handlers' cost does not grow with the number of live splices.

A bucket holds (key, patch): key = the EIP the CPU saved for the trap (point + branch length), or
EMPTY (0, never used: a lookup stops there) or FREE (a released entry: a lookup walks past it).
A key's home bucket is a multiplicative (Fibonacci) hash of the key; collisions probe linearly.
A new key goes into the first bucket along its probe that no live splice holds (a released one
is reused), so every bucket between a key's home and its place is live or released, never empty,
and the lookup from home finds it. Slot records keep their bucket, so the host knows which
buckets are live without reading the table.
"""
from __future__ import annotations

import struct
from collections.abc import Collection, Iterator

BUCKETS = 8192                 # a power of two, twice the slots: probes stay short
MULTIPLIER = 0x9E3779B1        # 2^32 / golden ratio
EMPTY, FREE = 0, 0xFFFFFFFF
NO_BUCKET = 0xFFFF             # a slot record whose mode does not dispatch through the table
ENTRY = struct.Struct("<II")
SHIFT = 32 - (BUCKETS.bit_length() - 1)


def home(key: int) -> int:
    return ((key * MULTIPLIER) & 0xFFFFFFFF) >> SHIFT


def probe(key: int) -> Iterator[int]:
    start = home(key)
    for step in range(BUCKETS):
        yield (start + step) & (BUCKETS - 1)


def place(key: int, live: Collection[int]) -> int:
    """The bucket a new ``key`` goes into, given the buckets live splices hold."""
    for bucket in probe(key):
        if bucket not in live:
            return bucket
    raise ValueError("every bucket is live")  # cannot happen: BUCKETS exceeds the slots


def lookup(table: bytes, key: int) -> int | None:
    """The bucket the handlers find ``key`` in (as their code walks), or None."""
    for bucket in probe(key):  # at most BUCKETS steps, as the handlers count
        found, _ = ENTRY.unpack_from(table, bucket * ENTRY.size)
        if found == key:
            return bucket
        if found == EMPTY:
            return None
    return None


def encode_entry(key: int, patch: int) -> bytes:
    return ENTRY.pack(key, patch)


def live_entries(table: bytes) -> dict[int, tuple[int, int]]:
    """{bucket: (key, patch)} of every entry a lookup could match (not EMPTY, not FREE)."""
    return {bucket: (key, patch) for bucket, (key, patch) in enumerate(ENTRY.iter_unpack(table[: len(table) // 8 * 8]))
            if key not in (EMPTY, FREE)}
