"""A shard started again with a longer ``fact_grace_ms`` (the runbook's answer to a till offline for
days) holds only what it kept under the shorter one: identities and kept deltas stamped before the
horizon it forgot at are gone. Facts stamped before that horizon stay late (E6) until stream time
moves the longer window past it — else a resend of one applied it twice (E8), and a count ordered
before a freed delta set on_hand without it (E2)."""

from __future__ import annotations

import msgspec
import numpy as np
import pytest

from reservation import CountRows, Fact, FactKind, FactOutcome, Ledger, LedgerSnapshot, Limits, _dedupe
from reservation._upkeep import NOTHING_FORGOTTEN

HOUR = 3_600_000
T = 1_800_000_000_000
SHORT, LONG = Limits(fact_grace_ms=HOUR), Limits(fact_grace_ms=3 * HOUR)
SALE = Fact("sale-1", "pos", FactKind.SALE, "A", "S1", 1, T, "")


def _forgot_then_restarted(monkeypatch: pytest.MonkeyPatch) -> Ledger:
    """A count of 10 and a sale at T applied under a one-hour grace, stream time moved two hours past
    them and the shard's upkeep run (the sale's identity forgotten, its delta freed), then the shard
    restored from its snapshot under a three-hour grace."""
    monkeypatch.setattr(_dedupe, "SEAL_AT", 1)  # the open map sealed at once: forgetting reaches it
    ledger = Ledger(0, SHORT)
    for fact in (Fact("count-1", "erp", FactKind.COUNT, "A", "S1", 10, T - 10, ""), SALE,
                 Fact("receipt-1", "wms", FactKind.RECEIPT, "B", "S1", 1, T + 2 * HOUR, "")):
        assert ledger.record_fact(fact)[0] == FactOutcome.APPLIED
    ledger.commit(T + 2 * HOUR)
    assert ledger.forget_old_facts() == 1 and ledger.compact_some() > 0
    assert ledger.record_fact(SALE)[0] == FactOutcome.QUARANTINED  # late under the grace it ran with
    ledger.commit(T + 2 * HOUR)
    data = msgspec.msgpack.encode(ledger.snapshot())
    restored = Ledger.restore(0, LONG, msgspec.msgpack.decode(data, type=LedgerSnapshot))
    assert restored.quantities("A", "S1").on_hand == 9
    return restored


def test_a_resend_of_a_fact_forgotten_under_a_shorter_grace_is_late_not_applied_again_E8(
        monkeypatch: pytest.MonkeyPatch) -> None:
    ledger = _forgot_then_restarted(monkeypatch)
    outcome, reason = ledger.record_fact(SALE)
    assert (outcome, reason.startswith("late")) == (FactOutcome.QUARANTINED, True)
    assert ledger.quantities("A", "S1").on_hand == 9


def test_a_count_ordered_before_a_freed_delta_is_late_not_folded_without_it_E2(
        monkeypatch: pytest.MonkeyPatch) -> None:
    ledger = _forgot_then_restarted(monkeypatch)
    recount = Fact("count-2", "erp", FactKind.COUNT, "A", "S1", 10, T - 5, "")  # the sale at T comes after it
    assert ledger.record_fact(recount)[0] == FactOutcome.QUARANTINED
    assert ledger.quantities("A", "S1").on_hand == 9


def test_a_loaded_count_before_the_horizon_forgotten_is_late_as_record_events_has_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    ledger = _forgot_then_restarted(monkeypatch)
    block = CountRows("erp", ["A"], ["S1"], np.zeros(1, dtype=np.uint32), np.zeros(1, dtype=np.uint32),
                      np.array([10], dtype=np.int64), np.array([T - 5], dtype=np.int64))
    outcomes, reasons = ledger.load_counts(block)
    assert (int(outcomes[0]), reasons[0].startswith("late")) == (FactOutcome.QUARANTINED, True)
    assert ledger.quantities("A", "S1").on_hand == 9


def test_the_longer_grace_covers_what_comes_after_the_horizon_forgotten(monkeypatch: pytest.MonkeyPatch) -> None:
    ledger = _forgot_then_restarted(monkeypatch)
    older = Fact("sale-2", "pos", FactKind.SALE, "A", "S1", 1, T + HOUR + 1, "")  # late under one hour, not three
    assert ledger.record_fact(older)[0] == FactOutcome.APPLIED


def test_a_snapshot_written_before_the_horizon_was_kept_restores_without_one() -> None:
    ledger = Ledger(0, SHORT)
    ledger.record_fact(SALE)
    ledger.commit(T)
    fields = msgspec.msgpack.decode(msgspec.msgpack.encode(ledger.snapshot()))
    older = msgspec.msgpack.encode(fields[:-1])  # the layout before ``forgotten_before``
    restored = Ledger.restore(0, SHORT, msgspec.msgpack.decode(older, type=LedgerSnapshot))
    assert restored.forgotten_before == NOTHING_FORGOTTEN
    assert restored.record_fact(SALE)[0] == FactOutcome.DUPLICATE
