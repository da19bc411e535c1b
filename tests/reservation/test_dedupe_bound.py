"""``max_dedupe_entries_per_shard``: E8's memory stays under a named bound. Past it a new fact is
quarantined (``capacity: ...``, never dropped silently) and nothing inside the grace window is
forgotten early (a resend would apply twice); the decision is logged once, so a replay reaches the
state the live ledger had whatever bound the replaying ledger is given (E10)."""

from __future__ import annotations

import msgspec
import numpy as np
import pytest

from reservation import Fact, FactKind, FactOutcome, Ledger, LedgerSnapshot, Limits, _dedupe
from reservation._bulk import CountRows
from reservation._events import LogEntry
from reservation._limits import CAPACITY_QUARANTINE, DEDUPE_LIMIT

T = 1_700_000_000_000
HOUR = 3_600_000
BOUND = 5


def _sale(i: int, sku: str = "A") -> Fact:
    return Fact(f"e{i}", "pos", FactKind.SALE, sku, "L1", 1, T + i)


def _live(bound: int) -> tuple[Ledger, list[tuple[FactOutcome, str]], list[LogEntry]]:
    """A receipt then sales of distinct ids over three SKUs: the memory fills at ``bound``."""
    ledger = Ledger(0, Limits(max_dedupe_entries_per_shard=bound))
    outcomes = [ledger.record_fact(Fact("r", "wms", FactKind.RECEIPT, "A", "L1", 100, T))]
    outcomes += [ledger.record_fact(_sale(i, f"S{i % 3}")) for i in range(1, 9)]
    return ledger, outcomes, [ledger.commit(T + 100)]


def _held(ledger: Ledger) -> dict[str, int]:
    return {sku: ledger.quantities(sku, "L1").on_hand for sku in ("A", "S0", "S1", "S2")}


def test_new_facts_past_the_bound_are_quarantined_and_resends_of_remembered_ones_stay_duplicates() -> None:
    ledger, outcomes, _ = _live(BOUND)
    assert [o for o, _ in outcomes] == [FactOutcome.APPLIED] * BOUND + [FactOutcome.QUARANTINED] * 4
    reasons = {r for _, r in outcomes[BOUND:]}
    assert reasons == {f"{CAPACITY_QUARANTINE}: shard 0 remembers {BOUND} fact identities for dedupe "
                       f"(limit {DEDUPE_LIMIT} = {BOUND})"}
    assert len(ledger.memory) == BOUND
    assert _held(ledger) == {"A": 100, "S0": -1, "S1": -2, "S2": -1}  # sales 1..4 only
    # A resend of a fact remembered is still known (E8): never applied twice, even at the bound.
    assert [ledger.record_fact(_sale(i, f"S{i % 3}"))[0] for i in range(1, 5)] == [FactOutcome.DUPLICATE] * 4
    assert ledger.record_fact(_sale(8, "S2"))[0] == FactOutcome.QUARANTINED  # refused again, not dropped
    assert len(ledger.memory) == BOUND and not ledger.open_events[1:]


def test_nothing_inside_the_grace_window_is_forgotten_to_make_room() -> None:
    ledger, _, _ = _live(BOUND)
    assert ledger.forget_old_facts() == 0  # every identity is within the grace window: kept
    assert len(ledger.memory) == BOUND
    assert ledger.record_fact(_sale(1, "S1"))[0] == FactOutcome.DUPLICATE


def test_forgetting_past_the_grace_window_frees_room(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_dedupe, "SEAL_AT", 1)  # the sealed columns (the open map: the test below)
    ledger = Ledger(0, Limits(max_dedupe_entries_per_shard=2, fact_grace_ms=HOUR))
    assert ledger.record_fact(_sale(0))[0] == FactOutcome.APPLIED
    assert ledger.record_fact(_sale(1, "B"))[0] == FactOutcome.APPLIED
    ledger.commit(T)
    ledger.stream_time = T + 2 * HOUR  # as a fact stamped then would have moved it
    assert ledger.forget_old_facts() == 2 and len(ledger.memory) == 0
    assert ledger.record_fact(_sale(2 * HOUR + 1))[0] == FactOutcome.APPLIED


def test_identities_past_the_grace_window_are_forgotten_before_they_are_sealed_E8() -> None:
    """E8 remembers an identity for the grace window plus at most a sixteenth of it. Only sealed ones were
    forgotten, and the open map is sealed at ``SEAL_AT`` (16,384) identities: under a bound below that, the
    memory filled with facts long past the window and never emptied, every new fact after it quarantined
    ``capacity`` for good (at the bound no fact applies, so stream time stands still)."""
    ledger = Ledger(0, Limits(max_dedupe_entries_per_shard=2, fact_grace_ms=HOUR))
    assert ledger.record_fact(_sale(0))[0] == FactOutcome.APPLIED
    assert ledger.record_fact(_sale(2 * HOUR, "B"))[0] == FactOutcome.APPLIED  # the first is now past the window
    ledger.commit(T + 2 * HOUR)
    restored = _copy(ledger)  # the open map from its snapshot: forgotten alike
    assert ledger.memory.has_old(ledger.stream_time - HOUR)  # the shard's maintenance turn is asked for it
    assert ledger.forget_old_facts() == 1 and len(ledger.memory) == 1
    assert restored.forget_old_facts() == 1 and restored.memory.open == ledger.memory.open
    assert not ledger.memory.has_old(ledger.stream_time - HOUR)  # nothing more to look for: no turn asked
    assert ledger.record_fact(_sale(2 * HOUR + 1, "C")) == (FactOutcome.APPLIED, "")
    outcome, reason = ledger.record_fact(_sale(0))  # a resend of the one forgotten: late (E6), never applied twice
    assert outcome == FactOutcome.QUARANTINED and reason.startswith("late")
    assert ledger.record_fact(_sale(2 * HOUR, "B"))[0] == FactOutcome.DUPLICATE  # inside the window: remembered
    assert _held(ledger) == {"A": -1, "S0": 0, "S1": 0, "S2": 0} and ledger.quantities("B", "L1").on_hand == -1


