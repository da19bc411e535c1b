"""Event-time folding of POS/WMS facts per position (E1-E5, E9).

``on_hand`` of a position is the latest count plus every delta ordered after it (E2) under the
total order ``(event_time, rank, source, event_id)`` with deltas rank 0 and counts rank 1 (E1):
facts stamped alike are ordered by source, then event_id, so no tie depends on arrival.

What is kept is only what a later fact can still change. The latest count lives in the position's
columns of the store (a baseline load gives every position one, so it must cost bytes, not
objects). Deltas are kept only while they are ordered after that count and inside the grace window
(E9): most positions have none, and those that do keep them here, sorted by key. A delta's own
quantity never needs re-reading from the past: the store's ``on_hand`` already includes every
delta applied, so a new count sets ``on_hand`` to its quantity plus the kept deltas after it.
"""

from __future__ import annotations

import bisect

import msgspec

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
MAX_SHARED_SOURCES = 4096
"""Sources kept as one shared str each (a handful of till systems and ERPs feed millions of facts);
past this many, a source is kept as it came: the table is bounded whatever callers send."""
_sources: dict[str, str] = {}


def shared(source: str) -> str:
    """One str per source for the kept deltas of every position it has facts at."""
    known = _sources.get(source)
    if known is None:
        if len(_sources) >= MAX_SHARED_SOURCES:
            return source
        known = _sources[source] = source
    return known


class Deltas(msgspec.Struct, array_like=True, gc=False):
    """A position's deltas ordered after its latest count and inside the grace window, by key."""

    keys: list[OrderKey]
    qtys: list[int]


class PositionHistory(msgspec.Struct, frozen=True):
    """What later facts can still change of a position's past (a read model: ExplainAvailability,
    and the tests' comparisons of live with replay)."""

    count_key: OrderKey | None
    count_qty: int
    """The latest count's own quantity (deltas folded away by E9 are in ``on_hand``, not here)."""
    delta_keys: list[OrderKey]
    delta_qtys: list[int]


def count_key(count: LatestCount) -> OrderKey:
    return (count[0], COUNT_RANK, count[1], count[2])


class Histories:
    """E1-E5 and E9 over the store's count columns and the deltas kept per position."""

    __slots__ = ("_next_pass_at", "_to_sweep", "deltas", "store")

    def __init__(self, store: PositionStore, deltas: dict[str, Deltas] | None = None) -> None:
        self.store = store
        self.deltas: dict[str, Deltas] = deltas if deltas is not None else {}
        """Keyed by ``pair_key``; only positions that keep a delta have an entry."""
        self._to_sweep: list[str] = []  # positions the current compaction pass has yet to look at
        self._next_pass_at = 0  # the horizon at which the next pass starts

    def view(self, position: str, cell: tuple[int, int] | None) -> PositionHistory | None:
        count = None if cell is None else self.store.count_at(*cell)
        held = self.deltas.get(position)
        if count is None and held is None:
            return None
        return PositionHistory(None if count is None else count_key(count), 0 if count is None else count[3],
                               list(held.keys) if held else [], list(held.qtys) if held else [])

    def fold_count(self, cell: tuple[int, int], position: str, key: OrderKey,
                   quantity: int) -> tuple[FactOutcome, int, Undo | None, LatestCount | None]:
        """Apply a count: its outcome, its change to on_hand, its undo, and the count it supersedes."""
        row, col = cell
        store = self.store
        old = store.count_at(row, col)
        if old is not None and key < count_key(old):
            return FactOutcome.ABSORBED, 0, None, None  # E5: an older count changes nothing
        held = self.deltas.get(position)
        kept = held
        if held is not None:
            cut = bisect.bisect_right(held.keys, key)  # E2: deltas at or before the count are in it
            if cut:
                kept = Deltas(held.keys[cut:], held.qtys[cut:]) if cut < len(held.keys) else None
                self._keep(position, kept)
        change = quantity + (sum(kept.qtys) if kept else 0) - store.on_hand_at(row, col)
        store.put_count(row, col, (key[0], key[2], key[3], quantity))
        return FactOutcome.APPLIED, change, (self._put_back, cell, position, old, held), old

    def fold_delta(self, cell: tuple[int, int], position: str, key: OrderKey,
                   delta: int) -> tuple[FactOutcome, int, Undo | None]:
        counted_at = self.store.count_time_at(*cell)
        if counted_at is not None and key[0] <= counted_at:
            return FactOutcome.ABSORBED, 0, None  # E4: (t, 0, ...) < (t', 1, ...) iff t <= t'
        held = self.deltas.get(position)
        if held is None:
            self.deltas[position] = Deltas([key], [delta])
        else:
            at = bisect.bisect_left(held.keys, key)
            held.keys.insert(at, key)
            held.qtys.insert(at, delta)
        return FactOutcome.APPLIED, delta, (self._remove_delta, position, key)

    def sweep_due(self, horizon: int) -> bool:
        return bool(self._to_sweep) or (bool(self.deltas) and horizon >= self._next_pass_at)

    def sweep(self, horizon: int, limit: int, every: int) -> int:
        """E9: forget kept deltas stamped before ``horizon`` — a count that is not late comes after them
        (so never keeps them), and ``on_hand`` already includes them. ``limit`` positions at a time,
        a pass each time the horizon has moved ``every`` ms: a whole pass over a national estate's
        kept deltas at once would stop the shard longer than any call may wait. Returns the
        positions looked at."""
        if not self._to_sweep:
            if not self.deltas or horizon < self._next_pass_at:
                return 0
            self._to_sweep = list(self.deltas)
            self._next_pass_at = horizon + every
        batch = self._to_sweep[-limit:]
        del self._to_sweep[-limit:]
        bound = (horizon, -1, "", "")
        for position in batch:
            held = self.deltas.get(position)
            if held is None:
                continue
            cut = bisect.bisect_left(held.keys, bound)
            if cut:
                del held.keys[:cut]
                del held.qtys[:cut]
                if not held.keys:
                    del self.deltas[position]
        return len(batch)

    def forget(self, position: str) -> None:
        self.deltas.pop(position, None)

    def _keep(self, position: str, held: Deltas | None) -> None:
        if held is None:
            self.deltas.pop(position, None)
        else:
            self.deltas[position] = held

    def _put_back(self, cell: tuple[int, int], position: str, count: LatestCount | None,
                  held: Deltas | None) -> None:
        self.store.put_count(*cell, count)
        self._keep(position, held)

    def _remove_delta(self, position: str, key: OrderKey) -> None:
        held = self.deltas[position]
        i = bisect.bisect_left(held.keys, key)
        del held.keys[i]
        del held.qtys[i]
        if not held.keys:
            del self.deltas[position]
