"""The hashed dispatch table's rules, as the handlers walk it (rig.splicer.dispatch.lookup mirrors
their code; tests/test_emulated_dispatch.py runs the code itself)."""
from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from rig.splicer import dispatch


def colliding_keys(count: int, start: int = 0xC0100000) -> list[int]:
    """Kernel-text-like keys that share one home bucket."""
    target = dispatch.home(start)
    keys, key = [], start
    while len(keys) < count:
        if dispatch.home(key) == target:
            keys.append(key)
        key += 1
    return keys


def table_with(entries: dict[int, tuple[int, int]]) -> bytearray:
    table = bytearray(dispatch.BUCKETS * dispatch.ENTRY.size)
    for bucket, (key, patch) in entries.items():
        dispatch.ENTRY.pack_into(table, bucket * dispatch.ENTRY.size, key, patch)
    return table


def test_collisions_probe_on_and_a_released_bucket_does_not_break_the_chain() -> None:
    a, b, c = colliding_keys(3)
    live: dict[int, tuple[int, int]] = {}
    for key in (a, b, c):
        live[dispatch.place(key, set(live))] = (key, key + 1)
    assert sorted(live) == [dispatch.home(a) + i for i in range(3)]  # home, then the next two
    table = table_with(live)
    assert [dispatch.lookup(bytes(table), k) for k in (a, b, c)] == sorted(live)
    # b goes: its bucket is released (FREE), and c behind it is still found.
    bucket_b = dispatch.lookup(bytes(table), b)
    dispatch.ENTRY.pack_into(table, bucket_b * 8, dispatch.FREE, 0)
    assert dispatch.lookup(bytes(table), c) == dispatch.home(a) + 2 and dispatch.lookup(bytes(table), b) is None
    # A new colliding key reuses the released bucket.
    d = colliding_keys(4)[3]
    assert dispatch.place(d, {dispatch.lookup(bytes(table), k) for k in (a, c)}) == bucket_b


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 63)), max_size=80))
def test_any_sequence_of_adds_and_removes_keeps_every_live_key_found(steps: list[tuple[bool, int]]) -> None:
    keys = colliding_keys(24) + [0xC0200000 + 2 * i for i in range(40)]
    table = table_with({})
    live: dict[int, int] = {}  # key -> bucket
    for add, index in steps:
        key = keys[index]
        if add and key not in live:
            bucket = dispatch.place(key, set(live.values()))
            dispatch.ENTRY.pack_into(table, bucket * 8, key, key ^ 0xFFFF)
            live[key] = bucket
        elif not add and key in live:
            dispatch.ENTRY.pack_into(table, live.pop(key) * 8, dispatch.FREE, 0)
        for k, bucket in live.items():
            assert dispatch.lookup(bytes(table), k) == bucket
        assert set(dispatch.live_entries(bytes(table))) == set(live.values())
