"""An order's id reserved again once its first order is no longer remembered (R5), while a part of the first order is
still found under the id (``_order_losses``), no I/O: never taken for the second order's own part (R2, R3, Q3)."""

from __future__ import annotations

from reservation import OrderStep, PendingOp, State, reserve
from reservation import _order_losses as losses
from reservation import _orders as orders
from tests.reservation.helpers import LIMITS, cmd
from tests.reservation.test_orders import Estate, changed, place, reserved_order

ASKED = cmd("o", ("A", "S1", 3), ("B", "S1", 2))
"""3 of A (group 0, the order's home) and 2 of B (group 1)."""


def test_a_part_resolved_past_its_retention_is_reserved_anew_never_replayed_R5() -> None:
    """Defect (found by review): a part of an earlier order of the id, resolved past its retention at its group and not
    evicted yet there, was replayed to the Reserve of a new order of that id as its own decision (released: the new
    order refused; fulfilled: decided CONFIRMED from it). It is what eviction forgets, by its group's own clock: the
    part is reserved anew over it, the units held; a part within its retention, or live, is replayed as before."""
    estate = Estate()
    changed(estate, reserved_order(estate, ASKED), PendingOp(OrderStep.RELEASE))
    share = orders.split(ASKED, place)[1]
    part = estate.ledgers[1].reservation(share.reservation_id)
    assert part is not None and part.state == State.RELEASED and estate.held("B") == 0
    late = part.updated_at + LIMITS.retention_ms
    assert losses.forgotten(part, late, LIMITS) and not losses.forgotten(part, late - 1, LIMITS)
    assert not losses.forgotten(None, late, LIMITS)
    again, replayed = reserve(losses.Anew(estate.ledgers[1], share.reservation_id), share, late)
    assert (again.state, replayed, again.created_at) == (State.HELD, False, late) and estate.held("B") == 2
    assert estate.ledgers[1].reservation(share.reservation_id) == again
    assert reserve(estate.ledgers[1], share, late) == (again, True)  # a retry: a replay (R5)
    assert not losses.forgotten(again, late + LIMITS.retention_ms, LIMITS)  # live: never forgotten
