"""Whose a SHIPMENT fact is, told by its ``event_time`` against the reservation it names (``_order_shipments``), no
I/O: a fact stamped half the retention or more before the reservation was made is a late fact of an earlier holder of
the id (R5: reserved again once that one was forgotten, a retention after it was resolved), never this one's: the
stock moves alone and nothing of it is fulfilled (Q1, Q3, R4). One stamped later, by a clock minutes behind the
service's (more than the skew E7 allows ahead, ``fact_future_skew_ms``), is this one's."""

from __future__ import annotations

import dataclasses

import msgspec

from reservation import Fact, FactKind, FactOutcome, OrderStep, PendingOp, Reservation, State
from reservation import _order_shipments as order_shipments
from reservation import _orders as orders
from reservation._order_shipments import Fulfils
from reservation._unfulfilled import UNFULFILLED, NotFulfilled, Unfulfilled
from tests.reservation.helpers import LIMITS, cmd
from tests.reservation.test_orders import NOW, Estate, changed, place, reserved_order

SKEW_MS = 2_000
MARGIN_MS = 5_000
SKEWED = dataclasses.replace(LIMITS, fact_future_skew_ms=SKEW_MS, retention_ms=2 * MARGIN_MS)


def shipment(event_id: str, at: int, sku: str = "B") -> Fact:
    return Fact(event_id, "wms", FactKind.SHIPMENT, sku, "S1", 1, at, "o")


def confirmed(estate: Estate) -> Reservation:
    """Order ``o`` of 2 A (group 0) and 3 B (group 1), opened at ``NOW`` and CONFIRMED."""
    return changed(estate, reserved_order(estate, cmd("o", ("A", "S1", 2), ("B", "S1", 3))),
                   PendingOp(OrderStep.CONFIRM))


def test_a_fact_stamped_half_the_retention_before_the_reservation_was_made_is_an_earlier_holder_s_R4_R5() -> None:
    """Defect: the margin was the skew E7 allows (``fact_future_skew_ms``): a fact stamped by a source's clock behind
    the service's (or at a group whose clock ran ahead) by more than that was taken for an earlier holder's."""
    order = confirmed(Estate())
    assert order.created_at == NOW
    assert order_shipments.earlier_holder(order, shipment("s", NOW - SKEW_MS - 1), SKEWED) == ""  # a clock behind
    assert order_shipments.earlier_holder(order, shipment("s", NOW - MARGIN_MS + 1), SKEWED) == ""
    assert order_shipments.earlier_holder(order, shipment("s", NOW + 5), SKEWED) == ""
    why = order_shipments.earlier_holder(order, shipment("s", NOW - MARGIN_MS), SKEWED)
    assert why == (f"the fact is stamped {MARGIN_MS} ms before reservation 'o' was made, half the retention "
                   f"({MARGIN_MS} ms) or more: a shipment of an earlier holder of its id, forgotten before it was made")
    assert order_shipments.earlier_holder(None, shipment("s", 0), SKEWED) == ""  # nothing known to tell it by


def test_the_judge_tells_the_order_s_own_part_not_fulfilled_by_a_fact_stamped_well_before_it_opened_R4() -> None:
    estate = Estate()
    order = confirmed(estate)
    whose = order_shipments.judge(order, 1, place, SKEWED)
    own = estate.parts(order)[1]
    assert whose(own, shipment("s", NOW - MARGIN_MS)) == Fulfils.EARLIER
    assert whose(own, shipment("s", NOW - SKEW_MS - 1)) == Fulfils.OWN
    # Another order's part of the id (back from older data): a fact stamped before this one opened is that order's
    first = msgspec.structs.replace(own, order_ref="first", created_at=NOW - 10 * SKEW_MS,
                                    updated_at=NOW - 10 * SKEW_MS)
    assert whose(first, shipment("s", NOW - SKEW_MS - 1)) == Fulfils.OTHERS
    assert whose(first, shipment("s", NOW)) == Fulfils.NONE


def test_an_earlier_holder_s_fact_moves_the_stock_alone_its_identity_recorded_once_Q1_R4_E8() -> None:
    """Defect: the order's own part took the fact whenever it was stamped, so an earlier holder's late shipment
    fulfilled the new order's committed units, none of which left (Q3). Now it moves on_hand alone, answered not
    fulfilled, and a resend is a duplicate (E8); one stamped later, by a clock behind, still fulfils."""
    estate = Estate()
    order = confirmed(estate)
    part, ledger = orders.part_id("o", 1), estate.ledgers[1]
    whose = order_shipments.judge(order, 1, place, SKEWED)
    before = ledger.reservation(part)
    late = shipment("old-1", NOW - MARGIN_MS)
    outcome, why = order_shipments.ship(ledger, late, part, NOW, SKEWED, whose)
    assert outcome == FactOutcome.APPLIED and why.startswith("stock moved; reservation not fulfilled: "), why
    assert ledger.reservation(part) == before, "the earlier holder's shipment fulfilled the new order's part"
    assert (ledger.quantities("B", "S1").on_hand, estate.committed("B")) == (9, 3)
    assert order_shipments.ship(ledger, late, part, NOW, SKEWED, whose)[0] == FactOutcome.DUPLICATE

    within = shipment("new-1", NOW - SKEW_MS - 1)
    assert order_shipments.ship(ledger, within, part, NOW, SKEWED, whose) == (FactOutcome.APPLIED, "")
    assert (ledger.quantities("B", "S1").on_hand, estate.committed("B")) == (8, 2)
    assert ledger.reservation(part).state == State.CONFIRMED  # type: ignore[union-attr]


def test_a_shipment_of_an_order_not_known_here_at_a_group_with_no_part_of_it_is_told_unknown_R4() -> None:
    """No judge: the order not known here (forgotten at its home, or no process said it holds it). Defect: with no part
    at the fact's group it was told ``not_a_line`` ("check the producer's locations") for a reservation that is gone."""
    estate = Estate()
    outcome, why = order_shipments.ship(estate.ledgers[1], shipment("s", NOW), orders.part_id("o", 1), NOW, SKEWED)
    assert outcome == FactOutcome.APPLIED and isinstance(why, NotFulfilled), why
    assert (why.cause, why) == (Unfulfilled.UNKNOWN, f"{UNFULFILLED}: reservation 'o' unknown")
    assert estate.ledgers[1].quantities("B", "S1").on_hand == 9  # the units left all the same (Q1)


def test_a_shipment_of_a_known_order_at_a_group_with_no_part_of_it_is_told_not_a_line_R4() -> None:
    estate = Estate()
    order = reserved_order(estate, cmd("o", ("A", "S1", 2)))  # its one part at group 0
    whose = order_shipments.judge(order, 1, place, SKEWED)
    outcome, why = order_shipments.ship(estate.ledgers[1], shipment("s", NOW), orders.part_id("o", 1), NOW, SKEWED,
                                        whose)
    assert outcome == FactOutcome.APPLIED and isinstance(why, NotFulfilled), why
    assert why.cause == Unfulfilled.NOT_A_LINE, why
