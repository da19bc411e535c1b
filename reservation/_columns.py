"""The columns of a position, and what reads or writes them a block at a time (``PositionStore``'s
LoadCounts, curation and E9 sweep side): numpy in and out, no object per position."""

from __future__ import annotations

import itertools

import msgspec
import numpy as np
import numpy.typing as npt

from ._model import Quantities
from ._names import Names
from ._segments import Int32Array, Int64Array, IntpArray, Segments, int32_of, raw

ON_HAND, RESERVED, COMMITTED, SAFETY = range(4)
"""The quantities of a position a caller may change (Q1-Q4), as ``add``/``set`` name them."""
W_COUNT_TIME = 3
"""The wide (int64) columns: ON_HAND, RESERVED, COMMITTED, then the latest count's event time (E2)."""
N_SAFETY, N_COUNT_QTY, N_SOURCE, N_EVENT, N_DELTAS = range(5)
"""The narrow (int32) columns: Q4; the latest count's quantity, source and event_id in ``names``
(NONE: no count); the head of the position's chain of kept deltas in the ledger's ``DeltaPool`` (0: none)."""
BoolArray = npt.NDArray[np.bool_]
DENSE_CELLS = 1 << 20
"""Largest SKUs x locations ``available_block`` builds whole before picking a channel's columns."""
Cell = tuple[int, int]
"""A position as (SKU row, location column): fixed while the position lives (its slot is not)."""
LAYOUTS = itertools.count(1)
"""``PositionStore.columns_version``: drawn anew at each change of a store's columns, so no two layouts share one."""
USERS_CHUNK = 1 << 20
"""Slots counted at a time by ``column_users`` (no temporary the size of a national estate's columns)."""


class StoreSnapshot(msgspec.Struct, array_like=True, forbid_unknown_fields=True):
    """The used slots of each column, one contiguous view per field: no copy (a shard's snapshot is
    taken in its turn), and no free room carried."""

    skus: list[str]
    locations: list[str]
    tail: int  # ``Segments``: slots in use or left behind, and how many of them are left behind
    garbage: int
    wide: list[memoryview]  # int64 per slot, one per field: ON_HAND, RESERVED, COMMITTED, count time
    narrow: list[memoryview]  # int32 per slot: SAFETY, count quantity, source, event_id, deltas head
    col: memoryview  # int32 per slot: its location's column
    starts: memoryview  # int64 per SKU row: where its run starts
    lengths: memoryview  # int32 per SKU row: positions in the run
    caps: memoryview  # int32 per SKU row: slots the run owns
    names: list[str | None]


