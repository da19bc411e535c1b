"""LoadCounts in columns gives every row the outcome RecordEvents gives its fact, and the same state.

Each case runs a block of counts two ways on two copies of one shard — ``Ledger.load_counts`` and
``record_fact`` row by row — and compares outcomes, reasons, every position (quantities, latest
count, kept history), stream time and the names' use counts. Then the block's log entry replayed
on a copy of the shard before it must give the same state (E10), and a rolled-back block must
leave nothing behind (R7).
"""

from __future__ import annotations

import random
from typing import Any

import msgspec
import numpy as np
import pytest

from reservation import Fact, FactKind, FactOutcome, Ledger, LedgerSnapshot, Limits, _dedupe, decode_entry, encode_entry
from reservation._bulk import CountRows, count_event_id
from tests.reservation.test_ledger_model import check_bookkeeping

HOUR = 3_600_000
T0 = 1_790_000_000_000
SKUS = [f"S{n}" for n in range(12)]
LOCATIONS = ["L1", "L2", "L3", "DC"]


def _copy(ledger: Ledger) -> Ledger:
    """An independent copy of a shard, through a snapshot's bytes (as recovery makes one)."""
    data = msgspec.msgpack.encode(ledger.snapshot())
    copy = Ledger.restore(0, ledger.limits, msgspec.msgpack.decode(data, type=LedgerSnapshot))
    copy.safety_defaults = dict(ledger.safety_defaults)
    return copy


def _state(ledger: Ledger) -> dict[str, Any]:
    store = ledger.store
    positions = {}
    for sku, location, q in store.items():
        row, col = store.locate(sku, location) or (-1, -1)
        positions[(sku, location)] = (q, store.count_at(row, col), ledger.history(sku, location))
    return {"positions": positions, "stream_time": ledger.stream_time, "names": len(store.names),
            "remembered": len(ledger.memory)}


def _latest_counts(ledger: Ledger) -> list[Fact]:
    """Every position's latest count as a fact (sent again later: E8 must know it, latest or not)."""
    out = []
    for sku, location, _ in ledger.store.items():
        cell = ledger.store.locate(sku, location)
        count = ledger.store.count_at(*cell) if cell else None
        if count is not None:
            at, source, event_id, quantity = count
            out.append(Fact(event_id, source, FactKind.COUNT, sku, location, quantity, at, ""))
    return out


def _history(rng: random.Random, ledger: Ledger) -> None:
    """Some positions with counts and deltas before the block, a few newer than it."""
    for n in range(rng.randrange(0, 25)):
        kind = rng.choice([FactKind.COUNT, FactKind.SALE, FactKind.RECEIPT])
        at = T0 + rng.randrange(-3 * HOUR, 3 * HOUR)
        ledger.record_fact(Fact(count_event_id(at) if kind == FactKind.COUNT else f"e{n}",
                                rng.choice(["erp", "pos"]), kind, rng.choice(SKUS), rng.choice(LOCATIONS),
                                rng.randrange(0 if kind == FactKind.COUNT else 1, 40), at, ""))
    for _ in range(rng.randrange(0, 4)):  # a delta of the ERP's own under an id a later count will carry:
        # absorbed by a count after it, E8 still knows it (that count is then a conflict, not new)
        ledger.record_fact(Fact(count_event_id(T0 + rng.choice([-HOUR, 0, HOUR])), "erp", FactKind.SALE,
                                rng.choice(SKUS), rng.choice(LOCATIONS), 1, T0 - 4 * HOUR, ""))
    ledger.commit(T0)


