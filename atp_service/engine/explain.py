"""The read model behind ExplainAvailability: how a position's numbers came to be (E2, Q1-Q5)."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec

from atp_service.engine.parts import ReadPart, run_part
from atp_service.engine.router import Engine
from reservation import Reservation, State
from reservation import _orders as orders


class Explanation:
    """How a position's numbers came to be (E2, Q1-Q5), read from memory."""

    __slots__ = ("count", "deltas", "elsewhere", "holds", "holds_elsewhere", "holds_truncated", "possibly_stale",
                 "quantities", "retained_since", "stream_time")

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
        self.elsewhere: dict[str, list[int]] = {}
        """Held parts of orders whose record another process holds (``ownership = leases``): order id -> the
        indexes of its holds, shown with its expiry once read there (``with_orders_elsewhere``)."""
        self.holds_elsewhere = False
        """Units of ``quantities`` no listed hold accounts for: held by a record of a group not served here."""
        # Holds live on their reservation's home shard, which a multi-SKU order may place elsewhere:
        # one index lookup per shard, never a scan of the reservations. Only shards served here now (R7: a
        # group another process owns, or whose lease may have run out, answers nothing from this memory).
        held = committed = 0
        served = set(serving := engine.serving())
        for shard in serving:
            for rec in engine.actors[shard].ledger.holds_at(sku, location):
                for line in rec.lines:
                    if line.sku == sku and line.location == location:
                        if len(self.holds) >= max_holds:
                            self.holds_truncated = True
                            return
                        self.holds.append((self._as_callers_see_it(engine, rec, served), line.held, line.committed))
                        held, committed = held + line.held, committed + line.committed
        # Under leases a plain reservation spanning shards left by the single writer is recorded at its home
        # group alone, which another process may own: its units are counted here (Q2, Q3), its record is not.
        self.holds_elsewhere = held < self.quantities.reserved or committed < self.quantities.committed

    def _as_callers_see_it(self, engine: Engine, rec: Reservation, served: set[int]) -> Reservation:
        """A part of an order spanning groups is shown as its order: the id callers know and the order's
        expiry (a part never expires by itself). An order held at another process: its expiry is read there
        (``with_orders_elsewhere``); a held part's shown without one read as if its order were not held."""
        order_id = orders.order_of(rec.reservation_id)
        if order_id is None:
            return rec
        home = engine.home_of(order_id)
        order = engine.actors[home].ledger.reservation(order_id) if home is not None and home in served else None
        if order is None and engine.ids is not None and rec.state == State.HELD:
            self.elsewhere.setdefault(order_id, []).append(len(self.holds))
        return msgspec.structs.replace(rec, reservation_id=order_id, expires_at=order.expires_at if order else 0)

    async def with_orders_elsewhere(self, engine: Engine) -> None:
        """The holds of orders held at other processes given their order's expiry, as one process shows
        it: each order's home read from its id's claim (R5), its record from that group's owner. One that
        cannot be read now (Redis or the owner not answering, the group changing hands) keeps none."""
        if not self.elsewhere or engine.ids is None:
            return
        order_ids = list(self.elsewhere)
        homes = await asyncio.gather(*(engine.ids.claims.look(oid) for oid in order_ids), return_exceptions=True)
        asked = [(oid, home) for oid, home in zip(order_ids, homes, strict=True)
                 if isinstance(home, int) and 0 <= home < len(engine.actors)]
        found = await asyncio.gather(*(run_part(engine, home, ReadPart(oid)) for oid, home in asked),
                                     return_exceptions=True)
        # A failed read is one that cannot be read now, a CancelledError included: this caller's own cancellation
        # ends the gather itself, so one among its results is a read's own end (grpc.aio's, on a peer channel
        # closed under it) — raised, gRPC answered the Explain nothing at all.
        for (order_id, _), order in zip(asked, found, strict=True):
            if isinstance(order, Reservation) and order.is_order and order.reservation_id == order_id:
                for at in self.elsewhere[order_id]:
                    rec, held, committed = self.holds[at]
                    self.holds[at] = (msgspec.structs.replace(rec, expires_at=order.expires_at), held, committed)

