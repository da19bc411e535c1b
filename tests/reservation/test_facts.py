"""Event-time folding of facts (E1-E5, E8, E9) and replay equals live (E10)."""

from __future__ import annotations

import msgspec

from reservation import Fact, FactKind, FactOutcome, Ledger, LedgerSnapshot, Limits, PositionHistory
from reservation._undo import run_undo

S, C, R, A = FactKind.SALE, FactKind.COUNT, FactKind.RECEIPT, FactKind.ADJUST


def f(eid: str, kind: int, qty: int, t: int, sku: str = "A", loc: str = "S1") -> Fact:
    return Fact(eid, "pos", kind, sku, loc, qty, t)


def test_count_includes_deltas_stamped_at_or_before_it_E1_E2() -> None:
    h = PositionHistory()
    for fact in (f("1", R, 10, 100), f("2", S, 3, 200), f("3", C, 4, 200), f("4", S, 1, 300)):
        h.fold(fact)
    assert h.on_hand() == 3  # count 4 at t=200 already includes the sale at t=200; then -1


def test_late_delta_before_latest_count_is_absorbed_E4() -> None:
    h = PositionHistory()
    h.fold(f("c", C, 10, 500))
    outcome, delta, _ = h.fold(f("s", S, 2, 400))
    assert (outcome, delta, h.on_hand()) == (FactOutcome.ABSORBED, 0, 10)


def test_older_count_changes_nothing_E5() -> None:
    h = PositionHistory()
    h.fold(f("c2", C, 10, 500))
    outcome, _, _ = h.fold(f("c1", C, 99, 400))
    assert outcome == FactOutcome.ABSORBED and h.on_hand() == 10


def test_newer_count_replaces_earlier_deltas_but_keeps_later_ones_E2() -> None:
    h = PositionHistory()
    h.fold(f("r", R, 10, 100))
    h.fold(f("s", S, 2, 300))
    h.fold(f("c", C, 7, 200))  # arrives late, sits between the receipt and the sale
    assert h.on_hand() == 5


def test_undo_restores_history() -> None:
    h = PositionHistory()
    h.fold(f("r", R, 10, 100))
    _, _, undo = h.fold(f("c", C, 3, 200))
    assert undo is not None
    run_undo(undo)
    assert h.on_hand() == 10 and h.count_key is None


def test_compaction_keeps_on_hand_E9() -> None:
    h = PositionHistory()
    for i in range(10):
        h.fold(f(str(i), R, 1, 100 + i))
    h.compact(105)
    assert h.on_hand() == 10 and len(h.delta_keys) == 5


def test_duplicates_and_conflicts_E8() -> None:
    ledger = Ledger(0, Limits())
    assert ledger.record_fact(f("1", R, 5, 100))[0] == FactOutcome.APPLIED
    assert ledger.record_fact(f("1", R, 5, 100))[0] == FactOutcome.DUPLICATE
    outcome, reason = ledger.record_fact(f("1", R, 6, 100))
    assert outcome == FactOutcome.QUARANTINED and "conflict" in reason
    assert ledger.quantities("A", "S1").on_hand == 5


def test_late_fact_is_quarantined_with_its_reason_E6() -> None:
    limits = Limits(fact_grace_ms=1000)
    ledger = Ledger(0, limits)
    ledger.record_fact(f("1", R, 5, 10_000))
    outcome, reason = ledger.record_fact(f("2", S, 1, 8_999))
    assert outcome == FactOutcome.QUARANTINED and reason.startswith("late")
    assert ledger.quantities("A", "S1").on_hand == 5


def test_dedupe_memory_is_bounded_by_the_grace_window_E8() -> None:
    ledger = Ledger(0, Limits(fact_grace_ms=1000))
    for i in range(5000):
        ledger.record_fact(f(str(i), R, 1, 10_000 + i))
        if i % 100 == 0:
            ledger.commit(0)
            ledger.forget_old_facts()  # the shard does this between batches
    ledger.commit(0)
    ledger.forget_old_facts()
    assert len(ledger._seen) <= 1001
    # What was forgotten is late now: a resend is quarantined, never applied twice (E6 + E8).
    assert ledger.record_fact(f("0", R, 1, 10_000))[0] == FactOutcome.QUARANTINED
    assert ledger.record_fact(f("4999", R, 1, 14_999))[0] == FactOutcome.DUPLICATE


