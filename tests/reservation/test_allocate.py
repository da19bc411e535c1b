"""Reservation lines naming a location group: picking and splitting (R1, R2, R5), no I/O."""

from __future__ import annotations

import pytest

from reservation import AlreadyExists, GroupPolicy, Outcome, State, allocate, confirm, release, reserve
from reservation._operations import requested_lines
from tests.reservation.helpers import cmd, ledger_with

NOW = 10_000
GROUPS = {"stores": ("S1", "S2", "S3")}


def test_priority_takes_members_in_order_and_splits() -> None:
    stock = {"S1": 2, "S2": 5, "S3": 9}
    assert allocate(("S1", "S2", "S3"), 6, stock.__getitem__, "priority") == ([("S1", 2, 2), ("S2", 4, 5)], 16)


def test_most_available_takes_the_largest_first_and_may_not_split() -> None:
    stock = {"S1": 2, "S2": 5, "S3": 9}
    assert allocate(("S1", "S2", "S3"), 6, stock.__getitem__, "most_available") == ([("S3", 6, 9)], 16)
    assert allocate(("S1", "S2", "S3"), 12, stock.__getitem__, "most_available") == ([("S3", 9, 9), ("S2", 3, 5)], 16)


def test_a_group_that_cannot_give_everything_gives_nothing_and_oversold_members_count_zero() -> None:
    stock = {"S1": -4, "S2": 5, "S3": 1}
    assert allocate(("S1", "S2", "S3"), 7, stock.__getitem__, "priority") == ([], 6)


def test_group_line_is_split_over_stores_and_held_there() -> None:
    ledger = ledger_with({("A", "S1"): 2, ("A", "S2"): 3, ("A", "S3"): 10})
    rec, _ = reserve(ledger, cmd("r1", ("A", "stores", 4)), NOW, GroupPolicy(GROUPS, "priority"))
    assert rec.state == State.HELD
    assert [(ln.location, ln.granted, ln.group) for ln in rec.lines] == [("S1", 2, "stores"), ("S2", 2, "stores")]
    assert [ledger.quantities("A", s).reserved for s in ("S1", "S2", "S3")] == [2, 2, 0]
    confirmed = confirm(ledger, "r1", NOW + 1)
    assert [ledger.quantities("A", s).committed for s in ("S1", "S2")] == [2, 2]
    released = release(ledger, "r1", (), "", NOW + 2, ledger.limits)
    assert confirmed.state == State.CONFIRMED and released.state == State.RELEASED
    assert all(ledger.quantities("A", s).available == q for s, q in (("S1", 2), ("S2", 3), ("S3", 10)))


def test_group_line_and_plain_line_do_not_take_the_same_units_R1() -> None:
    ledger = ledger_with({("A", "S1"): 3, ("A", "S2"): 1})
    rec, _ = reserve(ledger, cmd("r1", ("A", "S1", 3), ("A", "stores", 2)), NOW, GroupPolicy(GROUPS, "priority"))
    assert rec.state == State.REJECTED  # S1's 3 units went to the plain line: the group has 1 left
    assert [(ln.location, ln.outcome) for ln in rec.lines] == [("S1", Outcome.NOT_ATTEMPTED),
                                                               ("stores", Outcome.INSUFFICIENT)]
    assert rec.lines[1].available == 1
    assert ledger.quantities("A", "S1").reserved == 0


@pytest.mark.parametrize("strategy", ["priority", "most_available"])
def test_a_group_line_before_a_plain_line_does_not_take_the_units_only_the_plain_line_can_use_R2(
        strategy: str) -> None:
    # S1 and S2 hold 2 each: the group line can come from S2, the plain line only from S1. Whatever
    # order the client wrote them in, the order fits and is granted; nothing is over-allocated.
    for lines in ((("A", "stores", 2), ("A", "S1", 2)), (("A", "S1", 2), ("A", "stores", 2))):
        ledger = ledger_with({("A", "S1"): 2, ("A", "S2"): 2})
        rec, _ = reserve(ledger, cmd("r1", *lines), NOW, GroupPolicy(GROUPS, strategy))
        assert rec.state == State.HELD, lines
        assert sorted((ln.location, ln.granted, ln.group) for ln in rec.lines) == [
            ("S1", 2, ""), ("S2", 2, "stores")], lines
        assert [ledger.quantities("A", s).available for s in ("S1", "S2")] == [0, 0]
        assert requested_lines(rec) == cmd("r1", *lines).lines  # R5: a retry still matches


def test_group_reservation_replays_and_refuses_different_content_R5() -> None:
    ledger = ledger_with({("A", "S1"): 2, ("A", "S2"): 3})
    policy = GroupPolicy(GROUPS, "priority")
    first, _ = reserve(ledger, cmd("r1", ("A", "stores", 4)), NOW, policy)
    again, replayed = reserve(ledger, cmd("r1", ("A", "stores", 4)), NOW + 5, policy)
    assert replayed and again == first
    with pytest.raises(AlreadyExists) as err:
        reserve(ledger, cmd("r1", ("A", "stores", 3)), NOW + 6, policy)
    assert err.value.field == "lines"


def test_a_member_named_twice_gives_its_stock_once_R2() -> None:
    """Defect: a group naming a location twice counted that location's stock twice: 8 of 5 units
    were held there (available -3, oversold)."""
    stock = {"S1": 5}
    assert allocate(("S1", "S1"), 8, stock.__getitem__, "priority") == ([], 5)
    assert allocate(("S1", "S1"), 5, stock.__getitem__, "most_available") == ([("S1", 5, 5)], 5)
