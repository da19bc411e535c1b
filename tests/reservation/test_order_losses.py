"""Orders spanning groups after Redis lost acknowledged entries of some of their groups (``_order_losses``), no
I/O: a part that was confirmed is a confirmed order's — never released by an expiry (R3: only HELD -> EXPIRED;
Q3: committed units never expire) — and an order whose home lost its confirmation is confirmed again, never
expired."""

from __future__ import annotations

from reservation import OrderStep, PendingOp, Reservation, State
from reservation import _order_losses as losses
from reservation import _orders as orders
from tests.reservation.helpers import LIMITS, cmd
from tests.reservation.test_orders import NOW, Estate, place, reserved_order

ASKED = cmd("o", ("A", "S1", 3), ("B", "S1", 2))
"""3 of A (group 0, the order's home) and 2 of B (group 1)."""


def _home_lost_its_confirmation(estate: Estate) -> Reservation:
    """Order "o" held, then confirmed — as Redis holds it after the home's group came back from before the
    confirmation: the record HELD (its TTL running) and its part in group 0 held, group 1's part CONFIRMED (the
    share the home's pending CONFIRM sent it). The record Redis holds."""
    held = reserved_order(estate, ASKED)
    done, shares, error = orders.plan(orders.view(held, estate.parts(held)), PendingOp(OrderStep.CONFIRM), NOW,
                                      LIMITS, place)
    assert error is None and done is not None and done.state == State.CONFIRMED
    estate.apply(held, {1: shares[1]})  # group 0's share and the record's confirmation: lost with its entries
    assert (estate.held("A"), estate.committed("B")) == (3, 2)
    return held


def test_an_expiry_of_an_order_whose_home_lost_its_confirmation_leaves_its_confirmed_part_whole_R3_Q3() -> None:
    """Defect (found by review): a part took its order's EXPIRE share for a release whether it was HELD or
    CONFIRMED. An order whose home lost its confirmation expired when its TTL passed, and its confirmed part's
    committed units were offered again while the caller, told CONFIRMED, ships them (oversold). Only a held part
    is released by an expiry (R3: HELD -> EXPIRED; Q3: committed units never expire)."""
    estate = Estate()
    held = _home_lost_its_confirmation(estate)
    late = held.expires_at
    done, shares, error = orders.plan(orders.view(held, estate.parts(held)), PendingOp(OrderStep.EXPIRE), late,
                                      LIMITS, place)
    assert error is None and done is not None and done.state == State.EXPIRED  # as the home's record says
    estate.apply(held, shares, late)
    assert estate.committed("B") == 2, "a confirmed part's committed units released by its order's expiry"
    assert estate.parts(held)[1].state == State.CONFIRMED
    assert estate.held("A") == 0  # the held part: released


def test_an_order_whose_home_lost_its_confirmation_is_confirmed_again_and_never_expires_R3_Q3() -> None:
    """A part is confirmed only by the share of a CONFIRM its order's home recorded pending first (R3): the order
    was confirmed. Its confirmation is recorded again, pending, and carried through to every part as a pending
    CONFIRM is (the held part confirmed); the order is then never expired."""
    estate = Estate()
    held = _home_lost_its_confirmation(estate)
    late = held.expires_at
    assert losses.confirmed_by_parts(held, estate.parts(held))
    again = losses.confirmed_again(held, late)
    assert (again.state, again.expires_at, again.pending) == (State.CONFIRMED, 0, losses.RESTORED)
    assert again.pending is not None
    estate.apply(again, orders.shares(again, again.pending, place), late)
    settled = orders.settled(again, late, estate.parts(again))
    assert settled.pending is None and orders.view(settled, estate.parts(settled)).state == State.CONFIRMED
    assert (estate.held("A"), estate.committed("A"), estate.committed("B")) == (0, 3, 2)
    assert not losses.confirmed_by_parts(settled, estate.parts(settled))
    assert orders.plan(orders.view(settled, estate.parts(settled)), PendingOp(OrderStep.EXPIRE), late + 10**9,
                       LIMITS, place) == (None, {}, None)


def test_a_held_order_whose_parts_are_held_is_not_taken_for_confirmed_and_expires_R3() -> None:
    estate = Estate()
    held = reserved_order(estate, ASKED)
    assert not losses.confirmed_by_parts(held, estate.parts(held))
    pending = orders.open_order(ASKED, (0, 1), NOW)  # undecided: a RESERVE pending, never taken for confirmed
    assert not losses.confirmed_by_parts(pending, estate.parts(held))
    done, shares, _ = orders.plan(orders.view(held, estate.parts(held)), PendingOp(OrderStep.EXPIRE),
                                  held.expires_at, LIMITS, place)
    assert done is not None and done.state == State.EXPIRED
    estate.apply(held, shares, held.expires_at)
    assert (estate.held("A"), estate.held("B")) == (0, 0)


def test_a_restored_confirmation_is_told_from_a_confirm_and_kept_whatever_part_redis_lost_R3() -> None:
    """A held order missing a part (``lost_parts``) is given up whole, one whose Confirm stopped half-way too (its
    caller told nothing yet). One whose confirmation was restored from a confirmed part (its caller most likely
    told CONFIRMED) is carried through instead (``restored``): its confirmed part's units stay committed (Q3)."""
    estate = Estate()
    held = _home_lost_its_confirmation(estate)
    parts = estate.parts(held)
    assert losses.confirmed_by_parts(held, {1: parts[1]})  # its part in group 0 lost as well
    again = losses.confirmed_again(held, NOW)
    assert losses.lost_parts(again, {1: parts[1]}, NOW, LIMITS, place) == [0]
    assert losses.restored(again)
    confirming, _, _ = orders.plan(orders.view(held, parts), PendingOp(OrderStep.CONFIRM), NOW, LIMITS, place)
    assert confirming is not None and confirming.pending == PendingOp(OrderStep.CONFIRM)
    assert not losses.restored(confirming) and not losses.restored(held)
