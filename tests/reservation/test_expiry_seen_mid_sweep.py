"""A due hold is seen by the checks made outside a shard's turn while a sweep of stale expiry entries is part-way (R3).

The sweep (``Ledger.expiry_sweep``) sets the expiry queue aside and goes a slice at a time, other tasks running
between slices. Those that asked the ledger meanwhile found its queue empty: the check made before a Reserve's turn
(``Ledger.due_first``, ``IdGuard._room_in_turn``) found no due hold for the turn to expire, and a new id at a home
at ``max_live_reservations_per_shard`` was refused CAPACITY_REACHED while a hold there was past its TTL — one its
turn, once the sweep had ended, expired before deciding the Reserve (R2, R3); the housekeeping pass asked
(``Ledger.housekeeping_due``) skipped the shard's expiry for that pass."""

from __future__ import annotations

import pytest

from reservation import Ledger, Reservation, release, reserve
from reservation import _expiry as expiry_module
from reservation import _ledger as ledger_module
from reservation._expiry import EXPIRY_SLACK
from tests.reservation.helpers import LIMITS, cmd, ledger_with

NOW = 10_000
LATER = NOW + 5_000
SLICE = 100
BOUND = 8
WALK = (EXPIRY_SLACK + 2 * SLICE) // 2 - 1


def _swept_soon(stale_ttl: int = 60, due_ttl: int = 1) -> Ledger:
    """A ledger whose expiry queue holds enough stale entries (holds released) to be swept, and one due hold."""
    ledger = ledger_with({("A", "S1"): 10_000})
    for n in range(EXPIRY_SLACK + 2 * SLICE):
        reserve(ledger, cmd(f"gone-{n}", ("A", "S1", 1), ttl=stale_ttl), NOW)
        release(ledger, f"gone-{n}", (), "", NOW, LIMITS)
        ledger.commit(NOW)
    reserve(ledger, cmd("due", ("A", "S1", 1), ttl=due_ttl), NOW)
    ledger.commit(NOW)
    return ledger


def _not_order(rec: Reservation) -> bool:
    return not rec.is_order


def test_a_due_hold_is_found_by_the_check_before_a_turn_while_a_sweep_is_part_way_R3() -> None:
    ledger = _swept_soon()
    sweep = ledger.expiry_sweep(SLICE)
    next(sweep)  # between two slices: other tasks run here (``tasks.in_turns``)
    found = ledger.due_first(LATER, _not_order)
    assert found is not None and found.reservation_id == "due"
    assert ledger.housekeeping_due(LATER)
    assert ledger.due_first(NOW, _not_order) is None  # nothing due yet is found either
    assert sum(1 for _ in sweep) >= 1  # the rest of the sweep
    assert [rid for rid in ledger.due(LATER)] == ["due"]  # queued once, the stale entries gone


