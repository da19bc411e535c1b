"""Event-time folding of facts (E1-E5, E8, E9) and replay equals live (E10)."""

from __future__ import annotations

import msgspec
import pytest

from reservation import Fact, FactKind, FactOutcome, Ledger, LedgerSnapshot, Limits, _dedupe

S, C, R, A = FactKind.SALE, FactKind.COUNT, FactKind.RECEIPT, FactKind.ADJUST


def f(eid: str, kind: int, qty: int, t: int, sku: str = "A", loc: str = "S1") -> Fact:
    return Fact(eid, "pos", kind, sku, loc, qty, t)


def folded(*facts: Fact, grace_ms: int = 24 * 3_600_000) -> Ledger:
    ledger = Ledger(0, Limits(fact_grace_ms=grace_ms))
    for fact in facts:
        ledger.record_fact(fact)
    return ledger


def on_hand(ledger: Ledger) -> int:
    return ledger.quantities("A", "S1").on_hand


def test_count_includes_deltas_stamped_at_or_before_it_E1_E2() -> None:
    ledger = folded(f("1", R, 10, 100), f("2", S, 3, 200), f("3", C, 4, 200), f("4", S, 1, 300))
    assert on_hand(ledger) == 3  # count 4 at t=200 already includes the sale at t=200; then -1


def test_late_delta_before_latest_count_is_absorbed_E4() -> None:
    ledger = folded(f("c", C, 10, 500))
    assert ledger.record_fact(f("s", S, 2, 400))[0] == FactOutcome.ABSORBED
    assert on_hand(ledger) == 10


def test_older_count_changes_nothing_E5() -> None:
    ledger = folded(f("c2", C, 10, 500))
    assert ledger.record_fact(f("c1", C, 99, 400))[0] == FactOutcome.ABSORBED
    assert on_hand(ledger) == 10


def test_newer_count_replaces_earlier_deltas_but_keeps_later_ones_E2() -> None:
    ledger = folded(f("r", R, 10, 100), f("s", S, 2, 300), f("c", C, 7, 200))  # the count sits between them
    assert on_hand(ledger) == 5
    history = ledger.history("A", "S1")
    assert history is not None and history.count_key == (200, 1, "pos", "c") and history.count_qty == 7
    assert history.deltas == [(300, "pos", -2)]  # the receipt is in the count (E2)


def test_undo_restores_history() -> None:
    ledger = folded(f("r", R, 10, 100))
    ledger.commit(0)
    before = ledger.history("A", "S1")
    ledger.record_fact(f("c", C, 3, 200))
    ledger.rollback()
    assert on_hand(ledger) == 10 and ledger.history("A", "S1") == before
    assert before is not None and before.count_key is None
    assert ledger.record_fact(f("c", C, 3, 200))[0] == FactOutcome.APPLIED  # E8 forgot the undone count


def test_compaction_keeps_on_hand_E9() -> None:
    ledger = folded(*(f(str(i), R, 1, 100 + i) for i in range(10)), grace_ms=4)  # stream time 109
    ledger.commit(0)
    assert ledger.housekeeping_wanted() and len(ledger.histories.pool) == 10
    assert ledger.compact_some(limit=1) == 10  # horizon 105; one position, all its deltas looked at
    history = ledger.history("A", "S1")
    assert on_hand(ledger) == 10 and history is not None and len(history.deltas) == 5
    assert len(ledger.histories.pool) == 5  # the five before the horizon are freed
    ledger.forget_old_facts()
    assert not ledger.housekeeping_wanted()  # the next pass waits for the horizon to move grace/16
    assert ledger.record_fact(f("c", C, 2, 106))[0] == FactOutcome.APPLIED
    assert on_hand(ledger) == 5  # the count at 106, then the receipts at 107, 108, 109


