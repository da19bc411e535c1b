"""Kept deltas (E2, E9) in numpy columns, chained per position, newest arrival first.

A delta needs keeping only while a later count could still be ordered before it, and what such a
count needs of it is its event time (E1: a delta at t is ordered after a count at T iff t > T) and
its quantity; its source is kept for ExplainAvailability. 24 bytes a delta, in four columns, and a
position reaches its chain through one int32 of its own: no Python object per delta or per
position, so a day of millions of facts costs tens of megabytes, not gigabytes.

Slot 0 ends a chain. Freed slots are reused (a stack of them); the columns grow in steps.
"""

from __future__ import annotations

from collections.abc import Iterator

import msgspec
import numpy as np

from ._names import NONE
from ._segments import raw

END = 0
_STEP = 4096


class PoolSnapshot(msgspec.Struct, array_like=True, forbid_unknown_fields=True):
    times: memoryview  # int64 per slot
    qtys: memoryview  # int64 per slot
    sources: memoryview  # int32 per slot: indices into the store's names (NONE in a free slot)
    nexts: memoryview  # int32 per slot: the next older delta of the same position (END: none)
    free: memoryview  # int32: free slots, the next one to use last


class DeltaPool:
    """Delta columns and the free slots; chains start at a head each position holds."""

    __slots__ = ("_free", "_nv", "_qv", "_sv", "_top", "_tv", "nexts", "qtys", "sources", "times")

    def __init__(self, size: int = _STEP) -> None:
        self.times = np.zeros(size, dtype=np.int64)
        self.qtys = np.zeros(size, dtype=np.int64)
        self.sources = np.zeros(size, dtype=np.int32)
        self.nexts = np.zeros(size, dtype=np.int32)
        self._free = np.arange(size - 1, END, -1, dtype=np.int32)  # slot 1 comes out first
        self._top = len(self._free)
        self._views()

    def _views(self) -> None:
        # One slot at a time through memoryviews: plain ints, no numpy scalars (the fact hot path).
        self._tv, self._qv = self.times.data, self.qtys.data
        self._sv, self._nv = self.sources.data, self.nexts.data

    def __len__(self) -> int:
        """Deltas kept now."""
        return len(self.times) - 1 - self._top

    def push(self, head: int, at: int, quantity: int, source: int) -> int:
        """A new delta in front of the chain at ``head``; returns its slot (the new head)."""
        if not self._top:
            self._grow()
        self._top -= 1
        slot = int(self._free[self._top])
        self._tv[slot], self._qv[slot], self._sv[slot], self._nv[slot] = at, quantity, source, head
        return slot

    def release(self, slot: int) -> tuple[int, int]:
        """Free ``slot``; returns (the slot after it in its chain, the source it named)."""
        after, source = self._nv[slot], self._sv[slot]
        self._sv[slot] = NONE
        self._nv[slot] = END
        if self._top == len(self._free):
            self._free = np.resize(self._free, len(self._free) + _STEP)
        self._free[self._top] = slot
        self._top += 1
        return after, source

    def slots(self, head: int) -> Iterator[int]:
        nv = self._nv
        slot = head
        while slot != END:
            yield slot
            slot = nv[slot]

    def entry(self, slot: int) -> tuple[int, int, int]:
        """(event time, quantity, source) of one kept delta."""
        return self._tv[slot], self._qv[slot], self._sv[slot]

    def entry_next(self, slot: int) -> int:
        return self._nv[slot]

    def sum_after(self, head: int, at: int) -> int:
        """The quantities of the chain's deltas stamped after ``at`` (E2: what a count at ``at`` keeps)."""
        tv, qv, nv = self._tv, self._qv, self._nv
        total, slot = 0, head
        while slot != END:
            if tv[slot] > at:
                total += qv[slot]
            slot = nv[slot]
        return total

    def relink(self, slot: int, after: int) -> None:
        self._nv[slot] = after

    def snapshot(self) -> PoolSnapshot:
        return PoolSnapshot(raw(self.times), raw(self.qtys), raw(self.sources), raw(self.nexts),
                            raw(self._free[: self._top]))

    @classmethod
    def restore(cls, snap: PoolSnapshot) -> DeltaPool:
        pool = cls.__new__(cls)
        pool.times = np.frombuffer(snap.times, dtype=np.int64).copy()
        pool.qtys = np.frombuffer(snap.qtys, dtype=np.int64).copy()
        pool.sources = np.frombuffer(snap.sources, dtype=np.int32).copy()
        pool.nexts = np.frombuffer(snap.nexts, dtype=np.int32).copy()
        pool._free = np.frombuffer(snap.free, dtype=np.int32).copy()
        pool._top = len(pool._free)
        pool._views()
        return pool

    def _grow(self) -> None:
        """Room for more: an eighth more slots (at least ``_STEP``), the new ones free, lowest first out."""
        old = len(self.times)
        new = old + max(_STEP, old // 8)
        self.times = np.resize(self.times, new)
        self.qtys = np.resize(self.qtys, new)
        self.sources = np.resize(self.sources, new)
        self.nexts = np.resize(self.nexts, new)
        self.times[old:] = self.qtys[old:] = 0
        self.sources[old:] = self.nexts[old:] = 0
        fresh = np.arange(new - 1, old - 1, -1, dtype=np.int32)
        self._free = np.concatenate([fresh, self._free[: self._top]])
        self._top = len(self._free)
        self._views()
