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
from reservation import _ledger as ledger_module
from reservation._expiry import EXPIRY_SLACK
from tests.reservation.helpers import LIMITS, cmd, ledger_with

NOW = 10_000
LATER = NOW + 5_000
SLICE = 100
BOUND = 8


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


def test_the_check_walks_no_more_than_its_bound_of_stale_entries_set_aside_R8(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ledger_module, "EXPIRY_STALE_PER_TURN", BOUND, raising=False)
    ledger = _swept_soon(stale_ttl=1, due_ttl=2)  # every stale entry due before the hold
    sweep = ledger.expiry_sweep(SLICE)
    next(sweep)
    assert ledger.due_first(LATER, _not_order) is None  # past the bound: the turn's walk stops there too
    for _ in sweep:
        pass
    found = ledger.due_first(LATER, _not_order)  # the stale entries swept: found at once
    assert found is not None and found.reservation_id == "due"