def test_compaction_looks_at_a_bounded_number_of_deltas_per_pass_E9() -> None:
    facts = [f(f"{i}-{j}", R, 1, 100 + j, sku=f"K{i}") for j in range(4) for i in range(10)]
    ledger = folded(*facts, grace_ms=2)  # stream time 103, horizon 101
    ledger.commit(0)
    looked = [ledger.compact_some(limit=7) for _ in range(6)]
    assert looked == [8, 8, 8, 8, 8, 0]  # two positions (4 deltas each) a call, until 7 deltas are looked at
    kept = [ledger.history(f"K{i}", "S1") for i in range(10)]
    assert all(h is not None and [d[0] for d in h.deltas] == [101, 102, 103] for h in kept)
    assert len(ledger.histories.pool) == 30
    assert all(ledger.quantities(f"K{i}", "S1").on_hand == 4 for i in range(10))


def test_a_superseded_count_is_still_known_by_its_identity_E8() -> None:
    ledger = folded(f("c1", C, 10, 100), f("c2", C, 20, 200))
    assert ledger.record_fact(f("c1", C, 10, 100))[0] == FactOutcome.DUPLICATE
    outcome, reason = ledger.record_fact(f("c1", C, 99, 300))  # a newer payload under an applied identity
    assert outcome == FactOutcome.QUARANTINED and "conflict" in reason and on_hand(ledger) == 20
    assert ledger.record_fact(f("c2", C, 20, 200))[0] == FactOutcome.DUPLICATE  # the latest, known by its columns
    assert ledger.record_fact(f("c2", R, 20, 200))[0] == FactOutcome.QUARANTINED  # same identity, other kind
    assert len(ledger.memory) == 1  # only c1: the latest count costs no entry


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


def test_dedupe_memory_is_bounded_by_the_grace_window_E8(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_dedupe, "SEAL_AT", 100)
    ledger = Ledger(0, Limits(fact_grace_ms=1000))
    for i in range(5000):
        ledger.record_fact(f(str(i), R, 1, 10_000 + i))
        if i % 100 == 0:
            ledger.commit(0)
            ledger.forget_old_facts()  # the shard does this between batches
    ledger.commit(0)
    ledger.forget_old_facts()
    # One grace window of facts (1,000 ms, one fact each), plus what waits for the next sweep (a
    # sixteenth of the window) and the open map (up to SEAL_AT or an eighth of the sealed rows).
    assert 1000 <= len(ledger.memory) <= 1000 + 1000 // 16 + max(100, 1100 // 8) + 1
    # What was forgotten is late now: a resend is quarantined, never applied twice (E6 + E8).
    assert ledger.record_fact(f("0", R, 1, 10_000))[0] == FactOutcome.QUARANTINED
    assert ledger.record_fact(f("4999", R, 1, 14_999))[0] == FactOutcome.DUPLICATE
    assert ledger.record_fact(f("4000", R, 1, 14_000))[0] == FactOutcome.DUPLICATE  # found in the sealed columns
    assert ledger.record_fact(f("4000", R, 2, 14_000))[0] == FactOutcome.QUARANTINED  # a conflict there too
    assert ledger.quantities("A", "S1").on_hand == 5000
    ledger.commit(0)  # the quarantines above
    restored = Ledger.restore(0, Limits(fact_grace_ms=1000), msgspec.msgpack.decode(
        msgspec.msgpack.encode(ledger.snapshot()), type=LedgerSnapshot))
    assert len(restored.memory) == len(ledger.memory)
    assert restored.record_fact(f("4000", R, 1, 14_000))[0] == FactOutcome.DUPLICATE


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
    assert list(ledger.store.items()) == [] and len(ledger.histories.pool) == 0
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
    ledger = folded(f("r", R, 10, 100))
    ledger.commit(0)
    ledger.record_fact(f("s", S, 2, 300))
    mark = ledger.mark()
    ledger.record_fact(f("r2", R, 5, 200))  # lands before the sale in event time, after it in arrival
    ledger.rollback_to(mark)
    history = ledger.history("A", "S1")
    assert on_hand(ledger) == 8 and history is not None and history.deltas == [(100, "pos", 10), (300, "pos", -2)]
    assert len(ledger.histories.pool) == 2