def _block(rng: random.Random, ledger: Ledger, late: bool) -> CountRows:
    """Counts as an extract sends them: mostly one as-of time, some resends of latest counts, a
    position now and then named twice, and (``late``) a row older than the grace window."""
    rows: list[tuple[int, int, int, int]] = []
    as_of = T0 + rng.choice([-HOUR, 0, HOUR])
    for _ in range(rng.randrange(1, 40)):
        s, loc = rng.randrange(len(SKUS)), rng.randrange(len(LOCATIONS))
        at = as_of if rng.random() < 0.8 else T0 + rng.randrange(-2 * HOUR, 2 * HOUR)
        rows.append((s, loc, rng.randrange(0, 60), at))
    for sku, location, _ in list(ledger.store.items())[:5]:  # the latest count again, or another quantity
        cell = ledger.store.locate(sku, location)
        count = ledger.store.count_at(*cell) if cell else None
        if count is not None and count[1] == "erp":
            qty = count[3] if rng.random() < 0.7 else count[3] + 1
            rows.append((SKUS.index(sku), LOCATIONS.index(location), qty, count[0]))
    if late:
        rows.append((0, 0, 5, T0 - 30 * HOUR))
    rng.shuffle(rows)
    s, loc, qty, at = (np.array(col, dtype=np.int64) for col in zip(*rows, strict=True))
    return CountRows("erp", SKUS, LOCATIONS, s.astype(np.uint32), loc.astype(np.uint32), qty, at)


@pytest.mark.parametrize("seed", range(60))
def test_a_block_in_columns_equals_its_rows_one_by_one(seed: int) -> None:
    rng = random.Random(seed)
    ledger = Ledger(0, Limits(fact_grace_ms=24 * HOUR))
    if seed % 3 == 0:
        ledger.safety_defaults = {"DC": 7}
    _history(rng, ledger)
    block = _block(rng, ledger, late=seed % 5 == 0)
    one_by_one, replayed, rolled_back = _copy(ledger), _copy(ledger), _copy(ledger)
    before = _state(rolled_back)
    earlier = _latest_counts(ledger)

    outcomes, reasons = ledger.load_counts(block)
    expected = [one_by_one.record_fact(block.fact(i)) for i in range(len(block))]
    assert [(int(o), reasons.get(i, "")) for i, o in enumerate(outcomes)] == [(int(o), r) for o, r in expected]
    entry = ledger.commit(T0 + 1)
    assert _state(ledger) == _state(one_by_one)
    check_bookkeeping(ledger)
    assert [ledger.record_fact(f) for f in earlier] == [one_by_one.record_fact(f) for f in earlier]  # E8
    ledger.rollback()

    replayed.replay(decode_entry(encode_entry(entry)))
    assert _state(replayed) == _state(ledger)  # E10
    check_bookkeeping(replayed)

    rolled_back.load_counts(block)
    rolled_back.rollback()
    assert _state(rolled_back) == before  # R7: nothing of a block whose append failed
    check_bookkeeping(rolled_back)


def test_a_baseline_is_one_event_and_a_reload_adds_nothing() -> None:
    ledger = Ledger(0, Limits())
    n = 3_000
    block = CountRows("erp", [f"S{i}" for i in range(1_000)], LOCATIONS[:3],
                      np.repeat(np.arange(1_000, dtype=np.uint32), 3), np.tile(np.arange(3, dtype=np.uint32), 1_000),
                      np.arange(n, dtype=np.int64) % 50, np.full(n, T0, dtype=np.int64))
    outcomes, _ = ledger.load_counts(block)
    assert set(outcomes.tolist()) == {1} and len(ledger.commit(T0).events) == 1
    again, _ = ledger.load_counts(block)
    assert set(again.tolist()) == {2} and not ledger.pending  # E8 from the columns: no event, no memory
    assert len(ledger.memory) == 0 and len(ledger.store) == n
    assert ledger.quantities("S999", "L3").on_hand == (n - 1) % 50


def test_a_newer_extract_recounts_in_one_event_and_remembers_what_it_supersedes() -> None:
    ledger = Ledger(0, Limits())
    n = 3_000
    skus = [f"S{i}" for i in range(1_000)]

    def extract(at: int, shift: int) -> CountRows:
        return CountRows("erp", skus, LOCATIONS[:3], np.repeat(np.arange(1_000, dtype=np.uint32), 3),
                         np.tile(np.arange(3, dtype=np.uint32), 1_000), np.arange(n, dtype=np.int64) % 50 + shift,
                         np.full(n, at, dtype=np.int64))

    ledger.load_counts(extract(T0, 0))
    ledger.commit(T0)
    before = _state(ledger)
    outcomes, _ = ledger.load_counts(extract(T0 + HOUR, 7))
    assert set(outcomes.tolist()) == {1} and len(ledger.open_events) == 1  # one event for the whole resync
    assert ledger.quantities("S999", "L3").on_hand == (n - 1) % 50 + 7 and len(ledger.memory) == n
    again, _ = ledger.load_counts(extract(T0, 0))  # the superseded extract, sent again: E8 knows it
    assert set(again.tolist()) == {2}
    ledger.rollback()
    assert _state(ledger) == before  # R7: names, counts, on_hand and E8 as before the resync
    check_bookkeeping(ledger)


