"""A SHIPMENT naming an order homed at another process that no process says it holds (``parts.shipped_elsewhere``
hands ``shipments.fulfilling_its`` None): the part found at the fact's group is taken as its own, and with none there
the fact is told ``unknown`` (R4), no I/O — not ``not_a_line``, which sends the operator to the producer's locations
for a reservation that is gone."""

from __future__ import annotations

from atp_service.engine.shipments import fulfilling_its
from reservation import FactOutcome
from reservation._unfulfilled import UNFULFILLED, NotFulfilled, Unfulfilled
from tests.reservation.helpers import LIMITS
from tests.reservation.test_order_shipments import shipment
from tests.reservation.test_orders import NOW, Estate, place


def test_a_shipment_of_an_order_no_home_answered_for_with_no_part_here_is_told_unknown_R4() -> None:
    """Defect: told ``not_a_line``; the order is forgotten everywhere, so ``unknown``."""
    estate = Estate()
    outcome, why = fulfilling_its(shipment("s", NOW), None, 1, place, LIMITS)(estate.ledgers[1], NOW)
    assert outcome == FactOutcome.APPLIED and isinstance(why, NotFulfilled), why
    assert (why.cause, why) == (Unfulfilled.UNKNOWN, f"{UNFULFILLED}: reservation 'o' unknown")
    assert estate.ledgers[1].quantities("B", "S1").on_hand == 9  # the units left all the same (Q1)