@pytest.mark.parametrize("replay_bound", [1, BOUND, 1_000_000])
def test_a_replay_reaches_the_live_state_whatever_its_bound_E10(replay_bound: int) -> None:
    ledger, _, log = _live(BOUND)
    again = Ledger(0, Limits(max_dedupe_entries_per_shard=replay_bound))
    for entry in log:
        again.replay(entry)
    assert _held(again) == _held(ledger) and len(again.memory) == len(ledger.memory) == BOUND
    data = msgspec.msgpack.encode(ledger.snapshot())
    restored = Ledger.restore(0, Limits(max_dedupe_entries_per_shard=replay_bound),
                              msgspec.msgpack.decode(data, type=LedgerSnapshot))
    assert _held(restored) == _held(ledger) and len(restored.memory) == BOUND


def _extract(skus: list[str], at: int, on_hand: int) -> CountRows:
    n = len(skus)
    return CountRows("erp", skus, ["L1"], np.arange(n, dtype=np.uint32), np.zeros(n, dtype=np.uint32),
                     np.full(n, on_hand, dtype=np.int64), np.full(n, at, dtype=np.int64))


def _copy(ledger: Ledger) -> Ledger:
    data = msgspec.msgpack.encode(ledger.snapshot())
    return Ledger.restore(0, ledger.limits, msgspec.msgpack.decode(data, type=LedgerSnapshot))


@pytest.mark.parametrize(("filled", "applied"), [(0, [True] * 7), (1, [True] * 6 + [False]),
                                                 (3, [True] * 4 + [False] * 3)])
def test_a_load_near_the_bound_gives_each_row_the_outcome_record_fact_gives_it(filled: int,
                                                                              applied: list[bool]) -> None:
    """A resync supersedes every count (an E8 entry each): in one event only where all of them fit,
    else row by row, quarantined once the memory is full — as RecordEvents would decide them."""
    skus = [f"K{i}" for i in range(6)]
    ledger = Ledger(0, Limits(max_dedupe_entries_per_shard=7))
    ledger.load_counts(_extract(skus, T, 10))  # made at once: no entry (their latest counts)
    for i in range(filled):
        ledger.record_fact(Fact(f"f{i}", "pos", FactKind.RECEIPT, f"X{i}", "L1", 1, T + 1))
    ledger.commit(T + 1)
    one_by_one = _copy(ledger)
    block = _extract([*skus, "NEW"], T + HOUR, 20)
    outcomes, reasons = ledger.load_counts(block)
    expected = [one_by_one.record_fact(block.fact(i)) for i in range(len(block))]
    assert [(int(o), reasons.get(i, "")) for i, o in enumerate(outcomes)] == [(int(o), r) for o, r in expected]
    assert len(ledger.memory) == len(one_by_one.memory) <= 7
    assert [int(o) == FactOutcome.APPLIED for o in outcomes] == applied


def test_rows_a_load_records_one_by_one_count_toward_the_bound_before_any_row_is_applied_whole() -> None:
    """A position named twice in a block goes one by one, and each of its newer counts supersedes one
    (an E8 entry each): RecordEvents of the block's rows in order fills the memory with them, so a new
    position's row after them is quarantined. Applied whole first, it was taken in past the bound."""
    ledger = Ledger(0, Limits(max_dedupe_entries_per_shard=7))
    ledger.load_counts(_extract(["K0"], T, 10))
    for i in range(5):
        ledger.record_fact(Fact(f"f{i}", "pos", FactKind.RECEIPT, f"X{i}", "L1", 1, T + 1))
    ledger.commit(T + 1)
    one_by_one = _copy(ledger)
    block = CountRows("erp", ["K0", "NEW"], ["L1"], np.array([0, 0, 1], dtype=np.uint32),
                      np.zeros(3, dtype=np.uint32), np.array([20, 30, 40], dtype=np.int64),
                      np.array([T + HOUR, T + 2 * HOUR, T + HOUR], dtype=np.int64))
    outcomes, reasons = ledger.load_counts(block)
    expected = [one_by_one.record_fact(block.fact(i)) for i in range(len(block))]
    assert expected[2][0] == FactOutcome.QUARANTINED  # the memory was full when RecordEvents reached it
    assert [(int(o), reasons.get(i, "")) for i, o in enumerate(outcomes)] == [(int(o), r) for o, r in expected]
    assert len(ledger.memory) == len(one_by_one.memory) == 7
    assert not ledger.store.exists("NEW", "L1")
