"""Positions packed per SKU: the memory of a shard grows with what it stocks, not with SKUs x locations.

Each SKU row owns a run of slots (``start``, ``length``, ``cap``) in flat columns, its positions sorted
by location column, so one position is found by a binary search of at most a few hundred columns and a
whole SKU is one slice. A dense grid would cost a cell for every (SKU, location) pair: 1 M SKUs x 300
locations is 300 M cells, though a catalogue that size stocks a tenth of them.

A SKU that gains a position past its run's capacity moves to the tail with room to grow; the run it
left is garbage. When the columns run out of room they grow by a quarter, copied as they lie, or,
if more than a sixteenth of them is garbage, every run is packed into fresh columns instead.

A position's slot is not stable (inserts shift a run, moves relocate it): callers name a position by
(SKU row, location column), which are. The columns, the runs and their room are ``_runs``'.
"""

from __future__ import annotations

from bisect import bisect_left

import numpy as np

from ._runs import (
    MIN_SLOTS,
    NARROW,
    WIDE,
    Int32Array,
    Int64Array,
    IntpArray,
    Runs,
    check_int32,
    group_starts,
    int32_of,
    raw,
    spans,
)

__all__ = ["MIN_SLOTS", "NARROW", "SINGLE_STEP", "WIDE", "Int32Array", "Int64Array", "IntpArray", "Segments",
           "check_int32", "int32_of", "raw", "spans"]

TABLE_CELLS_PER_PAIR = 8
"""``find_many`` builds a table of the asked rows x columns when it and the rows' runs hold at most
this many cells per pair asked."""
SINGLE_STEP = 4
"""Fewest slots a run gains when one position more does not fit (a quarter more for longer runs)."""


