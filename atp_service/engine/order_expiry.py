"""An order's expiry when a part's group does not answer (its log unreachable, its owner silent or cut off), part
of ``Orders`` (``orders.py``), kept here for its size.

An order's expiry reads every part before it plans (a part confirmed proves its home lost a confirmation: the order
is then confirmed again, never expired, R3). With one part's group silent that read fails at every pass, and the
answering parts' units stayed held for as long as the group was away — no hold outlives its order's TTL (R2). So an
order still HELD at its home ``unanswered_after_ms`` past its TTL, no part that answers confirmed, is expired
at its home without the silent parts (R3: it changes state at its home first, recorded pending): the answering parts
give their units back at once, a Confirm, Release or Fulfil is answered as its home recorded it (``EXPIRED``, never
applied to some parts only), and the silent parts get their share once their group answers again (housekeeping
drives the pending expiry on, ``Orders.drive_unsettled``). Until then the bound lets a blip or a group changing hands
pass with every part read, as an expiry normally is. An order left undecided past its TTL is abandoned the same way
(``undecided_parts``): its parts made give their units back, the silent ones are given up when they answer.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from atp_service.engine.losses import as_shown
from atp_service.engine.parts import UNDECIDED, ReadPart, record_at, run_part
from reservation import DomainError, OrderStep, PendingOp, Reason, Reservation, State, Unavailable
from reservation import _order_losses as losses
from reservation import _orders as orders

if TYPE_CHECKING:
    from atp_service.engine.orders import Orders
    from atp_service.engine.router import Engine

log = logging.getLogger(__name__)

EXPIRE_UNANSWERED_AFTER_MS = 60_000
"""How long past its TTL an order waits at least for every part to answer before it expires without the silent ones:
well above a Redis failover and a lease of 5 s, the default (a group taken over by another process answers again
within a lease); with a longer lease, twice the lease (``unanswered_after_ms``)."""


def unanswered_after_ms(engine: Engine) -> int:
    """How long past its TTL an order of ``engine`` waits for every part: a group merely changing hands is not taken
    for silent (``lease_ms`` may be set up to 600 s) — else an order could be expired without reading a part
    confirmed there, the one case the bound exists for (a confirmation its home lost, R3, Q3)."""
    return max(EXPIRE_UNANSWERED_AFTER_MS, 2 * engine._settings.lease_ms)


async def expire_order(sagas: Orders, order_id: str, home: int) -> None:
    """The order's expiry (housekeeping's, under the order's lock): through every part, or — a part's group silent
    past the bound — decided at its home and carried to the parts that answer, the rest when they answer (R2, R3)."""
    try:
        await sagas._change(order_id, home, PendingOp(OrderStep.EXPIRE), quiet=True)
    except Unavailable:
        if not await _expire_unanswered(sagas, order_id, home):
            raise


async def _expire_unanswered(sagas: Orders, order_id: str, home: int) -> bool:
    """Whether the order was expired at its home without its silent parts (each part that answered given its share
    before this returns; raises, the expiry left pending, where a part did not)."""
    engine = sagas._engine
    order = await record_at(engine, home, order_id)
    now = engine.now_at(home)
    if order is None or not order.is_order or order.state != State.HELD or now < order.expires_at + \
            unanswered_after_ms(engine) or (order.pending is not None and order.pending.kind != OrderStep.RELEASE):
        # Resolved, confirmed (its confirmation carried through, never expired: R3), or within the bound. A partial
        # release pending (its share applied where the parts answered) is overtaken: the expiry gives back the rest.
        return False
    answering, silent = await answering_parts(engine, order)
    if not silent or losses.own_confirmed(order, answering, engine.place, engine.limits):
        # R3, Q3: confirmed again (never expired) once every part answers — a partial Release pending too (its home
        # back to before the confirmation, R7): ``confirmed_by_parts`` sees one only where nothing is pending. A part
        # of other content confirmed is another order's of that id (R5): it holds this one's expiry back for nothing.
        return False
    expired, _, _ = orders.plan(order, PendingOp(OrderStep.EXPIRE), now, engine.limits, engine.place)
    if expired is None:
        return False
    await sagas._save(home, expired, over=order)  # R3: at its home first; from here a Confirm is refused EXPIRED
    _said(engine, order_id, home, silent)
    # Carried through as a pending expiry is (``Orders._settle``): the answering parts' units given back, the order
    # recorded settled once every part has its share; raises for a silent one, left pending (driven on).
    await sagas._settle(order_id, home)
    return True


async def undecided_parts(sagas: Orders, order: Reservation, home: int) -> dict[int, Reservation]:
    """The parts of ``order``, undecided past its TTL, read before it is abandoned (a part confirmed proves it was
    decided, R3: decided again): every part (one Redis lost left out), or — a part's group silent past the bound, as
    for ``_expire_unanswered`` — those that answer, so that the parts made give their units back (``_abandon``: the
    silent ones given up when they answer) instead of holding them for as long as that group is away (R2)."""
    engine = sagas._engine
    answering, silent = await answering_parts(engine, order)
    if silent and engine.now_at(home) < order.expires_at + unanswered_after_ms(engine):
        raise Unavailable(UNDECIDED, Reason.OUTCOME_UNKNOWN)  # as ``Orders._parts``: the next pass reads again
    if silent and not losses.decided_by_parts(order, answering, engine.place, engine.limits):
        _said(engine, order.reservation_id, home, silent)
    return answering


def _said(engine: Engine, order_id: str, home: int, silent: list[int]) -> None:
    log.warning("order %s expired at its home %d past its TTL while the groups of its parts %s do not answer: "
                "their units stay held until they answer", order_id, home, silent,
                extra={"event": "order_expired_parts_unanswered", "reservation_id": order_id, "shard": home,
                       "groups": silent})
    engine.metrics.order_sagas.labels("expired_unanswered").inc()


async def answering_parts(engine: Engine, order: Reservation) -> tuple[dict[int, Reservation], list[int]]:
    """The order's parts whose groups answered a read (a part Redis lost left out), and the groups that did not."""
    groups = list(order.parts)
    read = (run_part(engine, g, ReadPart(orders.part_id(order.reservation_id, g))) for g in groups)
    answering: dict[int, Reservation] = {}
    silent: list[int] = []
    for group, result in zip(groups, await asyncio.gather(*read, return_exceptions=True), strict=True):
        if isinstance(result, BaseException):
            if not isinstance(result, Exception):
                raise result  # cancelled: the saga's own task is being stopped
            silent.append(group)
        elif result is not None:
            answering[group] = result
    return answering, silent


