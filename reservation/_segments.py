"""Positions packed per SKU: the memory of a shard grows with what it stocks, not with SKUs x locations.

Each SKU row owns a run of slots (``start``, ``length``, ``cap``) in flat columns, its positions sorted
by location column, so one position is found by a binary search of at most a few hundred columns and a
whole SKU is one slice. A dense grid would cost a cell for every (SKU, location) pair: 1 M SKUs x 300
locations is 300 M cells, though a catalogue that size stocks a tenth of them.

A SKU that gains a position past its run's capacity moves to the tail with room to grow; the run it
left is garbage. When the columns run out of room they grow by a quarter, copied as they lie, or,
if more than a sixteenth of them is garbage, every run is packed into fresh columns instead.
Every slot that holds no position is zero in every column: sums over the columns need no mask,
and a snapshot's name references count only positions.

A position's slot is not stable (inserts shift a run, moves relocate it): callers name a position by
(SKU row, location column), which are.
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Any

import numpy as np
import numpy.typing as npt

Int64Array = npt.NDArray[np.int64]
Int32Array = npt.NDArray[np.int32]
IntpArray = npt.NDArray[np.intp]
WIDE = 4
"""int64 columns per position (the store names them)."""
NARROW = 5
"""int32 columns per position."""
GROWTH = 16
"""The per-SKU arrays grow by a sixteenth; the columns are packed when a sixteenth of them is garbage."""
COLUMN_GROWTH = 4
"""The columns grow by a quarter: room never written is never resident (fresh zero pages), and a
snapshot carries only the used slots, so a larger step costs neither memory nor snapshot time, and
saves copies (a baseline load grows the columns all the way)."""
MIN_SLOTS = 1024
TABLE_CELLS_PER_PAIR = 8
"""``find_many`` builds a table of the asked rows x columns when it and the rows' runs hold at most
this many cells per pair asked."""
SINGLE_STEP = 4
"""Fewest slots a run gains when one position more does not fit (a quarter more for longer runs)."""
ROW_STEP = 256
"""Fewest SKU rows added when the per-SKU arrays grow (a shard of a national estate holds thousands)."""


def raw(array: npt.NDArray[Any]) -> memoryview:
    """The array's bytes for a snapshot, copied only if not contiguous: a snapshot may view live
    columns (a copy of a national estate's is 100 MB a shard), so it is encoded in the turn it is
    taken, before the shard changes anything (``Checkpoints.save``). Decoded, it views the input."""
    return np.ascontiguousarray(array).reshape(-1).view(np.uint8).data


INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1


def check_int32(value: int) -> int:
    """``value``, which must fit a narrow column (``Limits.max_quantity`` < 2**31): checked before
    anything changes, so a value past it changes nothing."""
    if not INT32_MIN <= value <= INT32_MAX:
        raise ValueError(f"{value} does not fit 32 bits (a count's quantity or a safety stock, see max_quantity)")
    return value


def int32_of(values: Int64Array) -> Int32Array:
    """``values`` as int32, checked (numpy's conversion would wrap them silently)."""
    if len(values) and (int(values.min()) < INT32_MIN or int(values.max()) > INT32_MAX):
        raise ValueError("a count's quantity or a safety stock does not fit 32 bits (see max_quantity)")
    return values.astype(np.int32)


def spans(starts: Int64Array, lengths: Int32Array | Int64Array) -> IntpArray:
    """The slots ``starts[i] .. starts[i] + lengths[i]`` of every i, concatenated in order."""
    lengths = lengths.astype(np.intp)
    total = int(lengths.sum())
    if not total:
        return np.zeros(0, dtype=np.intp)
    offsets = np.repeat(starts.astype(np.intp) - (np.cumsum(lengths) - lengths), lengths)
    return offsets + np.arange(total, dtype=np.intp)


def _before(counts: IntpArray) -> IntpArray:
    """Exclusive prefix sums: where each group starts when groups of ``counts`` are laid end to end."""
    return np.cumsum(counts) - counts


class Segments:
    """Flat position columns (``wide`` int64, ``narrow`` int32, ``col``) and one run of slots per SKU row."""

    __slots__ = ("_cap", "_capv", "_cv", "_hit_col", "_hit_row", "_hit_slot", "_len", "_lv", "_start", "_sv", "col",
                 "garbage", "narrow", "nv", "rows", "tail", "wide", "wv")

    def __init__(self, rows: int = ROW_STEP, slots: int = MIN_SLOTS) -> None:
        self.rows = 0
        """SKU rows in use; the per-row arrays may be longer."""
        self.tail = 0
        """Slots ``tail`` onwards were never used since the columns were last packed."""
        self.garbage = 0
        """Slots below ``tail`` that no run owns (left behind by moves)."""
        self._start = np.zeros(rows, dtype=np.int64)
        self._len = np.zeros(rows, dtype=np.int32)
        self._cap = np.zeros(rows, dtype=np.int32)
        self.wide = np.zeros((WIDE, slots), dtype=np.int64)
        self.narrow = np.zeros((NARROW, slots), dtype=np.int32)
        self.col = np.zeros(slots, dtype=np.int32)
        self._views()

    def _views(self) -> None:
        # One slot at a time through memoryviews: plain ints, no numpy scalars (the fact hot path).
        self.wv, self.nv, self._cv = self.wide.data, self.narrow.data, self.col.data
        self._sv, self._lv, self._capv = self._start.data, self._len.data, self._cap.data
        # A one-position cache of ``find``: a fact looks its position up several times.
        self._hit_row: int = -1
        self._hit_col: int = -1
        self._hit_slot: int = -1

    @property
    def size(self) -> int:
        return self.col.shape[0]

    def positions(self) -> int:
        return int(self._len[: self.rows].sum())

    def add_row(self) -> int:
        """A new SKU row with no positions."""
        row = self.rows
        if row >= len(self._start):
            extra = max(ROW_STEP, row // GROWTH)
            self._start = np.concatenate([self._start, np.zeros(extra, dtype=np.int64)])
            self._len = np.concatenate([self._len, np.zeros(extra, dtype=np.int32)])
            self._cap = np.concatenate([self._cap, np.zeros(extra, dtype=np.int32)])
            self._views()
        self.rows += 1
        return row

    def drop_last_row(self) -> None:
        """The last SKU row, holding no position, is gone (the batch that added it was taken back): its run's
        room is the tail's again where the run ends there, else left behind."""
        row = self.rows - 1
        assert row >= 0 and not self._lv[row], "dropping a row that holds positions"
        start, cap = self._sv[row], self._capv[row]
        if cap and start + cap == self.tail:
            self.tail = start  # its slots are zero: it holds no position
        else:
            self.garbage += cap
        self._sv[row] = self._lv[row] = self._capv[row] = 0
        self.rows, self._hit_row = row, -1

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
        new_starts = self.tail + _before(caps)
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
        where[placed] = new_starts[group[placed]] + np.arange(len(placed)) - _before(filled)[group[placed]]
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
        to = self._start[owners][group] + np.arange(len(group)) - _before(kept)[group]
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

    # -- room --------------------------------------------------------------------------------------
    def _carry(self, source: IntpArray, to: IntpArray, clear: IntpArray | None = None) -> None:
        """Positions at ``source`` move to ``to``; the slots of ``clear`` (default: ``source``) not
        written to are left zero. Read whole before anything is written: runs may overlap."""
        wide, narrow, col = self.wide[:, source], self.narrow[:, source], self.col[source]
        emptied = source if clear is None else clear
        self.wide[:, emptied] = 0
        self.narrow[:, emptied] = 0
        self.col[emptied] = 0
        self.wide[:, to], self.narrow[:, to], self.col[to] = wide, narrow, col

    def _slide(self, source: int, to: int, n: int) -> None:
        """Slots ``source`` .. ``source + n`` copied to ``to`` .. ``to + n`` in every column (numpy
        copies overlapping slices as if through a buffer: a run may slide within itself)."""
        self.wide[:, to: to + n] = self.wide[:, source: source + n]
        self.narrow[:, to: to + n] = self.narrow[:, source: source + n]
        self.col[to: to + n] = self.col[source: source + n]

    def _clear(self, start: int, stop: int) -> None:
        """Slots ``start`` .. ``stop`` zero in every column: they hold no position."""
        self.wide[:, start:stop] = 0
        self.narrow[:, start:stop] = 0
        self.col[start:stop] = 0

    def _move(self, row: int, cap: int) -> None:
        """The row's run moves to the tail, with room for ``cap`` positions (slices: a run is contiguous)."""
        self._room(cap)
        start, length, tail = self._sv[row], self._lv[row], self.tail
        if length:
            self._slide(start, tail, length)
            self._clear(start, start + length)
        self.garbage += self._capv[row]
        self._sv[row], self._capv[row] = tail, cap
        self.tail = tail + cap
        self._hit_row = -1

    def _room(self, need: int) -> None:
        """At least ``need`` free slots at the tail: when short, the columns grow as they lie, or (more
        than a sixteenth of them garbage) every run is packed, in row order with its capacity, into
        fresh columns a quarter larger than what is packed and needed."""
        if self.tail + need <= self.size:
            return
        if self.garbage <= self.tail // GROWTH:
            self._grow(self.tail + need + (self.tail + need) // COLUMN_GROWTH)
            return
        rows = self.rows
        caps = self._cap[:rows].astype(np.intp)
        packed = int(caps.sum())
        size = max(MIN_SLOTS, packed + need + (packed + need) // COLUMN_GROWTH)
        starts = _before(caps)
        lengths = self._len[:rows]
        source, to = spans(self._start[:rows], lengths), spans(starts.astype(np.int64), lengths)
        wide = np.zeros((WIDE, size), dtype=np.int64)
        narrow = np.zeros((NARROW, size), dtype=np.int32)
        col = np.zeros(size, dtype=np.int32)
        for field in range(WIDE):  # a field at a time: no temporary the size of all the columns
            wide[field, to] = self.wide[field, source]
        for field in range(NARROW):
            narrow[field, to] = self.narrow[field, source]
        col[to] = self.col[source]
        self.wide, self.narrow, self.col = wide, narrow, col
        self._start[:rows] = starts
        self.tail, self.garbage = packed, 0
        self._views()

    def _grow(self, size: int) -> None:
        """Longer columns, the used part copied as it lies (a baseline load grows them often: little
        left behind is not worth a gather of every position)."""
        tail = self.tail
        wide = np.zeros((WIDE, size), dtype=np.int64)
        narrow = np.zeros((NARROW, size), dtype=np.int32)
        col = np.zeros(size, dtype=np.int32)
        wide[:, :tail], narrow[:, :tail], col[:tail] = self.wide[:, :tail], self.narrow[:, :tail], self.col[:tail]
        self.wide, self.narrow, self.col = wide, narrow, col
        self._views()

    # -- snapshots ---------------------------------------------------------------------------------
    def arrays(self) -> tuple[list[Int64Array], list[Int32Array], Int32Array, Int64Array, Int32Array, Int32Array]:
        """The used slots of each column and the used rows of the per-row arrays: contiguous views,
        no copy (encode them before anything changes); the room past them is left out."""
        tail, rows = self.tail, self.rows
        return ([self.wide[f, :tail] for f in range(WIDE)], [self.narrow[f, :tail] for f in range(NARROW)],
                self.col[:tail], self._start[:rows], self._len[:rows], self._cap[:rows])

    @classmethod
    def restore(cls, tail: int, garbage: int, wide: list[Int64Array], narrow: list[Int32Array], col: Int32Array,
                runs: tuple[Int64Array, Int32Array, Int32Array]) -> Segments:
        """Columns with room to grow, filled with the ``arrays`` of a snapshot (rows: ``len(runs[0])``)."""
        segments = cls(rows=len(runs[0]) + ROW_STEP, slots=max(MIN_SLOTS, tail + tail // COLUMN_GROWTH))
        segments.rows, segments.tail, segments.garbage = len(runs[0]), tail, garbage
        for f, wide_values in enumerate(wide):
            segments.wide[f, :tail] = wide_values
        for f, narrow_values in enumerate(narrow):
            segments.narrow[f, :tail] = narrow_values
        segments.col[:tail] = col
        rows = len(runs[0])
        segments._start[:rows], segments._len[:rows], segments._cap[:rows] = runs
        return segments
