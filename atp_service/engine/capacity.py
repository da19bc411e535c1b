"""Bounds on what the engine keeps and runs: a shard's bounds on the reservations it remembers
(``max_live_reservations_per_shard``, ``max_resolved_reservations_per_shard``), asked before a Reserve
with a new id leaves a record there — a one-group Reserve's record, and an order's record at its home
(``Orders``) with its part there —, the orders housekeeping drives on at once, and the sagas callers
wait for (``Waits``: none kept for a caller gone before it began)."""

from __future__ import annotations

import asyncio
import bisect
from collections.abc import Callable
from typing import Any, TypeVar

from atp_service.engine.maintenance import expire_alone
from reservation import Ledger, Limits, Reason, Reservation, ReserveCommand, ResourceExhausted
from reservation import _operations as ops
from reservation import _orders as orders

T = TypeVar("T")
DRIVE_ORDERS_AT_ONCE = 64
"""Sagas of orders left pending (a group's log unreachable, a restart) and of orphaned parts that
housekeeping runs at once; the rest wait for the next passes. Each pass spawned a saga for every
one, none waited for: thousands left pending by an outage ran together, their steps filling every
shard's mailbox ahead of any shopper's Reserve (as ``maintenance.EXPIRE_ORDERS_AT_ONCE`` for expiries)."""


def record_refusal(home: Ledger, limits: Limits, records: int = 1) -> ResourceExhausted | None:
    """CAPACITY_REACHED (metadata ``limit``) if ``records`` more live records would pass a bound of
    ``home``; None: they fit. Every Reserve leaves a record, a refused one too (R5 answers its retry
    alike), kept for the retention window once resolved: a flood of Reserves refused for want of stock
    (a sold-out launch retried by bots with new ids) counts against no live bound, and grew memory
    with it for a day."""
    live, resolved = home.live_reservations, len(home.reservations) - home.live_reservations
    if live + records > limits.max_live_reservations_per_shard:
        what, name = "live", "max_live_reservations_per_shard"
    elif resolved >= limits.max_resolved_reservations_per_shard:
        what, name = "resolved", "max_resolved_reservations_per_shard"
    else:
        return None
    limit = getattr(limits, name)
    return ResourceExhausted(f"shard {home.shard}: {limit} {what} reservations (limit {name})",
                             Reason.CAPACITY_REACHED, metadata={"limit": name})


def order_opened(ledger: Ledger, cmd: ReserveCommand, groups: tuple[int, ...], limits: Limits, now: int,
                 place: Callable[[str], int]) -> tuple[Reservation | ResourceExhausted, bool]:
    """An order's record at its home (``ledger``, ``Orders``) and whether it was opened now: the one there (R5: its
    content checked), else one opened now if it fits the home's bounds together with its part there — else the
    refusal, nothing written. Opened unasked, every Reserve with a new id past a bound left a record at the
    home, held until its TTL (up to ``max_ttl_seconds``) while its part there was refused. The home's
    due holds expire first (``expire_alone``, ``place``: a SKU's shard), as in a Reserve's turn: a hold
    past its TTL is not live when the bound is asked (R2, R3); counted, the order was refused
    CAPACITY_REACHED where one process, deciding it as a Reserve across shards, granted it."""
    found = ledger.reservation(cmd.reservation_id)
    if found is not None:
        orders.same_order(found, cmd) if found.is_order else ops.same_content(found, cmd)
        return found, False
    if ledger.expiry_due(now):
        expire_alone(ledger, now, place)
    refusal = record_refusal(ledger, limits, 1 + (ledger.shard in groups))
    if refusal is not None:
        return refusal, False
    ledger.save(orders.open_order(cmd, groups, now))
    return ledger.reservations[cmd.reservation_id], True


def next_to_drive(pending: set[str], after: str, room: int) -> tuple[str, list[str]]:
    """Up to ``room`` of ``pending`` orders for housekeeping to drive on now, in id order (not the str
    hash's: a simulated seed replays) from the first after ``after`` round to the start, so orders
    that keep failing (a group's log unreachable) do not hold back the others; and the new ``after``."""
    if room <= 0 or not pending:
        return after, []
    ids = sorted(pending)
    start = bisect.bisect_right(ids, after)
    picked = (ids[start:] + ids[:start])[:room]
    return picked[-1], picked


class Waits:
    """The sagas callers wait for (``Orders``), told apart until each has begun (holds its order's lock)."""

    def __init__(self) -> None:
        self._waiting: set[asyncio.Task[Any]] = set()  # not begun: waiting for another saga of their order

    def add(self, task: asyncio.Task[T]) -> asyncio.Task[T]:
        self._waiting.add(task)
        task.add_done_callback(self._waiting.discard)
        return task

    def begun(self) -> None:
        """Said by a saga's own task once it holds its order's lock: from here on it is not its caller's to stop."""
        self._waiting.discard(asyncio.current_task())

    async def wait(self, task: asyncio.Task[T]) -> T:
        """``task``'s result. The caller's cancellation abandons the wait, not a saga begun (R8: applied whole); one
        not begun is dropped with it (R8: nothing of it was applied). Kept, every call that came and went while a
        saga of its order waited on a group not answering (a peer past its step's deadline, for minutes) queued one
        more saga without bound, each run in turn once the group answered, for nobody."""
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            if task in self._waiting:
                task.cancel()
            raise
