"""Positions in dense numpy columns: one row per SKU, one column per location.

A dict entry per position costs ~100 bytes of Python objects; here a position costs its four
quantities, its latest count (time and quantity as int64, source and event_id as int32 indices
into a shared table of names), where its kept deltas start and a presence bit: 61 bytes, so 30 M
positions fit in about 1.7 GiB and a snapshot is a few views of them. Only this class knows the layout.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import msgspec
import numpy as np
import numpy.typing as npt

from ._model import ZERO, Quantities
from ._names import NONE, Names

ON_HAND, RESERVED, COMMITTED, SAFETY, COUNT_TIME, COUNT_QTY = range(6)
"""The int64 fields of a position: Q1-Q4, then its latest count's event time and quantity (E2)."""
SOURCE_ID, EVENT_ID, DELTAS = range(3)
"""The int32 fields of a position: its latest count's source and event_id in ``names`` (NONE: no
count), and the head of its chain of kept deltas in the ledger's ``DeltaPool`` (0: none)."""
_IDS = 3
Int64Array = npt.NDArray[np.int64]
Int32Array = npt.NDArray[np.int32]
IntpArray = npt.NDArray[np.intp]
BoolArray = npt.NDArray[np.bool_]
_FIELDS = 6
_QUANTITIES = SAFETY + 1
LatestCount = tuple[int, str, str, int]
"""A position's latest count: (event_time, source, event_id, quantity)."""
ROW_STEP = 256
"""Fewest SKU rows added when the store grows (a shard of a national estate holds thousands)."""
COL_STEP = 16
"""Fewest location columns added when the store grows (an estate has tens to hundreds of locations)."""
GROWTH = 16
"""The store grows by a sixteenth of its rows or columns (at least the step): at most ~6 % of the
arrays stand empty in each direction, for a copy of the arrays every sixteenth of growth."""


def raw(array: npt.NDArray[Any]) -> memoryview:
    """The array's bytes for a snapshot, copied only if not contiguous: a snapshot may view live
    columns (a copy of a national estate's is 100 MB a shard), so it is encoded in the turn it is
    taken, before the shard changes anything (``Checkpoints.save``). Decoded, it views the input."""
    return np.ascontiguousarray(array).reshape(-1).view(np.uint8).data


class StoreSnapshot(msgspec.Struct, array_like=True):
    """The arrays whole, growth slack included: views of them need no copy (a shard's snapshot is
    taken in its turn; cutting the used part out copied 100 MB a shard of a national estate)."""

    skus: list[str]
    locations: list[str]
    rows: int  # the arrays' shape: rows >= len(skus), cols >= len(locations)
    cols: int
    quantities: memoryview  # int64, shape (6, rows, cols), C order
    present: memoryview  # bool, shape (rows, cols)
    ids: memoryview  # int32, shape (3, rows, cols): SOURCE_ID, EVENT_ID, DELTAS
    names: list[str | None]


