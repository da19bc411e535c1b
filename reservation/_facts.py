"""Event-time folding of POS/WMS facts per position (E1-E5, E9).

``on_hand`` of a position is the latest count plus every delta ordered after it (E2) under the
total order ``(event_time, rank, source, event_id)`` with deltas rank 0 and counts rank 1 (E1):
facts stamped alike are ordered by source, then event_id, so no tie depends on arrival.

What is kept is only what a later fact can still change, in columns, not objects: a baseline load
gives every position a count and a day gives millions of them deltas. The latest count lives in
the position's columns of the store; deltas in a ``DeltaPool``, chained per position, while they
are ordered after that count and inside the grace window (E9). The store's ``on_hand`` already
includes every delta applied, so a new count sets ``on_hand`` to its quantity plus the kept deltas
stamped after it, and a delta that E9 frees never needs reading again.
"""

from __future__ import annotations

import msgspec

from ._deltas import END, DeltaPool
from ._model import FactOutcome
from ._store import LatestCount, PositionStore
from ._undo import Undo

OrderKey = tuple[int, int, str, str]
"""E1: ``(event_time, rank, source, event_id)``; a fact's identity at its position (E8) makes it unique."""

DELTA_RANK = 0
COUNT_RANK = 1
SERVICE_SOURCE = ""
"""The source the service's own deltas (fulfilment, R4) sort as. No fact has an empty source
(check_id), so they never tie with a fact: at one ms they come before every fact delta and
before the counts, which therefore include them. Live and replay build the same key (E10)."""
_SCAN_CELLS = 1 << 18
"""Cells the sweep scans for kept deltas at a time (a vectorised look at a block of rows)."""


class PositionHistory(msgspec.Struct, frozen=True):
    """What later facts can still change of a position's past (a read model: ExplainAvailability,
    and the tests' comparisons of live with replay)."""

    count_key: OrderKey | None
    count_qty: int
    """The latest count's own quantity (deltas folded away by E9 are in ``on_hand``, not here)."""
    deltas: list[tuple[int, str, int]]
    """Kept deltas as (event_time, source, quantity), sorted: the same whatever the arrival order (E3)."""


def count_key(count: LatestCount) -> OrderKey:
    return (count[0], COUNT_RANK, count[1], count[2])


def still_counts_from(counted_at: int | None, horizon: int) -> int:
    """The earliest time a kept delta still counts from: after the latest count (E2: one at or before
    it is in it) and not before ``horizon`` (E9: no count that is not late precedes it)."""
    return horizon if counted_at is None else max(horizon, counted_at + 1)


