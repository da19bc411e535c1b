"""Positions in flat numpy columns, packed per SKU (``_segments``): memory follows what is stocked.

A dict entry per position costs ~100 bytes of Python objects; here a position costs its Q1-Q3 and
its latest count's time as int64, its safety stock, its latest count's quantity, source and event_id
(int32 indices into a shared table of names) and where its kept deltas start as int32, and its
location's column: 56 bytes, so 30 M positions take 1.6 GiB, whether an estate stocks every
location of 100,000 SKUs or a tenth of 1 M SKUs' (a grid of SKUs x locations would take 300 M cells
for the latter). Only this class knows the layout; callers name a position by its (SKU row,
location column), its cell, which never changes while the position lives.

Quantities a single fact sets (a count's quantity, safety stock) fit int32: ``Limits.max_quantity``
is bounded below 2**31. Sums (on_hand, reserved, committed) and times are int64.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import overload

import numpy as np

from ._columns import (
    COMMITTED,
    LAYOUTS,
    N_COUNT_QTY,
    N_DELTAS,
    N_EVENT,
    N_SAFETY,
    N_SOURCE,
    ON_HAND,
    RESERVED,
    SAFETY,
    W_COUNT_TIME,
    Blocks,
    Cell,
    StoreSnapshot,
    column_users,
)
from ._model import ZERO, Quantities
from ._names import NONE, Names
from ._segments import Int32Array, Int64Array, IntpArray, Segments, check_int32

LatestCount = tuple[int, str, str, int]
"""A position's latest count: (event_time, source, event_id, quantity)."""
__all__ = ["COMMITTED", "MADE", "ON_HAND", "RESERVED", "SAFETY", "Int32Array", "Int64Array", "IntpArray",
           "PositionStore"]


class _Made(int):
    """The type of ``MADE``: an int, so that a sum of moves takes it as the 0 it is."""

    __slots__ = ()


MADE = _Made(0)
"""The journal's entry (sku, location, MADE) for a position made: a move of 0 that also says the position
was not there before its batch, compared by identity (``delta is MADE``). A reader of durable state takes
a position a batch in flight made as absent, not even 0 (C4)."""