@pytest.mark.parametrize("memory", ["open", "sealed"])
def test_a_newer_count_whose_identity_e8_already_holds_is_a_conflict_as_one_by_one(
        memory: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """E8 before E1: the ERP once sent a SALE under the id its next count carries; the count is then
    a conflicting resend (quarantined), not a newer count, whichever way it arrives."""
    ledger = Ledger(0, Limits())
    ledger.record_fact(Fact(count_event_id(T0), "erp", FactKind.COUNT, "S1", "L1", 10, T0, ""))
    ledger.record_fact(Fact(count_event_id(T0 + HOUR), "erp", FactKind.SALE, "S1", "L1", 1, T0 - HOUR, ""))  # absorbed
    for n in range(40):  # other identities, so the one that matters is found among many
        ledger.record_fact(Fact(f"e{n}", "pos", FactKind.SALE, f"S{n % 9}", "L2", 1, T0 - HOUR, ""))
    ledger.commit(T0)
    if memory == "sealed":
        monkeypatch.setattr(_dedupe, "SEAL_AT", 1)
        ledger.forget_old_facts()  # seals the open map, as maintenance does between batches
        assert not ledger.memory.open
    one_by_one = _copy(ledger)
    block = CountRows("erp", ["S1"], ["L1"], np.zeros(1, dtype=np.uint32), np.zeros(1, dtype=np.uint32),
                      np.array([12], dtype=np.int64), np.array([T0 + HOUR], dtype=np.int64))
    outcomes, reasons = ledger.load_counts(block)
    assert [(int(outcomes[0]), reasons.get(0, ""))] == [one_by_one.record_fact(block.fact(0))]
    assert int(outcomes[0]) == FactOutcome.QUARANTINED and ledger.quantities("S1", "L1").on_hand == 10


@pytest.mark.parametrize("full", ["positions", "dedupe"])
def test_rows_that_can_make_no_position_do_not_count_toward_the_bound_on_positions(full: str) -> None:
    """A block whose rows that can make a position fill ``max_positions_per_shard`` exactly loads as
    its rows one by one do: a row late whatever the order (E6) or past a full E8 memory is quarantined
    before any position is made, so it must not make the shard's part refused whole for one."""
    limits = Limits(fact_grace_ms=HOUR, max_positions_per_shard=3,
                    max_dedupe_entries_per_shard=2 if full == "dedupe" else 100)
    ledger = Ledger(0, limits)
    ledger.record_fact(Fact("c0", "erp", FactKind.COUNT, "S0", "L1", 4, T0, ""))
    if full == "dedupe":  # two deltas the count absorbs fill E8's memory
        for n in range(2):
            ledger.record_fact(Fact(f"e{n}", "pos", FactKind.SALE, "S0", "L1", 1, T0 - 1, ""))
    ledger.commit(T0)
    one_by_one = _copy(ledger)
    rows = [(1, 10, T0 + 1), (2, 11, T0 + 2), (3, 12, T0 - 2 * HOUR)]  # at the bound, then a late row
    block = CountRows("erp", SKUS, LOCATIONS, np.array([s for s, _, _ in rows], dtype=np.uint32),
                      np.zeros(len(rows), dtype=np.uint32), np.array([q for _, q, _ in rows], dtype=np.int64),
                      np.array([t for _, _, t in rows], dtype=np.int64))
    outcomes, reasons = ledger.load_counts(block)
    expected = [one_by_one.record_fact(block.fact(i)) for i in range(len(block))]
    assert [(int(o), reasons.get(i, "")) for i, o in enumerate(outcomes)] == [(int(o), r) for o, r in expected]
    assert _state(ledger) == _state(one_by_one) and len(ledger.store) <= limits.max_positions_per_shard
