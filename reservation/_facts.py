"""Event-time folding of POS/WMS facts per position (E1-E5, E8, E9).

``on_hand`` of a position is the latest count plus every delta ordered after it
(E2) under the total order ``(event_time, rank, event_id)`` with deltas rank 0
and counts rank 1 (E1). Only deltas that a future, not-late count could still
absorb are retained; older ones are compacted away (E9).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

from ._model import OUTGOING_KINDS, Fact, FactKind, FactOutcome
from ._undo import Undo

OrderKey = tuple[int, int, str]

DELTA_RANK = 0
COUNT_RANK = 1
_COUNT = int(FactKind.COUNT)


@dataclass(slots=True)
class PositionHistory:
    """The part of a position's past that later facts can still change."""

    count_key: OrderKey | None = None
    count_qty: int = 0
    # Deltas ordered after the latest count, sorted by key (E2).
    delta_keys: list[OrderKey] = field(default_factory=list)
    delta_qtys: list[int] = field(default_factory=list)

    def on_hand(self) -> int:
        return self.count_qty + sum(self.delta_qtys)

    def fold(self, fact: Fact) -> tuple[FactOutcome, int, Undo | None]:
        """Apply one fact; return its outcome, its change to on_hand and how to take it back."""
        # E1: the order key is (event_time, rank, event_id); deltas rank 0, counts rank 1.
        kind, quantity = fact.kind, fact.quantity
        if kind == _COUNT:
            return self._fold_count((fact.event_time, COUNT_RANK, fact.event_id), quantity)
        # Fact.delta, inlined: this runs once per ingested fact.
        return self._fold_delta((fact.event_time, DELTA_RANK, fact.event_id),
                                -quantity if kind in OUTGOING_KINDS else quantity)

    def fold_service_delta(self, key: OrderKey, delta: int) -> tuple[FactOutcome, int, Undo | None]:
        """A change the service itself made (fulfilment, R4), ordered by its timestamp."""
        return self._fold_delta(key, delta)

    def compact(self, horizon: int) -> None:
        """E9: forget deltas stamped before ``horizon``; no count that is not late can precede them."""
        cut = bisect.bisect_left(self.delta_keys, (horizon, -1, ""))
        if cut:
            self.count_qty += sum(self.delta_qtys[:cut])
            del self.delta_keys[:cut]
            del self.delta_qtys[:cut]

    def _fold_delta(self, key: OrderKey, delta: int) -> tuple[FactOutcome, int, Undo | None]:
        if self.count_key is not None and key < self.count_key:
            return FactOutcome.ABSORBED, 0, None  # E4: the count already saw it
        at = bisect.bisect_left(self.delta_keys, key)
        self.delta_keys.insert(at, key)
        self.delta_qtys.insert(at, delta)
        return FactOutcome.APPLIED, delta, (self._remove_delta, key)

    def _remove_delta(self, key: OrderKey) -> None:
        i = bisect.bisect_left(self.delta_keys, key)
        del self.delta_keys[i]
        del self.delta_qtys[i]

    def _fold_count(self, key: OrderKey, qty: int) -> tuple[FactOutcome, int, Undo | None]:
        if self.count_key is not None and key < self.count_key:
            return FactOutcome.ABSORBED, 0, None  # E5: an older count changes nothing
        before = self.on_hand()
        old = (self.count_key, self.count_qty, self.delta_keys, self.delta_qtys)
        cut = bisect.bisect_right(self.delta_keys, key)
        self.delta_keys, self.delta_qtys = self.delta_keys[cut:], self.delta_qtys[cut:]
        self.count_key, self.count_qty = key, qty

        def undo() -> None:
            self.count_key, self.count_qty, self.delta_keys, self.delta_qtys = old

        return FactOutcome.APPLIED, self.on_hand() - before, undo