def test_the_checks_between_two_slices_walk_no_more_than_their_bound_set_aside_R8(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(expiry_module, "EXPIRY_ASIDE_PER_SLICE", WALK)
    ledger = _swept_soon(stale_ttl=1, due_ttl=2)  # every stale entry due before the hold: more than two walks' worth
    sweep = ledger.expiry_sweep(SLICE)
    next(sweep)
    assert ledger.due_first(LATER, _not_order) is None  # past the bound: nothing found until the next slice
    assert ledger.due_first(LATER, _not_order) is None  # the bound is the checks' together, not each one's
    next(sweep)
    assert ledger.due_first(LATER, _not_order) is None  # the walk goes on from where it stopped
    next(sweep)
    found = ledger.due_first(LATER, _not_order)
    assert found is not None and found.reservation_id == "due"
    assert sum(1 for _ in sweep) >= 1  # the rest of the sweep


def test_stale_entries_the_sweep_drops_hide_no_due_hold_from_the_check_R3(monkeypatch: pytest.MonkeyPatch) -> None:
    # The Reserve's turn waits behind the sweep, which drops every stale entry: the turn finds the hold at once.
    monkeypatch.setattr(ledger_module, "EXPIRY_STALE_PER_TURN", BOUND, raising=False)
    ledger = _swept_soon(stale_ttl=1, due_ttl=2)  # more stale entries due before the hold than the bound
    sweep = ledger.expiry_sweep(SLICE)
    next(sweep)
    found = ledger.due_first(LATER, _not_order)
    for _ in sweep:
        pass
    assert ledger.due_alone(LATER, _not_order, 16) == ["due"]  # the turn, after the sweep
    assert found is not None and found.reservation_id == "due"


def test_checks_again_between_slices_each_find_the_due_hold_R3(monkeypatch: pytest.MonkeyPatch) -> None:
    # One walk past the stale entries fits the bound, two do not: counted for each check, the next ones found none.
    monkeypatch.setattr(ledger_module, "EXPIRY_STALE_PER_TURN", EXPIRY_SLACK + 2 * SLICE + 1, raising=False)
    ledger = _swept_soon(stale_ttl=1, due_ttl=2)
    sweep = ledger.expiry_sweep(SLICE)
    next(sweep)
    found = [rec.reservation_id if (rec := ledger.due_first(LATER, _not_order)) else None for _ in range(3)]
    assert found == ["due"] * 3
    for _ in sweep:
        pass
    assert ledger.due_alone(LATER, _not_order, 16) == ["due"]


@pytest.mark.parametrize("stop", ["close", "drop"])
def test_a_sweep_stopped_part_way_leaves_nothing_set_aside_R3(stop: str) -> None:
    ledger = _swept_soon()
    sweep = ledger.expiry_sweep(SLICE)
    next(sweep)
    if stop == "close":  # cancelled (``tasks.in_turns``)
        sweep.close()
    else:  # let go without a close: finalised
        del sweep
    assert ledger._set_aside is None
    assert [rid for rid in ledger.due(LATER)] == ["due"]


def _by_itself(rec: Reservation) -> bool:
    """A hold its shard's turn expires alone: not one spanning shards (here, those named so)."""
    return not rec.reservation_id.startswith("spanning-")


@pytest.mark.parametrize("spanning", [BOUND - 2, BOUND, BOUND + 1])
def test_holds_a_check_mid_sweep_passed_over_are_not_counted_twice_against_the_turn_R3(
        monkeypatch: pytest.MonkeyPatch, spanning: int) -> None:
    # The check walks past the holds spanning shards in the queue set aside; the sweep queues them again, and the
    # Reserve's turn after it walks past them too. Counted by both against the batch's bound, the turn stopped short
    # of the hold the check had found (more than half the bound's worth before it): the Reserve the check let claim
    # its id refused CAPACITY_REACHED, a hold there past its TTL (R2) — the turn, checked or not, expires it.
    monkeypatch.setattr(ledger_module, "EXPIRY_STALE_PER_TURN", BOUND, raising=False)
    ledger = _swept_soon(stale_ttl=60, due_ttl=2)
    for n in range(spanning):  # due before the hold
        reserve(ledger, cmd(f"spanning-{n}", ("A", "S1", 1), ttl=1), NOW)
        ledger.commit(NOW)
    sweep = ledger.expiry_sweep(SLICE)
    next(sweep)
    found = [rec.reservation_id if (rec := ledger.due_first(LATER, _by_itself)) else None for _ in range(2)]
    for _ in sweep:
        pass
    turn = ledger.due_alone(LATER, _by_itself, 16)  # the Reserve's turn, after the sweep: the same batch
    expected = ["due"] if spanning <= BOUND else []  # past the bound the turn stops before it, and the check says so
    assert (found, turn) == (expected * 2 or [None, None], expected)


def test_a_check_mid_sweep_after_the_batch_walked_its_bound_finds_the_hold_the_turn_expires_R3(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # A check before the sweep walked the batch's bound's worth of stale entries: the next, mid-sweep, did not look
    # in the queue set aside at all, while the turn after the sweep (the same batch), the stale entries dropped,
    # finds the hold at the queue's head and expires it before deciding the Reserve (R2, R3).
    monkeypatch.setattr(ledger_module, "EXPIRY_STALE_PER_TURN", BOUND, raising=False)
    ledger = _swept_soon(stale_ttl=1, due_ttl=2)  # stale entries due before the hold, more than the bound
    assert ledger.due_first(LATER, _by_itself) is None  # the bound walked: as the turn now stops there
    sweep = ledger.expiry_sweep(SLICE)
    next(sweep)
    found = ledger.due_first(LATER, _by_itself)
    for _ in sweep:
        pass
    assert ledger.due_alone(LATER, _by_itself, 16) == ["due"]  # the Reserve's turn, after the sweep
    assert found is not None and found.reservation_id == "due"