class PositionStore(Blocks):
    """Quantities per (sku, location), and per position its latest count and its kept deltas' head."""

    __slots__ = ("_col_users", "_loc_col", "_locations", "_seg", "_sku_row", "_skus", "journal", "names")

    def __init__(self) -> None:
        self._sku_row: dict[str, int] = {}
        self._loc_col: dict[str, int] = {}
        self._skus: list[str] = []
        self._locations: list[str] = []
        self._col_users: list[int] = []  # positions per location column (``_trim``)
        self.columns_version = next(LAYOUTS)
        """Drawn anew whenever a location column is added or dropped: callers caching ``columns`` compare it."""
        self._seg = Segments()
        self.names = Names()
        self.journal: list[tuple[str, str, int]] | None = []
        """Every change of a position's ``available`` (sku, location, delta), in order, while not
        None: the ledger takes it per batch, so a batch not yet durable can be subtracted (C4). A
        position made is an entry of its own, (sku, location, ``MADE``): a batch not yet durable that
        made one is taken off whole, the position with it."""

    def __len__(self) -> int:
        return self._seg.positions()

    def get(self, sku: str, location: str) -> Quantities:
        slot = self._find(sku, location)
        if slot < 0:
            return ZERO
        wv = self._seg.wv
        return Quantities(wv[ON_HAND, slot], wv[RESERVED, slot], wv[COMMITTED, slot], self._seg.nv[N_SAFETY, slot])

    @overload
    def available(self, sku: str, location: str) -> int | None: ...
    @overload
    def available(self, sku: str, location: str, absent: int) -> int: ...

    def available(self, sku: str, location: str, absent: int | None = None) -> int | None:
        """Q5 ``available`` of one position without building its Quantities (``absent``: no such
        position). ``_find`` and ``_available`` written out: every Reserve asks it."""
        row = self._sku_row.get(sku)
        col = self._loc_col.get(location)
        if row is None or col is None:
            return absent
        seg = self._seg
        slot = seg.find(row, col)
        if slot < 0:
            return absent
        wv = seg.wv
        return wv[ON_HAND, slot] - wv[RESERVED, slot] - wv[COMMITTED, slot] - seg.nv[N_SAFETY, slot]

    def exists(self, sku: str, location: str) -> bool:
        return self._find(sku, location) >= 0

    def locate(self, sku: str, location: str) -> Cell | None:
        """The cell of a position that exists (None: no such position)."""
        row = self._sku_row.get(sku)
        col = self._loc_col.get(location)
        if row is None or col is None or self._seg.find(row, col) < 0:
            return None
        return row, col

    def forget(self, sku: str, location: str) -> None:
        """Undo of the change that created a position: it was never there (replay must agree, E10)."""
        row, col = self._sku_row[sku], self._loc_col[location]
        slot = self._seg.find(row, col)
        if slot < 0:  # checked first: -1 would index another position's columns
            raise LookupError(f"no position {sku!r} at {location!r} to forget")
        if self.journal is not None:
            self.journal.append((sku, location, -self._available(slot)))
        self._release_count(slot)
        self._seg.remove(row, col)
        self._col_users[col] -= 1
        self._trim()

    def add(self, sku: str, location: str, field: int, delta: int) -> None:
        if field == SAFETY:
            check_int32(self.get(sku, location).safety_stock + delta)
        slot = self._cell(sku, location)
        if field == SAFETY:
            self._seg.nv[N_SAFETY, slot] += delta
        else:
            self._seg.wv[field, slot] += delta
        if self.journal is not None:
            self.journal.append((sku, location, delta if field == ON_HAND else -delta))

    def move(self, sku: str, location: str, d_reserved: int, d_committed: int) -> bool:
        """Q2/Q3 change of one position in one lookup (the reservation hot path); whether the
        position existed before (False: this move created it), which its undo needs to know."""
        row = self._sku_row.get(sku)  # ``_find``, written out
        col = self._loc_col.get(location)
        slot = -1 if row is None or col is None else self._seg.find(row, col)
        existed = slot >= 0
        if not existed:
            slot = self._cell(sku, location)
        wv = self._seg.wv
        if d_reserved:
            wv[RESERVED, slot] += d_reserved
        if d_committed:
            wv[COMMITTED, slot] += d_committed
        if self.journal is not None:
            self.journal.append((sku, location, -d_reserved - d_committed))
        return existed

    def hold(self, sku: str, location: str, quantity: int) -> int | None:
        """Q5 ``available`` of a position (None: no such position), and ``quantity`` more reserved (Q2)
        there where it fits, ``quantity <= available``: never oversold (R2). ``available`` and ``move``
        in one lookup, written out (every Reserve of one line); a hold that does not fit changes nothing."""
        row = self._sku_row.get(sku)
        col = self._loc_col.get(location)
        if row is None or col is None:
            return None
        seg = self._seg
        slot = seg.find(row, col)
        if slot < 0:
            return None
        wv = seg.wv
        reserved = wv[RESERVED, slot]
        available = wv[ON_HAND, slot] - reserved - wv[COMMITTED, slot] - seg.nv[N_SAFETY, slot]
        if quantity <= available:
            wv[RESERVED, slot] = reserved + quantity
            if self.journal is not None:
                self.journal.append((sku, location, -quantity))
        return available

    def set(self, sku: str, location: str, field: int, value: int) -> None:
        if field == SAFETY:
            check_int32(value)
        slot = self._cell(sku, location)
        view, at = (self._seg.nv, N_SAFETY) if field == SAFETY else (self._seg.wv, field)
        if self.journal is not None:
            delta = value - view[at, slot]
            self.journal.append((sku, location, delta if field == ON_HAND else -delta))
        view[at, slot] = value

    # -- one position's count and kept deltas (E2): by slot in the turn it is found, by cell later --
    def place(self, sku: str, location: str) -> tuple[int, int, int, bool]:
        """A position's cell and slot (the slot holds until the store next changes shape: use it in
        this step only), created if it is new, and whether it existed before."""
        row = self._sku_row.get(sku)
        col = self._loc_col.get(location)
        if row is None or col is None:
            row, col = self._row(sku), self._col(location)
        slot = self._seg.find(row, col)
        if slot >= 0:
            return row, col, slot, True
        self._made(sku, location, col)
        return row, col, self._seg.insert(row, col), False

    def add_on_hand(self, slot: int, sku: str, location: str, delta: int) -> None:
        """``add`` of on_hand to the position ``place`` just gave."""
        self._seg.wv[ON_HAND, slot] += delta
        if self.journal is not None:
            self.journal.append((sku, location, delta))

    def on_hand_of(self, slot: int) -> int:
        return self._seg.wv[ON_HAND, slot]

    def count_time_of(self, slot: int) -> int | None:
        """The event time of the position's latest count (None: it has none)."""
        return self._seg.wv[W_COUNT_TIME, slot] if self._seg.nv[N_SOURCE, slot] else None

    def count_of(self, slot: int) -> LatestCount | None:
        nv = self._seg.nv
        source = nv[N_SOURCE, slot]
        if not source:
            return None
        name = self.names.name
        return self._seg.wv[W_COUNT_TIME, slot], name(source), name(nv[N_EVENT, slot]), nv[N_COUNT_QTY, slot]

    def put_count_of(self, slot: int, count: LatestCount | None) -> None:
        """Make ``count`` the position's latest (None: it has none); the names it held are released."""
        if count is not None:
            check_int32(count[3])
        self._release_count(slot)
        if count is not None:
            at, source, event_id, quantity = count
            names, nv = self.names, self._seg.nv
            nv[N_SOURCE, slot] = names.acquire(source)
            nv[N_EVENT, slot] = names.acquire(event_id)
            nv[N_COUNT_QTY, slot] = quantity
            self._seg.wv[W_COUNT_TIME, slot] = at

    def head_of(self, slot: int) -> int:
        """Where the position's chain of kept deltas starts (0: it keeps none)."""
        return self._seg.nv[N_DELTAS, slot]

    def set_head_of(self, slot: int, head: int) -> None:
        self._seg.nv[N_DELTAS, slot] = head

    def latest_count(self, sku: str, location: str) -> LatestCount | None:
        slot = self._find(sku, location)
        return None if slot < 0 else self.count_of(slot)

    def count_time_at(self, row: int, col: int) -> int | None:
        slot = self._seg.find(row, col)
        return None if slot < 0 else self.count_time_of(slot)

    def count_at(self, row: int, col: int) -> LatestCount | None:
        slot = self._seg.find(row, col)
        return None if slot < 0 else self.count_of(slot)

    def put_count(self, row: int, col: int, count: LatestCount | None) -> None:
        self.put_count_of(self._slot(row, col), count)

    def head_at(self, row: int, col: int) -> int:
        """(0: no kept deltas, or no such position.)"""
        slot = self._seg.find(row, col)
        return self._seg.nv[N_DELTAS, slot] if slot >= 0 else 0

    def set_head(self, row: int, col: int, head: int) -> None:
        self._seg.nv[N_DELTAS, self._slot(row, col)] = head

    # -- whole blocks of positions (LoadCounts, curation): numpy in, no object per position ----
    def cells(self, skus: Sequence[str], locations: Sequence[str]) -> tuple[IntpArray, IntpArray]:
        """The row of each SKU and the column of each location, made for those not seen yet."""
        rows = np.fromiter((self._row(s) for s in skus), dtype=np.intp, count=len(skus))
        cols = np.fromiter((self._col(loc) for loc in locations), dtype=np.intp, count=len(locations))
        return rows, cols

    def name_users(self) -> tuple[Int32Array, Int32Array]:
        """Every slot's source and event_id index (zero where no position or no count: ``Names`` counts)."""
        tail = self._seg.tail  # past it nothing was ever written (and reading it would map pages)
        return self._seg.narrow[N_SOURCE, :tail], self._seg.narrow[N_EVENT, :tail]

    @property
    def row_count(self) -> int:
        return len(self._skus)

    def sku_locations(self, sku: str) -> Iterator[tuple[str, Quantities]]:
        """Every known location of one SKU (the network view of a SKU is one run)."""
        row = self._sku_row.get(sku)
        if row is None:
            return
        seg = self._seg
        run = seg.run(row)
        block = np.vstack([seg.wide[:W_COUNT_TIME, run], seg.narrow[N_SAFETY, run]]).T.tolist()
        locations = self._locations
        for col, values in zip(seg.col[run].tolist(), block, strict=True):
            yield locations[col], Quantities(*values)

    @property
    def location_count(self) -> int:
        """Locations with a column here (one is dropped with its last position, taken back: ``_trim``)."""
        return len(self._locations)

    def columns(self, locations: Sequence[str]) -> IntpArray:
        """Column of each location (-1: never seen here), for ``available_block``."""
        get = self._loc_col.get
        return np.array([get(loc, -1) for loc in locations], dtype=np.intp)

    def rows(self, skus: Sequence[str]) -> IntpArray:
        """Row of each SKU (-1: never seen here), for ``available_block``."""
        get = self._sku_row.get
        return np.array([get(sku, -1) for sku in skus], dtype=np.intp)

    def sku_names(self) -> list[str]:
        """Every SKU with a row here (a copy: a new SKU may be added while the caller works through it)."""
        return list(self._skus)

    def items(self) -> Iterator[tuple[str, str, Quantities]]:
        for sku in self._skus:
            for location, q in self.sku_locations(sku):
                yield sku, location, q

    @classmethod
    def restore(cls, snap: StoreSnapshot, names: Names) -> PositionStore:
        """The store as snapshotted; ``names``: its table of names, restored (``Names.restoring``)."""
        store = cls()
        store._skus, store._locations = list(snap.skus), list(snap.locations)
        store._sku_row = {s: i for i, s in enumerate(snap.skus)}
        store._loc_col = {loc: i for i, loc in enumerate(snap.locations)}
        runs = (np.frombuffer(snap.starts, dtype=np.int64), np.frombuffer(snap.lengths, dtype=np.int32),
                np.frombuffer(snap.caps, dtype=np.int32))
        store._seg = Segments.restore(
            snap.tail, snap.garbage, [np.frombuffer(f, dtype=np.int64) for f in snap.wide],
            [np.frombuffer(f, dtype=np.int32) for f in snap.narrow], np.frombuffer(snap.col, dtype=np.int32), runs)
        store._col_users = column_users(store._seg, len(snap.locations))
        store.names = names
        return store

    # -- private -----------------------------------------------------------------------------------
    def _find(self, sku: str, location: str) -> int:
        row = self._sku_row.get(sku)
        col = self._loc_col.get(location)
        return -1 if row is None or col is None else self._seg.find(row, col)

    def _slot(self, row: int, col: int) -> int:
        slot = self._seg.find(row, col)
        assert slot >= 0, "a cell that is no position"
        return slot

    def _cell(self, sku: str, location: str) -> int:
        """The slot of a position, created if it is new."""
        row = self._sku_row.get(sku)
        col = self._loc_col.get(location)
        if row is None or col is None:
            row, col = self._row(sku), self._col(location)
        slot = self._seg.find(row, col)
        if slot >= 0:
            return slot
        self._made(sku, location, col)
        return self._seg.insert(row, col)

    def _made(self, sku: str, location: str, col: int) -> None:
        """A new position, counted in its column and into the journal while it is kept (not in replay): ``MADE``."""
        self._col_users[col] += 1
        if self.journal is not None:
            self.journal.append((sku, location, MADE))

    def _available(self, slot: int) -> int:
        wv = self._seg.wv
        return wv[ON_HAND, slot] - wv[RESERVED, slot] - wv[COMMITTED, slot] - self._seg.nv[N_SAFETY, slot]

    def _release_count(self, slot: int) -> None:
        nv = self._seg.nv
        self.names.release(nv[N_SOURCE, slot])
        self.names.release(nv[N_EVENT, slot])
        nv[N_SOURCE, slot] = nv[N_EVENT, slot] = nv[N_COUNT_QTY, slot] = NONE
        self._seg.wv[W_COUNT_TIME, slot] = 0

    def _row(self, sku: str) -> int:
        row = self._sku_row.get(sku)
        if row is None:
            row = self._sku_row[sku] = self._seg.add_row()
            self._skus.append(sku)
        return row

    def _col(self, location: str) -> int:
        col = self._loc_col.get(location)
        if col is None:
            col = self._loc_col[location] = len(self._locations)
            self._locations.append(location)
            self._col_users.append(0)
            self.columns_version = next(LAYOUTS)
        return col

