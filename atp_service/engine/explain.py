"""The read model behind ExplainAvailability: how a position's numbers came to be (E2, Q1-Q5)."""

from __future__ import annotations

from typing import Any

import msgspec

from atp_service.engine.router import Engine
from reservation import Reservation
from reservation import _orders as orders


class Explanation:
    """How a position's numbers came to be (E2, Q1-Q5), read from memory."""

    __slots__ = ("count", "deltas", "holds", "holds_truncated", "possibly_stale", "quantities", "retained_since",
                 "stream_time")

    def __init__(self, engine: Engine, sku: str, location: str, max_holds: int) -> None:
        ledger = engine.local(engine.place(sku)).ledger
        self.quantities = ledger.quantities(sku, location)
        # The same flag as GetAvailability's, for the same reason: the numbers leave out the shard's
        # appends in doubt until it has settled them (R7), and an analyst must not read them as current.
        self.possibly_stale = engine.storage_unsure((sku,))
        history = ledger.history(sku, location)
        self.count: tuple[str, int, int] | None = None
        self.deltas: list[tuple[str, int, int]] = []
        if history is not None:
            # What the count stands for includes the deltas E9 folded away (in on_hand, not kept).
            if history.count_key is not None:  # E1 keys are (event_time, rank, source, event_id)
                base = self.quantities.on_hand - sum(qty for _, _, qty in history.deltas)
                self.count = (history.count_key[3], history.count_key[0], base)
            self.deltas = [(source, at, qty) for at, source, qty in history.deltas]
        self.stream_time = ledger.stream_time
        self.retained_since = max(0, ledger.late_horizon(ledger.stream_time))  # E9: never before what it freed
        self.holds: list[tuple[Any, int, int]] = []
        self.holds_truncated = False
        # Holds live on their reservation's home shard, which a multi-SKU order may place elsewhere:
        # one index lookup per shard, never a scan of the reservations.
        for actor in engine.actors:
            for rec in actor.ledger.holds_at(sku, location):
                for line in rec.lines:
                    if line.sku == sku and line.location == location:
                        if len(self.holds) >= max_holds:
                            self.holds_truncated = True
                            return
                        self.holds.append((_as_callers_see_it(engine, rec), line.held, line.committed))


def _as_callers_see_it(engine: Engine, rec: Reservation) -> Reservation:
    """A part of an order spanning shards (on a Redis Cluster) is shown as its order: the id callers
    know and the order's expiry (a part never expires by itself)."""
    order_id = orders.order_of(rec.reservation_id)
    if order_id is None:
        return rec
    home = engine.home_of(order_id)
    order = engine.actors[home].ledger.reservation(order_id) if home is not None else None
    return msgspec.structs.replace(rec, reservation_id=order_id, expires_at=order.expires_at if order else 0)