async def refused_as_recorded(engine: Engine, order_id: str, home: int, step: PendingOp,
                              unanswered: Unavailable) -> DomainError:
    """A change of an order whose pending change could not be carried through (``unanswered``: a part's group
    silent): where its home has resolved it (an expiry on its way to a silent part), refused as the record at its
    home has it — that record decides, so the answer does not wait for the silent group (R3: resolved once, the
    second resolution refused naming the state); else ``unanswered``."""
    order = await _expired_at(engine, home, order_id)
    if order is None:
        return unanswered
    _, _, refusal = orders.plan(order, step, engine.now_at(home), engine.limits, engine.place)
    return refusal or unanswered


async def read_order(sagas: Orders, order_id: str, home: int, as_recorded: bool) -> Reservation:
    """The order as its callers see it, its pending change carried through first (``Orders._settled``, ``view``).
    ``as_recorded`` (a GetReservation): where that could not be done (a part's group silent) and its home has
    resolved it ``EXPIRED`` (an expiry on its way to a silent part), the record at its home — that record decides
    (R3: resolved once, for good); its lines as recorded there (a decided order's as the read answers once every part
    has its share, an abandoned one's nothing granted) — as a Confirm, Release or Fulfil of it is refused
    (``refused_as_recorded``), not UNAVAILABLE for as long as the group is away.
    Not a step another process asks (``SettleOrder``: a shipment after it carries the change through first)."""
    try:
        order, parts = await sagas._settled(order_id, home)
        return as_shown(sagas._engine, order, parts)  # not another order's part
    except Unavailable:
        if not as_recorded:
            raise
        expired = await _expired_at(sagas._engine, home, order_id)
        if expired is None:
            raise
        return orders.view(expired, {})


async def _expired_at(engine: Engine, home: int, order_id: str) -> Reservation | None:
    """The order's record at its home where it is ``EXPIRED`` there (resolved for good, R3), else None."""
    order = await record_at(engine, home, order_id)
    return order if order is not None and order.is_order and order.state == State.EXPIRED else None
