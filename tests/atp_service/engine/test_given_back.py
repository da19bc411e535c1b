"""``orphans.given_back``: which committed units of a confirmed part, whose release Redis lost while its
order's group kept the order's record, housekeeping gives back (R3, Q3) — never units the order fulfilled
(Q5), nor any under an order that did not release a confirmation."""

from __future__ import annotations

import pytest

from atp_service.engine.orphans import given_back
from reservation import LineRecord, LineRequest, OrderStep, Outcome, PendingOp, Reservation, State


def _line(sku: str, granted: int, committed: int = 0, released: int = 0, fulfilled: int = 0,
          location: str = "S1") -> LineRecord:
    return LineRecord(sku, location, granted, granted, Outcome.GRANTED, granted, committed=committed,
                      released=released, fulfilled=fulfilled)


def _part(*lines: LineRecord, state: State = State.CONFIRMED) -> Reservation:
    return Reservation("o\x1f1", "ref", "web", 10**15, False, state, lines, 0, 0, 0)


def _order(state: State, *lines: LineRecord, pending: PendingOp | None = None) -> Reservation:
    return Reservation("o", "ref", "web", 60_000, False, state, lines, 0, 0, 0, parts=(0, 1), pending=pending)


def test_a_released_order_gives_back_every_committed_unit_its_part_kept() -> None:
    part = _part(_line("b", 3, committed=3), _line("c", 2, committed=2))
    order = _order(State.RELEASED, _line("a", 2, released=2), _line("b", 3, released=3), _line("c", 2, released=2))
    assert given_back([order], part) == (LineRequest("b", "S1", 3), LineRequest("c", "S1", 2))


def test_a_fulfilled_order_gives_back_only_what_it_released_past_what_the_part_has() -> None:
    order = _order(State.FULFILLED, _line("b", 5, released=3), _line("c", 2))
    # The part lost its release and fulfilment: 5 committed, 3 of them released by the order.
    assert given_back([order], _part(_line("b", 5, committed=5), _line("c", 2, committed=2))) == (
        LineRequest("b", "S1", 3),)
    # The part kept a first release of 1 (by line), lost the second of 2 and the fulfilment.
    assert given_back([order], _part(_line("b", 5, committed=4, released=1), _line("c", 2, committed=2))) == (
        LineRequest("b", "S1", 2),)
    # Only the fulfilment lost: nothing to give back (its units left on_hand with it, Q5).
    assert given_back([order], _part(_line("b", 5, committed=2, released=3), _line("c", 2, committed=2))) == ()


@pytest.mark.parametrize("state", [State.EXPIRED, State.REJECTED, State.HELD, State.CONFIRMED])
def test_an_order_that_released_no_confirmation_gives_nothing_back(state: State) -> None:
    """EXPIRED/REJECTED over a confirmed part: the order's record lost the confirmation; the part is a paid
    order's, kept until shipped. A live order: its own change gives the part up."""
    order = _order(state, _line("b", 3, released=3))
    assert given_back([order], _part(_line("b", 3, committed=3))) == ()


def test_an_order_with_a_change_pending_or_a_part_not_confirmed_gives_nothing_back() -> None:
    pending = _order(State.RELEASED, _line("b", 3, released=3), pending=PendingOp(OrderStep.RELEASE))
    assert given_back([pending], _part(_line("b", 3, committed=3))) == ()
    released = _order(State.RELEASED, _line("b", 3, released=3))
    assert given_back([released], _part(_line("b", 3, released=3), state=State.RELEASED)) == ()
    assert given_back([], _part(_line("b", 3, committed=3))) == ()  # no record: an orphan, kept (Q3)


def test_every_record_must_have_released_the_units() -> None:
    """Two records of the order (its id decided at two homes): only what both released."""
    part = _part(_line("b", 3, committed=3))
    released = _order(State.RELEASED, _line("b", 3, released=3))
    fulfilled = _order(State.FULFILLED, _line("b", 3, released=1))
    assert given_back([released, fulfilled], part) == (LineRequest("b", "S1", 1),)
    assert given_back([released, _order(State.EXPIRED, _line("b", 3, released=3))], part) == ()


def test_a_position_in_several_records_is_summed() -> None:
    """A plain line and a group line's allocation at one position: released and committed per position."""
    part = _part(_line("b", 2, committed=2), _line("b", 1, committed=1))
    order = _order(State.FULFILLED, _line("b", 2, released=2), _line("b", 1))
    assert given_back([order], part) == (LineRequest("b", "S1", 2),)
