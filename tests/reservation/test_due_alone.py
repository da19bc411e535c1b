"""``Ledger.due_alone``: the holds a Reserve's turn expires before it is decided (R2, R3) — due ones
from the head of the expiry queue, up to the first this ledger cannot expire by itself."""

from __future__ import annotations

from reservation import State, expire, reserve
from reservation._expiry import take_due
from tests.reservation.helpers import cmd, ledger_with

NOW = 10_000


def test_due_holds_from_the_head_past_those_not_alone_which_stay_queued_R2_R3() -> None:
    ledger = ledger_with({("A", "S1"): 10})
    reserve(ledger, cmd("first", ("A", "S1", 1), ttl=10), NOW)
    reserve(ledger, cmd("spanning", ("A", "S1", 1), ttl=20), NOW)
    reserve(ledger, cmd("after", ("A", "S1", 1), ttl=30), NOW)
    reserve(ledger, cmd("later", ("A", "S1", 1), ttl=60), NOW)
    at = NOW + 30_000
    assert ledger.expiry_due(at) and not ledger.expiry_due(NOW + 9_999)
    # Was ["first"]: "after", due behind a hold the turn cannot expire, kept its units till the next pass.
    assert ledger.due_alone(at, lambda rec: rec.reservation_id != "spanning", 100) == ["first", "after"]
    for rid in ("first", "after"):
        expire(ledger, rid, at)
    assert ledger.due(at) == ["spanning"]  # passed over, still queued: what the pass expires
    expire(ledger, "spanning", at)
    assert [ledger.reservation(rid).state for rid in ("spanning", "after", "later")] == [  # type: ignore[union-attr]
        State.EXPIRED, State.EXPIRED, State.HELD]


def test_holds_passed_over_count_against_the_walk_of_a_turn_R8() -> None:
    ledger = ledger_with({("A", "S1"): 10})
    for i in range(4):
        reserve(ledger, cmd(f"o{i}", ("A", "S1", 1), ttl=10), NOW)
    reserve(ledger, cmd("plain", ("A", "S1", 1), ttl=20), NOW)
    ledger.commit(NOW)
    at = NOW + 20_000
    not_orders = lambda rec: not rec.reservation_id.startswith("o")  # noqa: E731
    assert take_due(ledger, at, 100, not_orders, 3) == ([], 3)  # the bound spent passing over o0..o2
    assert take_due(ledger, at, 100, not_orders, 4) == (["plain"], 1)  # o0..o2 set aside: o3 alone walked
    assert sorted(ledger.due(at)) == ["o0", "o1", "o2", "o3"]  # every one passed over still queued


def test_a_batch_taken_back_queues_its_holds_again() -> None:
    ledger = ledger_with({("A", "S1"): 10})
    reserve(ledger, cmd("r1", ("A", "S1", 1), ttl=10), NOW)
    ledger.commit(NOW)
    assert ledger.due_alone(NOW + 10_000, lambda rec: True, 100) == ["r1"]
    ledger.rollback()
    assert ledger.expiry_due(NOW + 10_000)
    assert ledger.due_alone(NOW + 10_000, lambda rec: True, 100) == ["r1"]


def test_the_limit_bounds_an_open_batch_all_its_reserves_together_R8() -> None:
    ledger = ledger_with({("A", "S1"): 10})
    for i in range(6):
        reserve(ledger, cmd(f"r{i}", ("A", "S1", 1), ttl=10), NOW)
    ledger.commit(NOW)
    at = NOW + 10_000
    assert ledger.due_alone(at, lambda rec: True, 2) == ["r0", "r1"]
    assert ledger.due_alone(at, lambda rec: True, 2) == []  # the same batch: its bound spent
    ledger.commit(at)
    assert ledger.due_alone(at, lambda rec: True, 2) == ["r2", "r3"]  # a batch of its own


def test_the_check_before_a_turn_finds_the_hold_the_turn_takes_first_R3() -> None:
    """``due_first`` (``IdGuard``'s check at a full shard) passes over what the turn passes over, leaving it queued."""
    ledger = ledger_with({("A", "S1"): 10})
    reserve(ledger, cmd("spanning", ("A", "S1", 1), ttl=10), NOW)
    reserve(ledger, cmd("after", ("A", "S1", 1), ttl=20), NOW)
    at = NOW + 20_000
    found = ledger.due_first(at, lambda rec: rec.reservation_id != "spanning")
    assert found is not None and found.reservation_id == "after"  # was: None (the head not alone)
    assert ledger.due_first(at, lambda rec: False) is None
    assert ledger.due(at) == ["spanning", "after"]  # both still queued