class PositionStore:
    """Quantities per (sku, location). Grows in steps, not by doubling: a sixteenth more rows (at
    least ``ROW_STEP``) or columns (at least ``COL_STEP``) at a time, so a shard's arrays stay close
    to what it stocks (doubling left up to 2x in each direction: 300 locations took 512 columns).
    Growing copies the arrays, amortised over what it adds."""

    __slots__ = ("_cols", "_ids", "_iv", "_loc_col", "_locations", "_present", "_pv", "_q", "_qv", "_rows",
                 "_sku_row", "_skus", "journal", "names")

    def __init__(self, rows: int = 256, cols: int = 8) -> None:
        self._sku_row: dict[str, int] = {}
        self._loc_col: dict[str, int] = {}
        self._skus: list[str] = []
        self._locations: list[str] = []
        self._rows, self._cols = rows, cols
        self._q = np.zeros((_FIELDS, rows, cols), dtype=np.int64)
        self._present = np.zeros((rows, cols), dtype=np.bool_)
        self._ids = np.zeros((_IDS, rows, cols), dtype=np.int32)
        self.names = Names()
        self._views()
        self.journal: list[tuple[str, str, int]] | None = []
        """Every change of a position's ``available`` (sku, location, delta), in order, while not
        None: the ledger takes it per batch, so a batch not yet durable can be subtracted (C4)."""

    def _views(self) -> None:
        # One cell at a time (the hot paths: a fact, a hold) through memoryviews of the same
        # memory: a plain int/bool per access instead of a numpy scalar, about 2x faster.
        self._qv = self._q.data
        self._pv = self._present.data
        self._iv = self._ids.data

    def __len__(self) -> int:
        return int(self._present.sum())

    def get(self, sku: str, location: str) -> Quantities:
        row = self._sku_row.get(sku)
        col = self._loc_col.get(location)
        if row is None or col is None:
            return ZERO
        qv = self._qv
        return Quantities(qv[ON_HAND, row, col], qv[RESERVED, row, col], qv[COMMITTED, row, col], qv[SAFETY, row, col])

    def available(self, sku: str, location: str) -> int | None:
        """Q5 ``available`` of one position without building its Quantities (None: no such position)."""
        cell = self.locate(sku, location)
        if cell is None:
            return None
        row, col = cell
        qv = self._qv
        return qv[ON_HAND, row, col] - qv[RESERVED, row, col] - qv[COMMITTED, row, col] - qv[SAFETY, row, col]

    def exists(self, sku: str, location: str) -> bool:
        return self.locate(sku, location) is not None

    def locate(self, sku: str, location: str) -> tuple[int, int] | None:
        """The cell of a position that exists (None: no such position)."""
        row = self._sku_row.get(sku)
        col = self._loc_col.get(location)
        return (row, col) if row is not None and col is not None and self._pv[row, col] else None

    def forget(self, sku: str, location: str) -> None:
        """Undo of the change that created a position: it was never there (replay must agree, E10)."""
        row, col = self._sku_row[sku], self._loc_col[location]
        if self.journal is not None:
            qv = self._qv
            self.journal.append((sku, location, -(qv[ON_HAND, row, col] - qv[RESERVED, row, col]
                                                  - qv[COMMITTED, row, col] - qv[SAFETY, row, col])))
        self._present[row, col] = False
        self._q[:, row, col] = 0
        self._release_count(row, col)

    def add(self, sku: str, location: str, field: int, delta: int) -> None:
        row, col = self._cell(sku, location)
        self._qv[field, row, col] += delta
        if self.journal is not None:
            self.journal.append((sku, location, delta if field == ON_HAND else -delta))

    def move(self, sku: str, location: str, d_reserved: int, d_committed: int) -> None:
        """Q2/Q3 change of one position in one cell lookup (the reservation hot path)."""
        row, col = self._cell(sku, location)
        q = self._qv
        if d_reserved:
            q[RESERVED, row, col] += d_reserved
        if d_committed:
            q[COMMITTED, row, col] += d_committed
        if self.journal is not None:
            self.journal.append((sku, location, -d_reserved - d_committed))

    def set(self, sku: str, location: str, field: int, value: int) -> None:
        row, col = self._cell(sku, location)
        if self.journal is not None:
            delta = value - self._qv[field, row, col]
            self.journal.append((sku, location, delta if field == ON_HAND else -delta))
        self._qv[field, row, col] = value

    # -- latest counts (E2), by cell: a fact looks its position up once --------------------
    def place(self, sku: str, location: str) -> tuple[int, int, bool]:
        """The cell of a position, created if it is new, and whether it existed before."""
        row = self._sku_row.get(sku)
        col = self._loc_col.get(location)
        if row is not None and col is not None and self._pv[row, col]:
            return row, col, True
        row, col = self._cell(sku, location)
        return row, col, False

    def on_hand_at(self, row: int, col: int) -> int:
        return self._qv[ON_HAND, row, col]

    def count_time_at(self, row: int, col: int) -> int | None:
        """The event time of the position's latest count (None: it has none)."""
        return self._qv[COUNT_TIME, row, col] if self._iv[SOURCE_ID, row, col] else None

    def count_at(self, row: int, col: int) -> LatestCount | None:
        iv = self._iv
        source = iv[SOURCE_ID, row, col]
        if not source:
            return None
        names, qv = self.names, self._qv
        return (qv[COUNT_TIME, row, col], names.name(source), names.name(iv[EVENT_ID, row, col]),
                qv[COUNT_QTY, row, col])

    def put_count(self, row: int, col: int, count: LatestCount | None) -> None:
        """Make ``count`` the position's latest (None: it has none); the names it held are released."""
        self._release_count(row, col)
        if count is not None:
            at, source, event_id, quantity = count
            names, iv, qv = self.names, self._iv, self._qv
            iv[SOURCE_ID, row, col] = names.acquire(source)
            iv[EVENT_ID, row, col] = names.acquire(event_id)
            qv[COUNT_TIME, row, col] = at
            qv[COUNT_QTY, row, col] = quantity

    def head_at(self, row: int, col: int) -> int:
        """Where the position's chain of kept deltas starts (0: it keeps none)."""
        return self._iv[DELTAS, row, col]

    def set_head(self, row: int, col: int, slot: int) -> None:
        self._iv[DELTAS, row, col] = slot

    def chained(self, first_row: int, rows: int) -> list[tuple[int, int]]:
        """The cells in rows ``first_row`` .. ``first_row + rows`` that keep deltas (E9's sweep)."""
        block = self._ids[DELTAS, first_row: min(first_row + rows, len(self._skus)), : len(self._locations)]
        found = np.nonzero(block)
        return list(zip((found[0] + first_row).tolist(), found[1].tolist(), strict=True))

    # -- whole blocks of positions (LoadCounts): numpy in, no object per position ----------------
    def cells(self, skus: Sequence[str], locations: Sequence[str]) -> tuple[IntpArray, IntpArray]:
        """The row of each SKU and the column of each location, made for those not seen yet."""
        rows = np.fromiter((self._row(s) for s in skus), dtype=np.intp, count=len(skus))
        cols = np.fromiter((self._col(loc) for loc in locations), dtype=np.intp, count=len(locations))
        return rows, cols

    def counts_at(self, rows: IntpArray, cols: IntpArray) -> tuple[BoolArray, Int64Array, Int64Array, Int64Array,
                                                                  Int32Array]:
        """Per cell: whether it is a position, its latest count's time and quantity, its (source,
        event_id) indices as one int64 (source << 32 | event_id; 0: no count), and the head of its
        kept deltas (0: none)."""
        ids = self._ids[:, rows, cols]
        wide = ids[:EVENT_ID + 1].astype(np.int64)
        return (self._present[rows, cols], self._q[COUNT_TIME, rows, cols], self._q[COUNT_QTY, rows, cols],
                wide[SOURCE_ID] << 32 | wide[EVENT_ID], ids[DELTAS])

    def recount(self, rows: IntpArray, cols: IntpArray, on_hand: Int64Array, quantity: Int64Array, at: Int64Array,
                names: tuple[Int32Array, Int32Array]) -> tuple[Int64Array, Int64Array, Int64Array]:
        """Positions that exist get a new latest count and on_hand (E2); the names of the counts
        they held are released (``names``: already acquired; read the old ones first, see
        ``counts_at``). Returns what they held: on_hand, count time, count quantity."""
        q, ids = self._q, self._ids
        old = q[ON_HAND, rows, cols], q[COUNT_TIME, rows, cols], q[COUNT_QTY, rows, cols]
        self.names.release_all(ids[SOURCE_ID, rows, cols])
        self.names.release_all(ids[EVENT_ID, rows, cols])
        q[ON_HAND, rows, cols], q[COUNT_QTY, rows, cols], q[COUNT_TIME, rows, cols] = on_hand, quantity, at
        ids[SOURCE_ID, rows, cols], ids[EVENT_ID, rows, cols] = names
        return old

    def create_counted(self, rows: IntpArray, cols: IntpArray, quantity: Int64Array, at: Int64Array,
                       names: tuple[int, Int32Array], safety: Int64Array) -> None:
        """New positions, each with a count as its only fact: on_hand is the count (E2). ``names``:
        the source's index and each row's event_id index, already acquired for these positions."""
        assert not self._present[rows, cols].any(), "create_counted over a position that exists"
        q = self._q
        self._present[rows, cols] = True
        q[ON_HAND, rows, cols] = q[COUNT_QTY, rows, cols] = quantity
        q[COUNT_TIME, rows, cols] = at
        q[SAFETY, rows, cols] = safety
        self._ids[SOURCE_ID, rows, cols], self._ids[EVENT_ID, rows, cols] = names

    def forget_cells(self, rows: IntpArray, cols: IntpArray) -> None:
        """Undo of ``create_counted``: the positions were never there; their names are released."""
        self.names.release_all(self._ids[SOURCE_ID, rows, cols])
        self.names.release_all(self._ids[EVENT_ID, rows, cols])
        self._present[rows, cols] = False
        self._q[:, rows, cols] = 0
        self._ids[:, rows, cols] = 0

    @property
    def row_count(self) -> int:
        return len(self._skus)

    def _release_count(self, row: int, col: int) -> None:
        iv = self._iv
        self.names.release(iv[SOURCE_ID, row, col])
        self.names.release(iv[EVENT_ID, row, col])
        iv[SOURCE_ID, row, col] = iv[EVENT_ID, row, col] = NONE
        self._qv[COUNT_TIME, row, col] = self._qv[COUNT_QTY, row, col] = 0

    def sku_locations(self, sku: str) -> Iterator[tuple[str, Quantities]]:
        """Every known location of one SKU (network view of a SKU is one row)."""
        row = self._sku_row.get(sku)
        if row is None:
            return
        cols = np.flatnonzero(self._present[row, : len(self._locations)])
        block = self._q[:_QUANTITIES, row, cols].T.tolist()
        for col, values in zip(cols.tolist(), block, strict=True):
            yield self._locations[col], Quantities(*values)

    @property
    def location_count(self) -> int:
        """Grows when a new location is first seen: callers caching ``columns`` compare it."""
        return len(self._locations)

    def columns(self, locations: Sequence[str]) -> npt.NDArray[np.intp]:
        """Column of each location (-1: never seen here), for ``available_at``."""
        get = self._loc_col.get
        return np.array([get(loc, -1) for loc in locations], dtype=np.intp)

    def rows(self, skus: Sequence[str]) -> npt.NDArray[np.intp]:
        """Row of each SKU (-1: never seen here), for ``available_block``."""
        get = self._sku_row.get
        return np.array([get(sku, -1) for sku in skus], dtype=np.intp)

    def available_block(self, rows: npt.NDArray[np.intp],
                        cols: npt.NDArray[np.intp]) -> tuple[Int64Array, BoolArray]:
        """Q5 ``available`` for rows x cols (SKUs x a channel's locations) and whether each
        position exists: one gather for every changed SKU of a shard (-1 rows/cols: absent)."""
        shape = (len(rows), len(cols))
        if not len(rows) or not len(cols):
            return np.zeros(shape, dtype=np.int64), np.zeros(shape, dtype=np.bool_)
        m = len(self._locations)
        r = np.where(rows >= 0, rows, 0)
        c = np.where(cols >= 0, cols, 0)
        if 2 * len(cols) >= m:
            # A wide channel (most of the estate's locations, e.g. 300 stores): whole rows first, one
            # axis of fancy indexing, then the channel's columns — about 3x faster than gathering
            # rows x columns at once.
            q = self._q[:_QUANTITIES, r, :m]
            available = (q[ON_HAND] - q[RESERVED] - q[COMMITTED] - q[SAFETY])[:, c]
            present = self._present[r, :m][:, c]
        else:
            q = self._q[:_QUANTITIES, r[:, None], c[None, :]]
            available = q[ON_HAND] - q[RESERVED] - q[COMMITTED] - q[SAFETY]
            present = self._present[r[:, None], c[None, :]]
        present &= (rows >= 0)[:, None] & (cols >= 0)[None, :]
        return np.where(present, available, 0), present

    def items(self) -> Iterator[tuple[str, str, Quantities]]:
        for sku in self._skus:
            for location, q in self.sku_locations(sku):
                yield sku, location, q

    def totals(self) -> Quantities:
        """Sum of every field over all positions (used by invariant checks)."""
        sums = self._q[:_QUANTITIES].sum(axis=(1, 2)).tolist()
        return Quantities(*sums)

    def oversold_units(self) -> int:
        """Q5: units promised (reserved + committed) beyond on hand, summed over positions, one numpy
        pass. Safety stock is left out: protecting more than is there is not selling what is not there."""
        n, m = len(self._skus), len(self._locations)
        q = self._q[:, :n, :m]
        uncovered = q[ON_HAND] - q[RESERVED] - q[COMMITTED]
        return int(-uncovered[uncovered < 0].sum())

    def snapshot(self) -> StoreSnapshot:
        return StoreSnapshot(
            skus=list(self._skus), locations=list(self._locations), rows=self._rows, cols=self._cols,
            quantities=raw(self._q), present=raw(self._present), ids=raw(self._ids), names=self.names.snapshot())

    @classmethod
    def restore(cls, snap: StoreSnapshot, *name_users: npt.NDArray[np.int32]) -> PositionStore:
        """The store as snapshotted; ``name_users``: other columns holding indices into its names."""
        rows, cols = snap.rows, snap.cols
        store = cls(rows=1, cols=1)
        store._skus = list(snap.skus)
        store._locations = list(snap.locations)
        store._sku_row = {s: i for i, s in enumerate(snap.skus)}
        store._loc_col = {loc: i for i, loc in enumerate(snap.locations)}
        store._rows, store._cols = rows, cols
        store._q = np.frombuffer(snap.quantities, dtype=np.int64).reshape(_FIELDS, rows, cols).copy()
        store._present = np.frombuffer(snap.present, dtype=np.bool_).reshape(rows, cols).copy()
        store._ids = ids = np.frombuffer(snap.ids, dtype=np.int32).reshape(_IDS, rows, cols).copy()
        store.names = Names.restore(snap.names, ids[SOURCE_ID], ids[EVENT_ID], *name_users)
        store._views()
        return store

    def _cell(self, sku: str, location: str) -> tuple[int, int]:
        row, col = self._row(sku), self._col(location)
        self._pv[row, col] = True
        return row, col

    def _row(self, sku: str) -> int:
        row = self._sku_row.get(sku)
        if row is None:
            row = self._sku_row[sku] = len(self._skus)
            self._skus.append(sku)
            if row >= self._rows:
                self._grow(rows=self._rows + max(ROW_STEP, self._rows // GROWTH))
        return row

    def _col(self, location: str) -> int:
        col = self._loc_col.get(location)
        if col is None:
            col = self._loc_col[location] = len(self._locations)
            self._locations.append(location)
            if col >= self._cols:
                self._grow(cols=self._cols + max(COL_STEP, self._cols // GROWTH))
        return col

    def _grow(self, rows: int | None = None, cols: int | None = None) -> None:
        new_rows, new_cols = rows or self._rows, cols or self._cols
        q = np.zeros((_FIELDS, new_rows, new_cols), dtype=np.int64)
        q[:, : self._rows, : self._cols] = self._q
        present = np.zeros((new_rows, new_cols), dtype=np.bool_)
        present[: self._rows, : self._cols] = self._present
        ids = np.zeros((_IDS, new_rows, new_cols), dtype=np.int32)
        ids[:, : self._rows, : self._cols] = self._ids
        self._q, self._present, self._ids = q, present, ids
        self._views()
        self._rows, self._cols = new_rows, new_cols
