"""The checks made between a sweep's slices (``Ledger.due_first``) share one walk of the queue set aside: whatever
their order and their clocks (a check with an earlier ``now`` after one with a later), each finds the hold the turn
after the sweep would expire first, or none where none is due — and none changes what that turn expires (R2, R3)."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reservation import Ledger, Reservation, State, release, reserve
from reservation import _expiry as expiry_module
from reservation import _ledger as ledger_module
from tests.reservation.helpers import LIMITS, cmd, ledger_with

NOW = 10_000
SLICE = 4
HOLDS = st.lists(st.tuples(st.integers(1, 6), st.booleans()), min_size=1, max_size=12)
"""Each hold's TTL in seconds, and whether its shard's turn expires it alone (else passed over, as an order)."""
CHECKS = st.lists(st.tuples(st.integers(NOW, NOW + 7_000), st.booleans()), min_size=1, max_size=12)
"""Each check's clock, and whether the sweep runs a slice before it."""


def alone(rec: Reservation) -> bool:
    return not rec.reservation_id.startswith("order-")


def _ledger(holds: list[tuple[int, bool]], stale: int) -> Ledger:
    """``holds`` held, and ``stale`` holds released among them (their entries stale), due at every TTL."""
    ledger = ledger_with({("A", "S1"): 10_000})
    for n in range(stale):
        reserve(ledger, cmd(f"gone-{n}", ("A", "S1", 1), ttl=1 + n % 6), NOW)
        release(ledger, f"gone-{n}", (), "", NOW, LIMITS)
        ledger.commit(NOW)
    for n, (ttl, by_itself) in enumerate(holds):
        reserve(ledger, cmd(f"{'hold' if by_itself else 'order'}-{n}", ("A", "S1", 1), ttl=ttl), NOW)
        ledger.commit(NOW)
    return ledger


def _first_due(ledger: Ledger, now: int) -> str | None:
    """The hold the turn after the sweep expires first at ``now``: the earliest held past its TTL, ``alone``."""
    due = [(rec.expires_at, rid) for rid, rec in ledger.reservations.items()
           if rec.state == State.HELD and rec.expires_at <= now and alone(rec)]
    return min(due)[1] if due else None


@settings(max_examples=300, deadline=None, database=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(HOLDS, CHECKS)
def test_each_check_mid_sweep_finds_the_hold_the_turn_expires_first_R3(holds: list[tuple[int, bool]],
                                                                       checks: list[tuple[int, bool]]) -> None:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(expiry_module, "EXPIRY_SLACK", 0)
        patch.setattr(ledger_module, "EXPIRY_STALE_PER_TURN", 10_000)  # the bound is pinned elsewhere
        ledger = _ledger(holds, 2 * len(holds) + SLICE + 1)
        sweep = ledger.expiry_sweep(SLICE)
        next(sweep)
        for now, slice_first in checks:
            if slice_first and ledger._set_aside is not None:
                next(sweep, None)
            found = ledger.due_first(now, alone)
            assert (found and found.reservation_id) == _first_due(ledger, now), now
        for _ in sweep:
            pass
        last = NOW + 7_000
        expected = sorted((rec.expires_at, rid) for rid, rec in ledger.reservations.items()
                          if rec.state == State.HELD and alone(rec))
        assert ledger.due_alone(last, alone, 10_000) == [rid for _, rid in expected]  # each once


@settings(max_examples=300, deadline=None, database=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(HOLDS, st.lists(st.booleans(), min_size=1, max_size=6), st.integers(NOW, NOW + 7_000), st.integers(0, 4))
def test_the_checks_mid_sweep_answer_as_the_turn_after_it_decides_R3(holds: list[tuple[int, bool]],
                                                                    slices: list[bool], now: int, bound: int) -> None:
    """Under the batch's bound on holds passed over (``EXPIRY_STALE_PER_TURN``): each check finds the hold the
    Reserve's turn after the sweep (the same batch) expires first, or none where that turn expires none."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(expiry_module, "EXPIRY_SLACK", 0)
        patch.setattr(ledger_module, "EXPIRY_STALE_PER_TURN", bound)
        ledger = _ledger(holds, 2 * len(holds) + SLICE + 1)
        sweep = ledger.expiry_sweep(SLICE)
        next(sweep)
        found = []
        for slice_first in slices:
            if slice_first and ledger._set_aside is not None:
                next(sweep, None)
            rec = ledger.due_first(now, alone)
            found.append(rec and rec.reservation_id)
        for _ in sweep:
            pass
        turn = ledger.due_alone(now, alone, 10_000)
        assert found == [turn[0] if turn else None] * len(slices)