class Blocks:
    """Block reads and writes of a ``PositionStore`` (mixed in: they need its layout, nothing else)."""

    __slots__ = ("columns_version",)
    _seg: Segments
    _skus: list[str]
    _locations: list[str]
    _sku_row: dict[str, int]
    _loc_col: dict[str, int]
    _col_users: list[int]
    names: Names

    def chained(self, first_row: int, rows: int) -> list[Cell]:
        """The cells of SKU rows ``first_row`` .. ``first_row + rows`` that keep deltas (E9's sweep)."""
        seg = self._seg
        owners = np.arange(first_row, min(first_row + rows, len(self._skus)), dtype=np.intp)
        slots, owner = seg.run_slots(owners)
        kept = np.flatnonzero(seg.narrow[N_DELTAS, slots])
        return list(zip(owners[owner[kept]].tolist(), seg.col[slots[kept]].tolist(), strict=True))

    def counts_at(self, rows: IntpArray, cols: IntpArray) -> tuple[BoolArray, Int64Array, Int64Array, Int64Array,
                                                                  Int32Array]:
        """Per cell: whether it is a position, its latest count's time and quantity, its (source,
        event_id) indices as one int64 (source << 32 | event_id; 0: no count), and the head of its
        kept deltas (0: none). A cell that is no position reads as zeros."""
        seg = self._seg
        slots = seg.find_many(rows, cols)
        present = slots >= 0
        at = np.where(present, slots, 0)
        narrow = np.where(present, seg.narrow[:, at], 0)
        wide_ids = narrow[[N_SOURCE, N_EVENT]].astype(np.int64)
        return (present, np.where(present, seg.wide[W_COUNT_TIME, at], 0), narrow[N_COUNT_QTY].astype(np.int64),
                wide_ids[0] << 32 | wide_ids[1], narrow[N_DELTAS])

    def recount(self, rows: IntpArray, cols: IntpArray, on_hand: Int64Array, quantity: Int64Array, at: Int64Array,
                names: tuple[Int32Array, Int32Array]) -> tuple[Int64Array, Int64Array, Int64Array]:
        """Positions that exist get a new latest count and on_hand (E2); the names of the counts
        they held are released (``names``: already acquired; read the old ones first, see
        ``counts_at``). Returns what they held: on_hand, count time, count quantity."""
        seg = self._seg
        slots = seg.find_many(rows, cols)
        if (slots < 0).any():  # checked first: -1 would index another position's columns
            raise LookupError("recount: a cell that is no position")
        narrow_quantity = int32_of(quantity)
        wide, narrow = seg.wide, seg.narrow
        old = wide[ON_HAND, slots], wide[W_COUNT_TIME, slots], narrow[N_COUNT_QTY, slots].astype(np.int64)
        self.names.release_all(narrow[N_SOURCE, slots])
        self.names.release_all(narrow[N_EVENT, slots])
        wide[ON_HAND, slots], wide[W_COUNT_TIME, slots] = on_hand, at
        narrow[N_COUNT_QTY, slots] = narrow_quantity
        narrow[N_SOURCE, slots], narrow[N_EVENT, slots] = names
        return old

    def create_counted(self, rows: IntpArray, cols: IntpArray, quantity: Int64Array, at: Int64Array,
                       names: tuple[int, Int32Array], safety: Int64Array) -> None:
        """New positions, each with a count as its only fact: on_hand is the count (E2). ``names``:
        the source's index and each row's event_id index, already acquired for these positions."""
        seg = self._seg
        assert not (seg.find_many(rows, cols) >= 0).any(), "create_counted over a position that exists"
        narrow_quantity, narrow_safety = int32_of(quantity), int32_of(safety)  # refused before anything changes
        slots = seg.insert_many(rows, cols)
        wide, narrow = seg.wide, seg.narrow
        wide[ON_HAND, slots], wide[W_COUNT_TIME, slots] = quantity, at
        narrow[N_COUNT_QTY, slots], narrow[N_SAFETY, slots] = narrow_quantity, narrow_safety
        narrow[N_SOURCE, slots], narrow[N_EVENT, slots] = names
        self._count_users(cols, 1)

    def forget_cells(self, rows: IntpArray, cols: IntpArray) -> None:
        """Undo of ``create_counted``: the positions were never there; their names are released."""
        seg = self._seg
        slots = seg.find_many(rows, cols)
        if (slots < 0).any():  # checked first: -1 would index another position's columns
            raise LookupError("forget_cells: a cell that is no position")
        self.names.release_all(seg.narrow[N_SOURCE, slots])
        self.names.release_all(seg.narrow[N_EVENT, slots])
        seg.remove_many(rows, cols)
        self._count_users(cols, -1)
        self._trim()

    def _count_users(self, cols: IntpArray, sign: int) -> None:
        """Positions made (``sign`` 1) or gone (-1) at ``cols``, counted per column (``_trim``)."""
        counts, users = np.bincount(cols), self._col_users
        for c in np.flatnonzero(counts).tolist():
            users[c] += sign * int(counts[c])

    def _trim(self) -> None:
        """The last SKU rows and location columns that no position uses any more are dropped (after an undo). A
        batch taken back (its append failed, R7) leaves no name behind: sealed batches are taken back newest first,
        so the rows and columns a batch added are the last ones once its positions are gone. Kept, each made-up SKU
        and location sent while appends failed stayed a row or column for good, outside ``max_positions_per_shard``
        (it counts positions), in every snapshot, curated by the channel desk; a replay of the log had none (E10)."""
        seg, skus = self._seg, self._skus
        while skus and (run := seg.run(len(skus) - 1)).start == run.stop:
            del self._sku_row[skus.pop()]
            seg.drop_last_row()
        users, locations = self._col_users, self._locations
        if users and not users[-1]:
            while users and not users[-1]:
                users.pop()
                del self._loc_col[locations.pop()]
            self.columns_version = next(LAYOUTS)  # a column index may name another location from now on

    def snapshot(self) -> StoreSnapshot:
        """The used slots and rows, as views (no copy), without a SKU row or location column no position uses: none
        left by a batch taken back before ``_trim`` dropped them with it is carried, and a restore has none."""
        seg = self._seg
        wide, narrow, col, starts, lengths, caps = seg.arrays()
        skus, locations, tail, garbage = self._skus, self._locations, seg.tail, seg.garbage
        empty = lengths == 0
        if empty.any():
            kept = ~empty
            skus = list(itertools.compress(skus, kept.tolist()))
            garbage += int(caps[empty].sum())  # their runs' room is left behind (tail = caps + garbage)
            starts, lengths, caps = starts[kept], lengths[kept], caps[kept]
        used = np.array(self._col_users, dtype=np.int64) > 0
        if not used.all():
            locations = list(itertools.compress(locations, used.tolist()))
            col = np.maximum(np.cumsum(used) - 1, 0).astype(np.int32).take(col)  # a slot of no position stays 0
        if not skus:  # no position: no slot carried (its column would name a location not kept)
            tail = garbage = 0
            wide, narrow, col = [f[:0] for f in wide], [f[:0] for f in narrow], col[:0]
        return StoreSnapshot(
            skus=list(skus), locations=list(locations), tail=tail, garbage=garbage, wide=[raw(f) for f in wide],
            narrow=[raw(f) for f in narrow], col=raw(col), starts=raw(starts), lengths=raw(lengths), caps=raw(caps),
            names=self.names.snapshot())

    def held_any(self, rows: IntpArray, cols: IntpArray) -> BoolArray:
        """Per row (a SKU; -1: none here), whether it has a position at any of ``cols`` (-1: a location never seen
        here): what stands behind a network channel's number of the SKU, Q5 not read (``available_block`` per
        slice of a reload's pass over a channel's SKUs held the loop for seconds)."""
        held = np.zeros(len(rows), dtype=np.bool_)
        known = np.flatnonzero(rows >= 0)
        if not len(known) or not len(cols):
            return held
        slots, owner = self._seg.run_slots(rows.take(known))
        wanted = np.zeros(len(self._locations) + 1, dtype=np.bool_)
        wanted[cols[cols >= 0]] = True
        held[known.take(owner[wanted.take(self._seg.col.take(slots))])] = True
        return held

    def available_block(self, rows: IntpArray, cols: IntpArray) -> tuple[Int64Array, BoolArray]:
        """Q5 ``available`` for rows x cols (SKUs x a channel's locations) and whether each position
        exists: one pass over the runs of a shard's changed SKUs (-1 rows/cols: absent)."""
        if not len(rows) or not len(cols):
            shape = (len(rows), len(cols))
            return np.zeros(shape, dtype=np.int64), np.zeros(shape, dtype=np.bool_)
        known = np.flatnonzero(rows >= 0)
        slots, owner = self._seg.run_slots(rows.take(known))
        owner, at, available = known.take(owner), self._seg.col.take(slots), self._available_many(slots)
        width = len(self._locations)
        if len(rows) * width > DENSE_CELLS:
            return self._channel_block(len(rows), cols, owner, at, available)
        # Every location of the rows, then the channel's columns: column ``width`` stays empty, so a
        # location never seen here (-1) reads as no position, and one named twice reads twice.
        whole = np.zeros((len(rows), width + 1), dtype=np.int64)
        there = np.zeros((len(rows), width + 1), dtype=np.bool_)
        whole[owner, at] = available
        there[owner, at] = True
        pick = np.where(cols >= 0, cols, width)
        return whole.take(pick, axis=1), there.take(pick, axis=1)

    def _channel_block(self, rows: int, cols: IntpArray, owner: IntpArray, at: Int32Array,
                       values: Int64Array) -> tuple[Int64Array, BoolArray]:
        """``available_block`` where rows x every location is too large to build: each position is
        mapped to its column in the channel (a shard of tens of thousands of locations)."""
        channel = np.full(len(self._locations) + 1, -1, dtype=np.intp)  # location column -> channel column
        wanted = np.flatnonzero(cols >= 0)
        distinct, first = np.unique(cols[wanted], return_index=True)
        channel[distinct] = wanted[first]
        column = channel.take(at)
        sold = column >= 0
        available, present = np.zeros((rows, len(cols)), dtype=np.int64), np.zeros((rows, len(cols)), dtype=np.bool_)
        available[owner[sold], column[sold]] = values[sold]
        present[owner[sold], column[sold]] = True
        if len(distinct) < len(wanted):  # a location the channel names twice reads the same twice
            source = channel[cols[wanted]]
            available[:, wanted], present[:, wanted] = available[:, source], present[:, source]
        return available, present

    def _available_many(self, slots: IntpArray) -> Int64Array:
        wide = self._seg.wide.take(slots, axis=1)  # take: about twice as fast as fancy indexing
        safety = self._seg.narrow[N_SAFETY].take(slots)
        available: Int64Array = wide[ON_HAND] - wide[RESERVED] - wide[COMMITTED] - safety
        return available

    def totals(self) -> Quantities:
        """Sum of every field over all positions (used by invariant checks): a slot that holds no
        position is zero in every column."""
        seg = self._seg
        on_hand, reserved, committed = seg.wide[:W_COUNT_TIME, : seg.tail].sum(axis=1).tolist()
        return Quantities(on_hand, reserved, committed, int(seg.narrow[N_SAFETY, : seg.tail].sum(dtype=np.int64)))

    @property
    def slots(self) -> int:
        """Column slots in use (positions and the empty slots between them): what a pass over the
        arrays covers."""
        return self._seg.tail

    def oversold_units(self, start: int = 0, stop: int | None = None) -> int:
        """Q5: units promised (reserved + committed) beyond on hand, summed over the positions of slots
        ``start`` to ``stop`` (all by default), one numpy pass; an empty slot is zero in every column.
        Safety stock is left out: protecting more than is there is not selling what is not there."""
        tail = self._seg.tail
        wide = self._seg.wide[:, start: tail if stop is None else min(stop, tail)]
        uncovered = wide[ON_HAND] - wide[RESERVED] - wide[COMMITTED]
        return int(-uncovered[uncovered < 0].sum())


def column_users(seg: Segments, columns: int) -> list[int]:
    """Positions per location column, counted over the slots (one of no position reads column 0) a chunk at a time."""
    users = np.zeros(columns, dtype=np.int64)
    for at in range(0, seg.tail, USERS_CHUNK):
        users += np.bincount(seg.col[at: at + USERS_CHUNK], minlength=columns)[:columns]
    if columns:
        users[0] -= seg.tail - seg.positions()
    return [int(n) for n in users.tolist()]