class Segments(Runs):
    """Positions in the columns (``Runs``): one found, inserted or removed, and blocks of them."""

    __slots__ = ()

    # -- one position ------------------------------------------------------------------------------
    def find(self, row: int, col: int) -> int:
        """The slot of the position (-1: none)."""
        if row == self._hit_row and col == self._hit_col:
            return self._hit_slot
        start = self._sv[row]
        end = start + self._lv[row]
        cv = self._cv
        i = bisect_left(cv, col, start, end)
        if i < end and cv[i] == col:
            self._hit_row, self._hit_col, self._hit_slot = row, col, i
            return i
        return -1

    def insert(self, row: int, col: int) -> int:
        """The slot of a new position (all zero), which must not exist yet."""
        start, length = self._sv[row], self._lv[row]
        i = bisect_left(self._cv, col, start, start + length)
        if length == self._capv[row]:
            self._move(row, length + max(SINGLE_STEP, length // 4))
            i, start = i - start + self._sv[row], self._sv[row]
        end = start + length
        if i < end:
            self._slide(i, i + 1, end - i)
            wv, nv = self.wv, self.nv  # a slot's fields one by one: cheaper than two numpy calls
            wv[0, i] = wv[1, i] = wv[2, i] = wv[3, i] = 0
            nv[0, i] = nv[1, i] = nv[2, i] = nv[3, i] = nv[4, i] = 0
        self._cv[i] = col
        self._lv[row] = length + 1
        self._hit_row, self._hit_col, self._hit_slot = row, col, i
        return i

    def remove(self, row: int, col: int) -> None:
        """The position (which must exist) is gone; its run closes up behind it."""
        i = self.find(row, col)
        assert i >= 0, "removing a position that does not exist"
        end = self._sv[row] + self._lv[row]
        self._slide(i + 1, i, end - 1 - i)
        self._clear(end - 1, end)
        self._lv[row] -= 1
        self._hit_row = -1

    # -- blocks of positions -----------------------------------------------------------------------
    def find_many(self, rows: IntpArray, cols: IntpArray) -> IntpArray:
        """The slot of each (row, col) (-1: no such position; a row or col < 0 names none)."""
        found = np.full(len(rows), -1, dtype=np.intp)
        asked = np.flatnonzero((rows >= 0) & (cols >= 0))
        if not len(asked):
            return found
        rows, cols = rows.take(asked).astype(np.intp, copy=False), cols.take(asked).astype(np.intp, copy=False)
        owners, group = np.unique(rows, return_inverse=True)
        width = int(cols.max()) + 1
        # The table costs its cells and a look at every slot of the owners' runs: worth it when the
        # pairs fill their rows, not for one location asked across many long runs.
        if len(owners) * width + int(self._len.take(owners).sum()) <= TABLE_CELLS_PER_PAIR * len(asked):
            found[asked] = self._by_table(owners, width, group * width + cols)
        else:
            found[asked] = self._by_search(rows, cols)
        return found

    def _by_table(self, owners: IntpArray, width: int, cells: IntpArray) -> IntpArray:
        """``find_many`` for pairs that fill most of their rows (a block of an extract names a SKU's
        locations together): the rows' runs scattered into a table of owners x columns, then read."""
        lengths = self._len.take(owners)
        slots = spans(self._start.take(owners), lengths)
        run_cols = self.col.take(slots)
        inside = run_cols < width
        table = np.full(len(owners) * width, -1, dtype=np.intp)
        table[(np.repeat(np.arange(len(owners)) * width, lengths) + run_cols)[inside]] = slots[inside]
        return table.take(cells)

    def _by_search(self, rows: IntpArray, cols: IntpArray) -> IntpArray:
        """``find_many`` for scattered pairs: a binary search in each pair's run, all side by side."""
        lo = self._start.take(rows).astype(np.intp)
        end = lo + self._len.take(rows)
        hi = end.copy()
        col, last = self.col, len(self.col) - 1
        for _ in range(int((hi - lo).max(initial=0)).bit_length()):
            mid = (lo + hi) // 2
            less = col.take(np.minimum(mid, last)) < cols
            searching = lo < hi
            lo = np.where(searching & less, mid + 1, lo)
            hi = np.where(searching & ~less, mid, hi)
        found = (lo < end) & (col.take(np.minimum(lo, last)) == cols)
        return np.where(found, lo, -1)

    def insert_many(self, rows: IntpArray, cols: IntpArray) -> IntpArray:
        """Slots of new positions (all zero; none may exist, none named twice), in the order given.
        Every SKU they touch moves to the tail with its old positions: a SKU met for the first time
        (a baseline load) gets exactly the room it fills, one that grows an eighth more."""
        order = np.lexsort((cols, rows))
        sorted_rows, sorted_cols = rows[order], cols[order]
        if ((np.diff(sorted_rows) == 0) & (np.diff(sorted_cols) == 0)).any():
            raise ValueError("insert_many: a position named twice")
        owners, added = np.unique(sorted_rows, return_counts=True)
        had = self._len[owners].astype(np.intp)
        filled = had + added
        caps = np.where(had == 0, filled, filled + np.maximum(1, filled // 8))
        self._room(int(caps.sum()))
        new_starts = self.tail + group_starts(caps)
        if had.any():
            fresh = self._merge(owners, had, new_starts, filled, sorted_cols)
        else:  # SKUs without positions (a baseline load): the sorted pairs are the new runs as they lie
            fresh = self.tail + np.arange(len(sorted_cols), dtype=np.intp)
            self.col[fresh] = sorted_cols
        self.garbage += int(self._cap[owners].sum())
        self._start[owners], self._len[owners], self._cap[owners] = new_starts, filled, caps
        self.tail += int(caps.sum())
        self._hit_row = -1
        slots = np.empty(len(rows), dtype=np.intp)
        slots[order] = fresh
        return slots

    def _merge(self, owners: IntpArray, had: IntpArray, new_starts: IntpArray, filled: IntpArray,
               columns_added: IntpArray) -> IntpArray:
        """Each owner's old positions and its new ones (``columns_added``, sorted by owner) into its
        new run at ``new_starts``, in column order; returns the new positions' slots."""
        old_slots = spans(self._start[owners], had)
        added = filled - had
        group = np.concatenate([np.repeat(np.arange(len(owners)), had), np.repeat(np.arange(len(owners)), added)])
        columns = np.concatenate([self.col[old_slots], columns_added])
        placed = np.lexsort((columns, group))
        where = np.empty(len(placed), dtype=np.intp)  # each (old, then new) position's new slot
        where[placed] = new_starts[group[placed]] + np.arange(len(placed)) - group_starts(filled)[group[placed]]
        self._carry(old_slots, where[: len(old_slots)])
        self.col[where] = columns
        return where[len(old_slots):]

    def remove_many(self, rows: IntpArray, cols: IntpArray) -> None:
        """The positions (which must exist) are gone; each run they leave closes up."""
        gone = self.find_many(rows, cols)
        assert (gone >= 0).all(), "removing positions that do not exist"
        owners = np.unique(rows)
        lengths = self._len[owners].astype(np.intp)
        slots = spans(self._start[owners], lengths)
        keep = ~np.isin(slots, gone)
        group = np.repeat(np.arange(len(owners)), lengths)[keep]
        kept = np.bincount(group, minlength=len(owners))
        to = self._start[owners][group] + np.arange(len(group)) - group_starts(kept)[group]
        self._carry(slots[keep], to.astype(np.intp), slots)
        self._len[owners] = kept
        self._hit_row = -1

    def run_slots(self, rows: IntpArray) -> tuple[IntpArray, IntpArray]:
        """Every slot of the runs of ``rows`` (each >= 0), and the index into ``rows`` it belongs to."""
        lengths = self._len[rows].astype(np.intp)
        return spans(self._start[rows], lengths), np.repeat(np.arange(len(rows)), lengths)

    def run(self, row: int) -> slice:
        start = self._sv[row]
        return slice(start, start + self._lv[row])
