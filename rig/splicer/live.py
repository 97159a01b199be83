"""The live splices a plan must respect, indexed once per batch.

Planning a point asks of the live splices: does a window hold the point, does a window run into
the new one, is the slot's patch area taken, which dispatch buckets and springboard bytes are
used. Asked of a plain list, every point scans every record, and a batch of a thousand points
planned one after another (each seeing those before) is quadratic. :class:`LiveSplices` keeps
the windows sorted by start (a window is at most a few instructions long, so the windows that
can hold an address lie in a short run found by bisection), the patch areas in a dict and the
buckets in a set; a batch adds each new plan's record as it goes.

The answers are those of a scan in the order the records were given: where several records
match, the first one given is named (a consistent guest has at most one).
"""
from __future__ import annotations

import bisect
from collections.abc import Collection, Iterable

from rig.splicer.image import ByteRange
from rig.splicer.repository import SlotRecord

__all__ = ["LiveSplices"]


class LiveSplices:
    """The in-use records among those added, indexed by window, patch area, bucket and springboard."""

    def __init__(self, records: Iterable[SlotRecord] = ()) -> None:
        self._order = 0                                   # position of the next record given
        self._window_keys: list[tuple[int, int]] = []     # (window start, order), sorted
        self._windows: list[SlotRecord] = []              # in the order of _window_keys
        self._longest = 1                                 # longest window: how far back a holder can start
        self._patch_owners: dict[int, tuple[int, SlotRecord]] = {}  # patch address -> first (order, record)
        self._buckets: set[int] = set()
        self._springboards: list[ByteRange] = []
        for record in records:
            self.add(record)

    def add(self, record: SlotRecord) -> None:
        order = self._order
        self._order += 1
        if not record.in_use:
            return
        length = _window_length(record)
        self._longest = max(self._longest, length)
        key = (record.point, order)
        at = bisect.bisect_right(self._window_keys, key)
        self._window_keys.insert(at, key)
        self._windows.insert(at, record)
        self._patch_owners.setdefault(record.patch_address, (order, record))
        self._buckets.add(record.bucket)
        self._springboards += [ByteRange(board.address, len(board.original)) for board in record.springboards]

    def __len__(self) -> int:
        return len(self._windows)

    def window_holding(self, address: int) -> tuple[int, SlotRecord] | None:
        """The first record (order, record) whose window holds ``address``."""
        return self._first(ByteRange(address, 1))

    def window_overlapping(self, window: ByteRange) -> tuple[int, SlotRecord] | None:
        """The first record (order, record) whose window shares a byte with ``window``."""
        return self._first(window)

    def patch_owner(self, patch_address: int) -> tuple[int, SlotRecord] | None:
        """The first record (order, record) whose patch is at ``patch_address``."""
        return self._patch_owners.get(patch_address)

    @property
    def buckets(self) -> Collection[int]:
        """The dispatch buckets live records hold (read-only view)."""
        return self._buckets

    @property
    def springboards(self) -> list[ByteRange]:
        """The padding bytes live springboards take, in the order the records were given."""
        return list(self._springboards)

    def _first(self, span: ByteRange) -> tuple[int, SlotRecord] | None:
        # A window [s, s + len) with len <= longest meets span only if span.start - longest < s < span.end.
        low = bisect.bisect_left(self._window_keys, (span.start - self._longest + 1, -1))
        high = bisect.bisect_left(self._window_keys, (span.end, -1))
        found = [(self._window_keys[i][1], self._windows[i]) for i in range(low, high)
                 if span.overlaps(ByteRange(self._windows[i].point, _window_length(self._windows[i])))]
        return min(found, key=lambda pair: pair[0]) if found else None


def _window_length(record: SlotRecord) -> int:
    """The bytes a record's window covers (a record of no length still covers its point)."""
    return max(record.window_length, 1)
