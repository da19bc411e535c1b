"""A SHIPMENT fact naming a reservation that cannot take it: the units left the building all the same (Q1, R4)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from reservation import DomainError, Fact, FactOutcome, Limits, Reservation, View
from reservation import _order_shipments as order_shipments
from reservation import _orders as orders
from reservation._order_shipments import Judge
from reservation._unfulfilled import NotFulfilled, Unfulfilled


class Asking(NamedTuple):
    """Whom a shipment of an order homed at another process asks (``parts.shipped_elsewhere``): the owner of
    ``group``, the group the order's claim names (R5: its record is there, nowhere else; -1: not read, every other
    process), unless among ``unanswered``: the processes that did not answer a step of the shipment's call (added as
    they fail; R8), each of which held every later fact of the call up to its step's deadline, one after the other."""

    group: int = -1
    unanswered: set[str] | None = None


ASK_EVERY = Asking()
"""Every other process asked (the order's home not known here), none left out."""


Shipping = Callable[[View, int], tuple[Any, str]]
"""A SHIPMENT's work on its shard: its outcome, and why it fulfilled nothing (empty: fulfilled, or a duplicate)."""


def fulfilling(fact: Fact, part: str, limits: Limits, whose: Judge | None = None) -> Shipping:
    """The SHIPMENT applied on its shard, fulfilling its line of ``part`` with it unless ``whose`` tells the part
    there another order's the fact cannot be (R4, ``_order_shipments.ship``). ``whose`` None: the order not known here
    (forgotten meanwhile, ``Orders._shipment``): the part found taken as its own, none there telling it ``unknown``."""
    return lambda view, now: order_shipments.ship(view, fact, part, now, limits, whose)


def fulfilling_its(fact: Fact, order: Reservation | None, group: int, place: orders.Place, limits: Limits
                   ) -> Shipping:
    """``fulfilling`` the part at ``group`` of ``order``, the order the fact names: a part there of another order of its
    id only by a fact that can be that order's (``_order_shipments.judge``). ``order``: its record at its home, its
    pending change carried through — or, homed at another process, the order as that home answered the settle step
    (``parts.shipped_elsewhere``), as its callers see it: its lines merged from its own parts alone, so the content it
    was opened with and its opening time, all the judge reads, are its record's (a home of an earlier build answers
    the settle step with that view too: nothing new is sent). None (no process said it holds it: forgotten
    meanwhile): the part as found, taken as its own; none there, the fact told ``unknown`` (not ``not_a_line``)."""
    if order is None or not order.is_order:
        return fulfilling(fact, orders.part_id(fact.reservation_id, group), limits)
    whose = order_shipments.judge(order, group, place, limits)
    return fulfilling(fact, orders.part_id(order.reservation_id, group), limits, whose)


def unfulfilled(fact: Fact, why: NotFulfilled) -> Shipping:
    """The SHIPMENT applied on its own shard fulfilling nothing, ``why`` told: the stock moves as any SHIPMENT's
    (Q1, R4; once, by the fact's identity, E8), and the fact is answered, counted and logged as not fulfilled
    (``FactDesk._tell_unfulfilled``: ``shipment_not_fulfilled``)."""
    def work(view: View, _now: int) -> tuple[Any, str]:
        outcome, reason = view.record_fact(fact)
        if outcome not in (FactOutcome.APPLIED, FactOutcome.ABSORBED):
            return outcome, reason
        return outcome, why

    return work


def refused_for_good(reservation_id: str, refusal: DomainError) -> NotFulfilled:
    """Why a SHIPMENT fulfilled nothing of a reservation that refused for good (``parts.lasting``) a step before its
    fulfilment: a refused fact left the units in on_hand, offered again, until an operator replayed it."""
    why = f"reservation {reservation_id!r} cannot take it ({refusal.reason.name}: {refusal.message})"
    return NotFulfilled(Unfulfilled.REFUSED, why)