class Histories:
    """E1-E5 and E9 over the store's count columns and the kept deltas' pool."""

    __slots__ = ("_next_pass_at", "_sweep_row", "_to_prune", "pool", "store")

    def __init__(self, store: PositionStore, pool: DeltaPool | None = None) -> None:
        self.store = store
        self.pool = pool if pool is not None else DeltaPool()
        self._sweep_row = -1  # the next row the current compaction pass looks at (-1: no pass)
        self._to_prune: list[tuple[int, int]] = []  # cells of rows already looked at, yet to prune
        self._next_pass_at = 0  # the horizon at which the next pass starts

    def view(self, cell: tuple[int, int] | None, horizon: int) -> PositionHistory | None:
        """The position's latest count and the kept deltas that still count: stamped after both the
        count and ``horizon`` (the others wait for E9's sweep, and change nothing meanwhile)."""
        if cell is None:
            return None
        store, pool = self.store, self.pool
        count = store.count_at(*cell)
        floor = still_counts_from(None if count is None else count[0], horizon)
        kept = [pool.entry(slot) for slot in pool.slots(store.head_at(*cell))]
        names = store.names
        deltas = sorted((at, names.name(source), qty) for at, qty, source in kept if at >= floor)
        if count is None and not deltas:
            return None  # whether the sweep has freed the others yet or not (live and replay agree)
        return PositionHistory(None if count is None else count_key(count), 0 if count is None else count[3], deltas)

    def fold_count(self, cell: tuple[int, int], slot: int, key: OrderKey,
                   quantity: int) -> tuple[FactOutcome, int, Undo | None, LatestCount | None]:
        """Apply a count at the position ``place`` just gave (its cell and slot): its outcome, its
        change to on_hand, its undo, and the count it supersedes."""
        store = self.store
        old = store.count_of(slot)
        if old is not None and key < count_key(old):
            return FactOutcome.ABSORBED, 0, None, None  # E5: an older count changes nothing
        # E2: deltas at or before the count are in it; those after it count on top. The ones it
        # covers stay chained until E9's sweep: no later count can be ordered before this one.
        after = self.pool.sum_after(store.head_of(slot), key[0])
        change = quantity + after - store.on_hand_of(slot)
        store.put_count_of(slot, (key[0], key[2], key[3], quantity))
        return FactOutcome.APPLIED, change, (store.put_count, *cell, old), old

    def fold_delta(self, cell: tuple[int, int], slot: int, key: OrderKey,
                   delta: int) -> tuple[FactOutcome, int, Undo | None]:
        store = self.store
        counted_at = store.count_time_of(slot)
        if counted_at is not None and key[0] <= counted_at:
            return FactOutcome.ABSORBED, 0, None  # E4: (t, 0, ...) < (t', 1, ...) iff t <= t'
        pushed = self.pool.push(store.head_of(slot), key[0], delta, store.names.acquire(key[2]))
        store.set_head_of(slot, pushed)
        return FactOutcome.APPLIED, delta, (self._pop_delta, *cell, pushed)

    def sweep_due(self, horizon: int) -> bool:
        return self._sweep_row >= 0 or bool(self._to_prune) or (len(self.pool) > 0 and horizon >= self._next_pass_at)

    def sweep(self, horizon: int, limit: int, every: int) -> int:
        """E9: free kept deltas stamped before ``horizon`` (a count that is not late comes after them,
        and ``on_hand`` already includes them) and those the latest count covers. About ``limit``
        deltas looked at per call, a pass each time the horizon has moved ``every`` ms: a pass over a
        national estate at once would stop the shard longer than any call may wait. Rows without
        kept deltas cost a vectorised scan only. Returns the deltas looked at."""
        store = self.store
        if self._sweep_row < 0 and not self._to_prune:
            if not len(self.pool) or horizon < self._next_pass_at:
                return 0
            self._sweep_row, self._next_pass_at = 0, horizon + every
        looked = 0
        while looked < limit:
            if not self._to_prune:
                if self._sweep_row < 0:
                    break
                rows = max(1, _SCAN_CELLS // max(1, store.location_count))
                self._to_prune = store.chained(self._sweep_row, rows)[::-1]
                self._sweep_row += rows
                if self._sweep_row >= store.row_count:
                    self._sweep_row = -1
                continue
            looked += self._prune(*self._to_prune.pop(), horizon)
        return looked

    def forget(self, cell: tuple[int, int]) -> None:
        assert self.store.head_at(*cell) == END, "a position forgotten with deltas still chained"

    def _prune(self, row: int, col: int, horizon: int) -> int:
        """Free the position's dead deltas; returns how many deltas it looked at."""
        store, pool = self.store, self.pool
        looked = 0
        floor = still_counts_from(store.count_time_at(row, col), horizon)
        before, slot = END, store.head_at(row, col)
        while slot != END:
            looked += 1
            at, _, _ = pool.entry(slot)
            if at >= floor:
                before, slot = slot, pool.entry_next(slot)
                continue
            after, source = pool.release(slot)
            store.names.release(source)
            if before == END:
                store.set_head(row, col, after)
            else:
                pool.relink(before, after)
            slot = after
        return looked

    def _pop_delta(self, row: int, col: int, slot: int) -> None:
        store = self.store
        assert store.head_at(row, col) == slot, "kept deltas are undone newest first"
        after, source = self.pool.release(slot)
        store.names.release(source)
        store.set_head(row, col, after)
