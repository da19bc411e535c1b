"""Differential: ``Ledger.housekeeping_wanted``, which answers at once while nothing changed since it
last found nothing (every shard asks it every housekeeping pass), always answers what asking it in
full would: remembered facts to forget (E8), kept deltas to compact (E9), stale expiry entries (R3).
Generated sequences of facts that move stream time past grace, Reserves, confirms, releases, expiries
(``due``), requeued expiries, commits, rollbacks, sealed batches reverted (R7), the maintenance turn's
own steps and evictions, with the thresholds made small enough to be crossed."""

from __future__ import annotations

from unittest import mock

from hypothesis import given, settings
from hypothesis import strategies as st

from reservation import (
    DomainError,
    Fact,
    FactKind,
    Ledger,
    Limits,
    LineRequest,
    ReserveCommand,
    confirm,
    expire,
    release,
    reserve,
)
from reservation._dedupe import FactMemory
from reservation._expiry import expiry_stale

GRACE_MS = 1_000
LIMITS = Limits(fact_grace_ms=GRACE_MS, retention_ms=2_000)
SKUS = ["A", "B"]
LOCS = ["S1", "S2"]


def full_answer(ledger: Ledger) -> bool:
    """``housekeeping_wanted`` asked in full, from its parts."""
    horizon = ledger.stream_time - ledger.limits.fact_grace_ms
    return ledger.memory.has_old(horizon) or ledger.histories.sweep_due(horizon) or \
        expiry_stale(len(ledger._expiry), ledger.live_reservations)


rid = st.sampled_from([f"r{i}" for i in range(6)])
position = st.tuples(st.sampled_from(SKUS), st.sampled_from(LOCS))
action = st.one_of(
    st.tuples(st.just("fact"), st.sampled_from([FactKind.RECEIPT, FactKind.SALE, FactKind.COUNT]), position,
              st.integers(1, 9), st.integers(-300, 900)),
    st.tuples(st.just("reserve"), rid, position, st.integers(1, 5)),
    st.tuples(st.just("confirm"), rid),
    st.tuples(st.just("release"), rid),
    st.tuples(st.just("tick"), st.integers(0, 3_000)),
    st.tuples(st.just("requeue"), rid),
    st.tuples(st.just("end"), st.sampled_from(["commit", "rollback", "revert"])),
    st.tuples(st.just("maintain")),
    st.tuples(st.just("evict")),
)


def step(ledger: Ledger, act: tuple, now: int, n: int) -> None:  # type: ignore[type-arg]
    kind = act[0]
    try:
        if kind == "fact":
            _, fkind, (sku, loc), qty, dt = act
            ledger.record_fact(Fact(f"e{n}", "pos", fkind, sku, loc, qty, max(1, ledger.stream_time + dt)))
        elif kind == "reserve":
            _, r, (sku, loc), qty = act
            reserve(ledger, ReserveCommand(r, "o", "web", (LineRequest(sku, loc, qty),), 1_500, False), now)
        elif kind == "confirm":
            confirm(ledger, act[1], now)
        elif kind == "release":
            release(ledger, act[1], (), "", now, LIMITS)
        elif kind == "tick":
            for r in ledger.due(now):
                expire(ledger, r, now)
        elif kind == "requeue":
            ledger.requeue_expiry(now + 1_000, act[1])
    except DomainError:
        pass
    if kind == "end":
        if act[1] == "commit":
            ledger.commit(now)
        elif act[1] == "rollback":
            ledger.rollback()
        else:
            _, undo, _ = ledger.seal(now)
            ledger.revert(undo)
    elif kind == "maintain":  # a maintenance turn's steps, between batches
        ledger.commit(now)
        ledger.forget_old_facts()
        ledger.compact_some()
        ledger.sweep_expiry()
    elif kind == "evict":
        ledger.evict(now)


@settings(max_examples=400, deadline=None)
@given(steps=st.lists(action, max_size=80))
def test_housekeeping_wanted_answers_as_in_full_after_any_change_E8_E9_R3(steps: list) -> None:  # type: ignore[type-arg]
    with mock.patch("reservation._dedupe.SEAL_AT", 3), mock.patch("reservation._expiry.EXPIRY_SLACK", 2):
        ledger = Ledger(0, LIMITS)
        now = 10_000
        for n, act in enumerate(steps):
            if act[0] == "tick":
                now += act[1]
            step(ledger, act, now, n)
            assert ledger.housekeeping_wanted() == full_answer(ledger), (n, act)
            assert ledger.housekeeping_wanted() == full_answer(ledger), (n, act)  # asked again, unchanged


def test_a_quiet_ledger_answers_without_asking_its_parts_again() -> None:
    """The point of it: nothing changed, nothing is looked at again (a batch or a requeued expiry is)."""
    ledger = Ledger(0, Limits())
    ledger.record_fact(Fact("e1", "pos", FactKind.RECEIPT, "A", "S1", 5, 1_000))
    ledger.commit(10_000)
    with mock.patch.object(FactMemory, "has_old", autospec=True, return_value=False) as has_old:
        assert not ledger.housekeeping_wanted()
        assert not ledger.housekeeping_wanted()
        assert has_old.call_count == 1
        ledger.requeue_expiry(20_000, "r1")
        assert not ledger.housekeeping_wanted()
        assert has_old.call_count == 2
        ledger.record_fact(Fact("e2", "pos", FactKind.RECEIPT, "A", "S1", 5, 2_000))
        ledger.commit(11_000)
        assert not ledger.housekeeping_wanted()
        assert has_old.call_count == 3
