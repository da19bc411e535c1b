"""The due holds a Reserve's turn passes over (an order, a hold spanning shards: housekeeping's) are walked
once, not by every turn and every check before one (R3, R8).

Pushed back onto the expiry queue's head, they were popped and pushed again by every batch's Reserve turn
(``Ledger.due_alone``) and by every check made before one (``Ledger.due_first``) for as long as housekeeping
could not expire them (a part's Redis away: each pass requeues them): up to ``EXPIRY_STALE_PER_TURN`` entries
a batch, ~70 ms, on a shard whose Reserves walked none before. And counted again at each walk against the
batch's bound, a check that found a plain hold due behind them left its turn too little of the bound to
reach it: the new id claimed for a turn that refused it CAPACITY_REACHED (``IdGuard._room_in_turn``)."""

from __future__ import annotations

import pytest

from reservation import Reservation, expire, reserve
from reservation import _ledger as ledger_module
from reservation._expiry import sweeping
from reservation._ledger import Ledger
from tests.reservation.helpers import cmd, ledger_with

BOUND = 8
PASSED = 5
NOW = 10_000
AT = NOW + 20_000


@pytest.fixture(autouse=True)
def _small_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ledger_module, "EXPIRY_STALE_PER_TURN", BOUND, raising=False)


class _Alone:
    """Not the holds named ``o…`` (orders: housekeeping's); counts the holds it is asked about."""

    def __init__(self) -> None:
        self.asked = 0

    def __call__(self, rec: Reservation) -> bool:
        self.asked += 1
        return not rec.reservation_id.startswith("o")


def _ledger_with_orders_due_first(plain: int) -> Ledger:
    ledger = ledger_with({("A", "S1"): 1_000})
    for n in range(PASSED):
        reserve(ledger, cmd(f"o{n}", ("A", "S1", 1), ttl=10), NOW)
    for n in range(plain):
        reserve(ledger, cmd(f"p{n}", ("A", "S1", 1), ttl=20), NOW)
    ledger.commit(NOW)
    return ledger


def test_the_turns_after_the_first_walk_no_due_hold_passed_over_again_R8() -> None:
    ledger = _ledger_with_orders_due_first(plain=1)
    alone = _Alone()
    assert ledger.due_alone(AT, alone, 100) == ["p0"]
    expire(ledger, "p0", AT)
    ledger.commit(AT)
    first = alone.asked
    for _ in range(10):  # batches of their own, housekeeping unable to expire the orders meanwhile
        assert ledger.due_alone(AT, alone, 100) == []
        assert ledger.due_first(AT, alone) is None
        ledger.commit(AT)
    assert alone.asked == first, "every turn walked the holds passed over again"  # was: 10 x 2 x PASSED more
    assert sorted(ledger.due(AT)) == [f"o{n}" for n in range(PASSED)]  # still housekeeping's, each once


def test_the_turn_takes_the_hold_its_check_found_behind_holds_passed_over_R3() -> None:
    """``due_first`` (``IdGuard``'s check at a full shard) found ``p0``; the turn of the same batch must take it."""
    ledger = _ledger_with_orders_due_first(plain=1)
    alone = _Alone()
    found = ledger.due_first(AT, alone)
    assert found is not None and found.reservation_id == "p0"
    assert ledger.due_alone(AT, alone, 100) == ["p0"]  # was: [] (its bound spent walking o0..o4 again)


def test_a_batch_of_checks_finds_the_holds_its_turns_take_R3() -> None:
    """A ReserveStream's batch of new ids at a full shard: each check walks the orders once between them."""
    ledger = _ledger_with_orders_due_first(plain=3)
    alone = _Alone()
    for n in range(3):
        found = ledger.due_first(AT, alone)
        assert found is not None and found.reservation_id == f"p{n}", n  # was: None at the second
        assert ledger.due_alone(AT, alone, 1 + n) == [f"p{n}"]
        expire(ledger, f"p{n}", AT)
    assert sorted(ledger.due(AT)) == [f"o{n}" for n in range(PASSED)]


def test_housekeeping_takes_the_holds_set_aside_in_their_order_among_the_rest_R3() -> None:
    """``due`` walks the holds set aside with the queue, earliest first, and no further than its limit: a pass
    does not queue them all again (a shard's turn of ``O(n)`` where a part's Redis stays away)."""
    ledger = _ledger_with_orders_due_first(plain=0)
    reserve(ledger, cmd("p", ("A", "S1", 1), ttl=15), NOW)  # due between the orders and o-late
    reserve(ledger, cmd("o-late", ("A", "S1", 1), ttl=18), NOW)
    ledger.commit(NOW)
    alone = _Alone()
    assert ledger.due_first(AT, lambda rec: False) is None  # o0..o4 set aside, p and o-late passed over too
    assert ledger.due(AT, 3) == ["o0", "o1", "o2"]
    assert ledger.due(AT) == ["o3", "o4", "p", "o-late"]
    assert ledger.due(AT) == [] and not ledger.housekeeping_due(AT) and alone.asked == 0


def test_a_sweep_keeps_the_holds_set_aside_R3() -> None:
    ledger = _ledger_with_orders_due_first(plain=1)
    assert ledger.due_alone(AT, _Alone(), 100) == ["p0"]
    ledger.rollback()  # p0 queued again, the orders still set aside
    for _ in sweeping(ledger, 2):  # a slice at a time, as a shard's maintenance turn drives it
        pass
    assert ledger._passed == []
    assert sorted(ledger.due(AT)) == ["o0", "o1", "o2", "o3", "o4", "p0"]


def test_holds_set_aside_ask_for_housekeeping_only_once_due_again_after_the_clock_went_back_R3() -> None:
    """``housekeeping_due`` said yes whenever a hold was set aside, due or not: read by a clock behind the turn that
    set it aside (the injected clock put back, a group's own clock), every pass asked the shard for a maintenance
    turn that expired nothing (``due`` stops at a head not due), until the clock caught up again."""
    ledger = _ledger_with_orders_due_first(plain=0)
    assert ledger.due_first(AT, lambda rec: False) is None  # o0..o4 set aside at AT
    assert ledger._passed
    back = NOW + 5_000  # before any of them expires (NOW + 10_000)
    assert ledger.due(back) == []  # the pass it asks for takes nothing
    assert not ledger.housekeeping_due(back)  # was: True
    assert ledger.housekeeping_due(AT)
    assert sorted(ledger.due(AT)) == [f"o{n}" for n in range(PASSED)]
