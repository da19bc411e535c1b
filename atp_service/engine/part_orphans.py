"""Parts of orders spanning groups whose order has no record at any group (orphans, ``Orders``,
``engine.orphans``): found over this process's ledgers, and said."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

from reservation import Ledger, State
from reservation import _orders as orders

log = logging.getLogger(__name__)


def orphan_parts(ledgers: Iterable[Ledger], has_order: Callable[[str], bool]) -> tuple[dict[str, int], dict[str, int]]:
    """Live parts whose order has no record at any group (part id -> its group): (held, confirmed). An
    order's record is durable before any part is reserved, so only Redis losing acknowledged entries of
    the order's group (restarted from older data) leaves one; parts never expire by themselves, so a
    held one's units would stay held for good (R2: no hold outlives its order's decision)."""
    held: dict[str, int] = {}
    confirmed: dict[str, int] = {}
    for ledger in ledgers:
        for rid, rec in ledger.reservations.items():
            order_id = orders.order_of(rid)
            if order_id is None or rec.state not in (State.HELD, State.CONFIRMED) or has_order(order_id):
                continue
            (held if rec.state == State.HELD else confirmed)[rid] = ledger.shard
    return held, confirmed


def held_orphans(ledgers: Iterable[Ledger], has_order: Callable[[str], bool]) -> dict[str, int]:
    """Held parts whose order has no record (``orphan_parts``); confirmed ones are committed units of
    a paid order (Q3), kept so that its SHIPMENT fulfils them."""
    held, confirmed = orphan_parts(ledgers, has_order)
    for part_id, shard in confirmed.items():
        log_orphaned(part_id, shard, "is confirmed: kept until shipped")
    return held


def log_orphaned(part_id: str, shard: int, what: str) -> None:
    """Says a part ``orphan_parts`` found, and what becomes of it."""
    log.error("part %r of an order with no record at any group (Redis lost acknowledged entries of the order's "
              "group) %s", part_id, what,
              extra={"event": "order_part_orphaned", "reservation_id": orders.order_of(part_id), "shard": shard})
