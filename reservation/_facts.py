"""Event-time folding of POS/WMS facts per position (E1-E5, E8, E9).

``on_hand`` of a position is the latest count plus every delta ordered after it
(E2) under the total order ``(event_time, rank, source, event_id)`` with deltas
rank 0 and counts rank 1 (E1): facts stamped alike are ordered by source, then
event_id, so no tie depends on arrival. Only deltas that a future, not-late
count could still absorb are retained; older ones are compacted away (E9).
"""

from __future__ import annotations

import bisect

import msgspec

from ._model import OUTGOING_KINDS, Fact, FactKind, FactOutcome
from ._undo import Undo

OrderKey = tuple[int, int, str, str]
"""E1: ``(event_time, rank, source, event_id)``; a fact's identity at its position (E8) makes it unique."""

DELTA_RANK = 0
COUNT_RANK = 1
SERVICE_SOURCE = ""
"""The source the service's own deltas (fulfilment, R4) sort as. No fact has an empty source
(check_id), so they never tie with a fact: at one ms they come before every fact delta and
before the counts, which therefore include them. Live and replay build the same key (E10)."""
_COUNT = int(FactKind.COUNT)
MAX_SHARED_SOURCES = 4096
"""Sources kept as one shared str each (a handful of till systems and ERPs feed millions of facts);
past this many, a source is kept as it came: the table is bounded whatever callers send."""
_sources: dict[str, str] = {}


def shared(source: str) -> str:
    """One str per source for the histories of every position it has a count or delta at."""
    known = _sources.get(source)
    if known is None:
        if len(_sources) >= MAX_SHARED_SOURCES:
            return source
        known = _sources[source] = source
    return known


class PositionHistory(msgspec.Struct, gc=False):
    """The part of a position's past that later facts can still change.

    Out of Python's collector when it holds no deltas (gc=False, and the empty tuple instead of
    two empty lists): one lives per position, hundreds of thousands of them, and a full
    collection walking them all stalled every call in flight by 100-250 ms."""

    count_key: OrderKey | None = None
    count_qty: int = 0
    # Deltas ordered after the latest count, sorted by key (E2); lists while there are any.
    delta_keys: list[OrderKey] | tuple[()] = ()
    delta_qtys: list[int] | tuple[()] = ()

    @classmethod
    def restored(cls, count_key: OrderKey | None, count_qty: int, delta_keys: list[OrderKey],
                 delta_qtys: list[int]) -> PositionHistory:
        """From a snapshot, each key's source shared as a folded fact's is."""
        keys = [(t, rank, shared(source), eid) for t, rank, source, eid in delta_keys]
        count = None if count_key is None else (count_key[0], count_key[1], shared(count_key[2]), count_key[3])
        return cls(count, count_qty, keys or (), delta_qtys or ())

    def on_hand(self) -> int:
        return self.count_qty + sum(self.delta_qtys)

    def fold(self, fact: Fact) -> tuple[FactOutcome, int, Undo | None]:
        """Apply one fact; return its outcome, its change to on_hand and how to take it back."""
        # E1: the order key is (event_time, rank, source, event_id); deltas rank 0, counts rank 1.
        kind, quantity = fact.kind, fact.quantity
        if kind == _COUNT:
            return self._fold_count((fact.event_time, COUNT_RANK, shared(fact.source), fact.event_id), quantity)
        # Fact.delta, inlined: this runs once per ingested fact.
        return self._fold_delta((fact.event_time, DELTA_RANK, shared(fact.source), fact.event_id),
                                -quantity if kind in OUTGOING_KINDS else quantity)

    def fold_service_delta(self, at: int, ref: str, delta: int) -> tuple[FactOutcome, int, Undo | None]:
        """A change the service itself made (fulfilment, R4), ordered by its timestamp ``at`` as a
        delta of ``SERVICE_SOURCE`` with event_id ``ref`` (E1)."""
        return self._fold_delta((at, DELTA_RANK, SERVICE_SOURCE, ref), delta)

    def compact(self, horizon: int) -> None:
        """E9: forget deltas stamped before ``horizon``; no count that is not late can precede them."""
        cut = bisect.bisect_left(self.delta_keys, (horizon, -1, "", ""))
        if cut:
            keys, qtys = self.delta_keys, self.delta_qtys
            assert isinstance(keys, list) and isinstance(qtys, list)
            self.count_qty += sum(qtys[:cut])
            del keys[:cut]
            del qtys[:cut]
            if not keys:
                self.delta_keys = self.delta_qtys = ()

    def _fold_delta(self, key: OrderKey, delta: int) -> tuple[FactOutcome, int, Undo | None]:
        if self.count_key is not None and key < self.count_key:
            return FactOutcome.ABSORBED, 0, None  # E4: the count already saw it
        keys, qtys = self.delta_keys, self.delta_qtys
        if isinstance(keys, list) and isinstance(qtys, list):
            at = bisect.bisect_left(keys, key)
            keys.insert(at, key)
            qtys.insert(at, delta)
        else:
            self.delta_keys, self.delta_qtys = [key], [delta]
        return FactOutcome.APPLIED, delta, (self._remove_delta, key)

    def _remove_delta(self, key: OrderKey) -> None:
        keys, qtys = self.delta_keys, self.delta_qtys
        assert isinstance(keys, list) and isinstance(qtys, list)
        i = bisect.bisect_left(keys, key)
        del keys[i]
        del qtys[i]
        if not keys:
            self.delta_keys = self.delta_qtys = ()

    def _fold_count(self, key: OrderKey, qty: int) -> tuple[FactOutcome, int, Undo | None]:
        if self.count_key is not None and key < self.count_key:
            return FactOutcome.ABSORBED, 0, None  # E5: an older count changes nothing
        before = self.on_hand()
        old = (self.count_key, self.count_qty, self.delta_keys, self.delta_qtys)
        keys, qtys = self.delta_keys, self.delta_qtys
        cut = bisect.bisect_right(keys, key)
        if isinstance(keys, list) and isinstance(qtys, list) and cut < len(keys):
            self.delta_keys, self.delta_qtys = keys[cut:], qtys[cut:]  # new lists: undo keeps the old
        else:
            self.delta_keys = self.delta_qtys = ()
        self.count_key, self.count_qty = key, qty

        def undo() -> None:
            self.count_key, self.count_qty, self.delta_keys, self.delta_qtys = old

        return FactOutcome.APPLIED, self.on_hand() - before, undo
