"""The columns positions are packed in and the run of slots each SKU row owns in them (``_segments``):
their room — a run moved to the tail, the columns grown or packed — and what a snapshot holds of them.

Every slot that holds no position is zero in every column: sums over the columns need no mask, and a
snapshot's name references count only positions.
"""

from __future__ import annotations

from typing import Any, Self

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


def group_starts(counts: IntpArray) -> IntpArray:
    """Exclusive prefix sums: where each group starts when groups of ``counts`` are laid end to end."""
    return np.cumsum(counts) - counts



class Runs:
    """Flat position columns (``wide`` int64, ``narrow`` int32, ``col``) and one run of slots per SKU
    row (``start``, ``length``, ``cap``); ``Segments`` finds, inserts and removes positions in them."""

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
        starts = group_starts(caps)
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
                runs: tuple[Int64Array, Int32Array, Int32Array]) -> Self:
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