def test_an_undone_batch_keeps_what_dedupe_knew_before_it_E8() -> None:
    ledger = Ledger(0, Limits(fact_grace_ms=1000))
    ledger.record_fact(f("a", R, 1, 10_000))
    ledger.commit(0)
    ledger.record_fact(f("b", R, 1, 20_000))  # would move the horizon past "a"
    ledger.rollback()
    assert ledger.record_fact(f("a", R, 1, 10_000))[0] == FactOutcome.DUPLICATE
    assert ledger.quantities("A", "S1").on_hand == 1


def test_replay_and_snapshot_equal_live_E10() -> None:
    live = Ledger(0, Limits())
    facts = [f("1", R, 10, 100), f("2", S, 3, 300), f("3", C, 8, 200), f("4", A, -1, 400, loc="S2")]
    entries = []
    for fact in facts:
        live.record_fact(fact)
        entries.append(live.commit(1000))
    replayed = Ledger(0, Limits())
    for entry in entries:
        replayed.replay(entry)
    restored = Ledger.restore(0, Limits(), msgspec.msgpack.decode(msgspec.msgpack.encode(live.snapshot()),
                                                                  type=LedgerSnapshot))
    for ledger in (replayed, restored):
        assert list(ledger.store.items()) == list(live.store.items())
    assert live.quantities("A", "S1").on_hand == 5


def test_a_rolled_back_fact_leaves_no_position_behind_E10() -> None:
    """Replay never sees a fact whose append failed: memory must not keep an empty position for it."""
    from reservation import Fact, FactKind, Ledger, Limits

    ledger = Ledger(0, Limits())
    ledger.record_fact(Fact("f1", "pos", FactKind.RECEIPT, "A", "L1", 5, 1_000))
    ledger.rollback()
    assert list(ledger.store.items()) == [] and ledger.histories == {}
    assert not ledger.store.exists("A", "L1")


def test_default_safety_stock_is_logged_with_the_first_fact_of_a_position_Q4_E10() -> None:
    from reservation import Fact, FactKind, Ledger, Limits

    ledger = Ledger(0, Limits())
    ledger.safety_defaults = {"S1": 2}
    ledger.record_fact(Fact("f1", "pos", FactKind.RECEIPT, "A", "S1", 5, 1_000))
    ledger.record_fact(Fact("f2", "pos", FactKind.RECEIPT, "A", "DC", 5, 1_000))
    entry = ledger.commit(2_000)
    assert ledger.quantities("A", "S1").available == 3 and ledger.quantities("A", "DC").available == 5
    ledger.set_safety_stock("A", "S1", 0)  # an explicit setting wins; a later fact does not reapply the default
    ledger.record_fact(Fact("f3", "pos", FactKind.SALE, "A", "S1", 1, 1_001))
    later = ledger.commit(3_000)
    assert ledger.quantities("A", "S1").safety_stock == 0
    replayed = Ledger(0, Limits())  # no defaults configured: the log alone reproduces them (E10)
    replayed.replay(entry)
    replayed.replay(later)
    assert sorted(replayed.store.items()) == sorted(ledger.store.items())
    ledger.record_fact(Fact("f4", "pos", FactKind.RECEIPT, "B", "S1", 1, 1_002))
    ledger.rollback()
    assert not ledger.store.exists("B", "S1")


def test_undo_of_a_delta_removes_only_that_delta() -> None:
    h = PositionHistory()
    h.fold(f("r", R, 10, 100))
    _, _, undo = h.fold(f("s", S, 2, 300))
    h.fold(f("r2", R, 5, 200))  # lands before the sale in event time, after it in arrival
    assert undo is not None
    run_undo(undo)
    assert h.on_hand() == 15 and len(h.delta_keys) == 2
