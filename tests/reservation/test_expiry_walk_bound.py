"""The stale entries of the expiry queue one turn walks (R3, R8: bounded everything).

A hold confirmed, released or given another TTL leaves its (expires_at, id) entry queued; ``Ledger.due``
drops it once its time comes. Confirmed holds count as live, so the sweep (``_expiry.sweeping``) leaves
theirs: after a clock jump or a long pause every one of them came due together, and one turn of one
shard popped them all (a million took ~2.5 s: every shard, call and lease renewal waiting). A turn
drops at most ``EXPIRY_STALE_PER_TURN`` of them; the rest go at the next turns, and a hold due behind
them still expires, once."""

from __future__ import annotations

import math

import pytest

from reservation import Limits, confirm, expire, release, reserve
from reservation import _ledger as ledger_module
from reservation._ledger import Ledger
from tests.reservation.helpers import cmd, ledger_with

BOUND = 8
STALE = 3 * BOUND + 5
NOW = 10_000
AT = NOW + 3_600_000  # a jump: every entry due at once


@pytest.fixture(autouse=True)
def _small_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ledger_module, "EXPIRY_STALE_PER_TURN", BOUND, raising=False)


def _ledger_with_stale_entries() -> Ledger:
    """``first`` due before ``STALE`` stale entries (confirmed, or released), ``late`` due after them."""
    ledger = ledger_with({("A", "S1"): 1_000})
    reserve(ledger, cmd("first", ("A", "S1", 1), ttl=5), NOW)
    for n in range(STALE):
        reserve(ledger, cmd(f"s{n}", ("A", "S1", 1), ttl=10), NOW)
    reserve(ledger, cmd("late", ("A", "S1", 1), ttl=20), NOW)
    ledger.commit(NOW)
    for n in range(STALE):
        if n % 3:
            confirm(ledger, f"s{n}", NOW + 1)
        else:
            release(ledger, f"s{n}", (), "", NOW + 1, Limits())
    ledger.commit(NOW + 1)
    assert len(ledger._expiry) == STALE + 2
    return ledger


def test_a_housekeeping_turn_drops_at_most_the_bound_and_a_hold_behind_still_expires_once_R3() -> None:
    ledger = _ledger_with_stale_entries()
    expired: list[str] = []
    passes = 0
    while ledger.expiry_due(AT):
        passes += 1
        assert passes <= math.ceil(STALE / BOUND) + 1, "a due hold left behind the stale entries"
        before = len(ledger._expiry)
        due = ledger.due(AT, 100)
        assert before - len(ledger._expiry) - len(due) <= BOUND, "one turn walked past the bound"
        for rid in due:
            assert expire(ledger, rid, AT) is not None
        expired += due
        ledger.commit(AT)
    assert expired == ["first", "late"], "a due hold skipped, or expired twice"
    assert ledger.reservation("late").state.name == "EXPIRED"  # type: ignore[union-attr]
    assert ledger._expiry == []


def test_the_reserves_of_one_batch_share_the_bound_R2_R3() -> None:
    """A Reserve's turn expires its shard's due holds first (``due_alone``): the Reserves of one batch (a
    ReserveStream's) drop at most the bound together, as they take at most ``limit`` holds together."""
    ledger = _ledger_with_stale_entries()
    alone = lambda rec: True  # noqa: E731
    assert ledger.due_alone(AT, alone, 100) == ["first"]
    walked = STALE + 2 - len(ledger._expiry)
    assert walked <= BOUND + 1
    assert ledger.due_alone(AT, alone, 100) == [] and len(ledger._expiry) == STALE + 2 - walked, \
        "the same batch walked past its bound"
    expired = ["first"]
    expire(ledger, "first", AT)
    for _ in range(math.ceil(STALE / BOUND) + 1):
        ledger.commit(AT)  # a batch of its own
        before = len(ledger._expiry)
        due = ledger.due_alone(AT, alone, 100)
        assert before - len(ledger._expiry) - len(due) <= BOUND
        for rid in due:
            expire(ledger, rid, AT)
        expired += due
    assert expired == ["first", "late"] and ledger._expiry == []


def test_a_turn_taken_back_queues_its_hold_again_and_it_expires_once_R7() -> None:
    ledger = _ledger_with_stale_entries()
    taken: list[str] = []
    for _ in range(2 * (math.ceil(STALE / BOUND) + 1)):
        due = ledger.due(AT, 100)
        for rid in due:
            expire(ledger, rid, AT)
        if "late" in due and "late" not in taken:
            ledger.rollback()  # its append failed: "late" held again, its entry queued again
            taken.append("late")
            continue
        taken += due
        ledger.commit(AT)
    assert sorted(taken) == ["first", "late", "late"]  # the one taken back, then once for good
    assert ledger.reservation("late").state.name == "EXPIRED"  # type: ignore[union-attr]
    assert ledger._expiry == []


def test_the_checks_made_before_a_turn_share_its_bound_R8() -> None:
    """``due_first``: the hold due first, for the check a leased process makes before a Reserve's turn
    (``IdGuard``: claimed only where the turn expires one), once for each new id of a stream's batch. The
    stale entries it drops count against the next batch's bound, with its Reserves': counted per check, a
    batch of 1,000 ids walked up to 1,000 times the bound in one go."""
    ledger = _ledger_with_stale_entries()
    first = ledger.due_first(AT)
    assert first is not None and first.reservation_id == "first"
    expire(ledger, "first", AT)  # its entry stale now
    ledger.commit(AT)
    for _ in range(100):  # the checks of one batch's ids
        assert ledger.due_first(AT) is None
    assert len(ledger._expiry) == STALE + 2 - BOUND, "the checks walked past the bound together"
    assert ledger.due_alone(AT, lambda rec: True, 100) == [] and len(ledger._expiry) == STALE + 2 - BOUND, \
        "the turn after them walked past the bound"
    for _ in range(math.ceil(STALE / BOUND)):
        ledger.commit(AT)  # a batch of its own
        found = ledger.due_first(AT)
        if found is not None:
            break
    assert found is not None and found.reservation_id == "late", "the hold due behind them never found"
    assert ledger.due_first(AT) is found and ledger.due(AT, 100) == ["late"]
