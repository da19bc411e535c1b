"""LoadCounts decides a block's rows in numpy where it can — late rows (E6) included — and records the
others one by one, yet every row gets the outcome and reason RecordEvents gives it in the block's order,
and the shard ends as it would there: positions, latest counts, kept deltas, E8's memory, stream time,
the rows quarantined (with their reasons) in the log entry, and that entry replayed on the shard as it
was before (E10) or taken back (R7).

The blocks mix what makes the order matter: rows late only because of the rows before them, stamps
spread across the grace window, positions named twice, resends and conflicting resends of latest
counts, identities E8's memory holds (open or sealed), counts stamped alike with another source's (E1),
positions keeping deltas — a Fulfil's shipments stamped past stream time among them — near
±max_on_hand, and E8's memory near its bound."""

from __future__ import annotations

import dataclasses
import random
from typing import Any

import msgspec
import numpy as np
import pytest

from reservation import Fact, FactKind, Ledger, Limits, _bulk, _dedupe, decode_entry, encode_entry
from reservation._bulk import CountRows, block_cells, count_event_id, new_positions
from reservation._events import FactQuarantined
from tests.reservation.test_bulk import _copy, _state
from tests.reservation.test_ledger_model import check_bookkeeping
from tests.reservation.test_load_room import ship_past_stream_time

T0 = 1_790_000_000_000
HOUR = 3_600_000
SKUS = [f"S{n}" for n in range(12)]
LOCATIONS = ["L1", "L2", "DC"]
SOURCES = ["a", "erp", "pos", "zz"]  # "a" sorts before the block's "erp" (E1 ties), "zz" after


def _history(rng: random.Random, ledger: Ledger) -> None:
    """Counts of several sources (some at whole hours, where the block's rows tie with them), deltas
    kept after them, the ERP's deltas under ids later counts carry, and a Fulfil's shipments past
    stream time (R4) at one position."""
    for n in range(rng.randrange(0, 30)):
        kind = rng.choice([FactKind.COUNT, FactKind.COUNT, FactKind.RECEIPT, FactKind.SALE])
        at = T0 + (rng.randrange(-3, 3) * HOUR if rng.random() < 0.4 else rng.randrange(-3 * HOUR, 2 * HOUR))
        ledger.record_fact(Fact(count_event_id(at) if kind == FactKind.COUNT else f"e{n}", rng.choice(SOURCES), kind,
                                rng.choice(SKUS[:8]), rng.choice(LOCATIONS), rng.randrange(kind != FactKind.COUNT, 60),
                                at, ""))
    for _ in range(rng.randrange(0, 3)):
        ledger.record_fact(Fact(count_event_id(T0 + rng.choice([0, HOUR])), "erp", FactKind.SALE, rng.choice(SKUS[:8]),
                                rng.choice(LOCATIONS), 1, ledger.stream_time, ""))
    ship_past_stream_time(ledger, rng.choice(SKUS[:8]), rng.choice(LOCATIONS), rng.choice([0, 0, 2, 3]))
    ledger.commit(T0)


def _rows(rng: random.Random, ledger: Ledger) -> list[tuple[int, int, int, int]]:
    """(sku, location, quantity, at) per row, in the block's order."""
    base = T0 + rng.choice([0, HOUR, 2 * HOUR])
    rows: list[tuple[int, int, int, int]] = []
    for _ in range(rng.randrange(1, 40)):
        r = rng.random()
        at = (base if r < 0.4 else base + rng.randrange(-3 * HOUR, 2 * HOUR) if r < 0.7 else
              base - rng.choice([HOUR + 1, 2 * HOUR, 30 * HOUR]) if r < 0.85 else T0 + rng.randrange(-3, 3) * HOUR)
        rows.append((rng.randrange(len(SKUS)), rng.randrange(len(LOCATIONS)), rng.randrange(0, 60), at))
    for _ in range(rng.randrange(0, 4)):  # a position named again: the same stamp (E8), or another
        s, loc, qty, at = rng.choice(rows)
        rows.insert(rng.randrange(len(rows) + 1), (s, loc, rng.choice([qty, qty + 1]), rng.choice([at, at + 1, base])))
    for sku, location, _ in ledger.store.items():
        count = ledger.store.latest_count(sku, location)
        if count is None or rng.random() < 0.6:
            continue
        # a resend, a conflicting one, or (another source's, or another id's) a count stamped alike: E1's tie
        quantity = count[3] if rng.random() < 0.6 else rng.randrange(0, 60)
        rows.insert(rng.randrange(len(rows) + 1), (SKUS.index(sku), LOCATIONS.index(location), quantity, count[0]))
    return rows


def _block(rows: list[tuple[int, int, int, int]]) -> CountRows:
    s, loc, qty, at = (np.array(col, dtype=np.int64) for col in zip(*rows, strict=True))
    return CountRows("erp", SKUS, LOCATIONS, s.astype(np.uint32), loc.astype(np.uint32), qty, at)


def _shard(seed: int, monkeypatch: pytest.MonkeyPatch) -> Ledger:
    rng = random.Random(seed)
    limits = Limits(fact_grace_ms=HOUR, max_quantity=60, max_on_hand=rng.choice([60, 80, 10**6]),
                    max_dedupe_entries_per_shard=rng.choice([rng.randrange(1, 40), 10**6]))
    ledger = Ledger(0, limits)
    if seed % 4 == 0:
        ledger.safety_defaults = {"DC": 3}
    _history(rng, ledger)
    if seed % 3 == 1:  # E8's memory a few identities short of its bound
        room = len(ledger.memory) + rng.randrange(1, 12)
        ledger.limits = dataclasses.replace(limits, max_dedupe_entries_per_shard=room)
    if seed % 2 == 0:  # E8's memory sealed into its columns, as maintenance does between batches
        with monkeypatch.context() as patch:
            patch.setattr(_dedupe, "SEAL_AT", 1)
            ledger.forget_old_facts()
    return ledger


def _quarantined(events: list[Any]) -> list[Any]:
    """The facts a log entry quarantines, with their reasons, in a fixed order."""
    return sorted(msgspec.to_builtins((e.fact, e.reason)) for e in events if isinstance(e, FactQuarantined))


def _remembered(ledger: Ledger) -> dict[bytes, int]:
    """E8's open map, where a block's identities go (nothing is sealed inside a batch)."""
    return dict(ledger.memory.open)


@pytest.mark.parametrize("first", range(0, 3_000, 500))
def test_a_block_decided_in_numpy_equals_its_rows_recorded_one_by_one_in_its_order(
        first: int, monkeypatch: pytest.MonkeyPatch) -> None:
    taken = {"numpy": 0, "late": 0, "one_by_one": 0}
    for seed in range(first, first + 500):
        ledger = _shard(seed, monkeypatch)
        block = _block(_rows(random.Random(~seed), ledger))
        reference, replayed, rolled_back = _copy(ledger), _copy(ledger), _copy(ledger)
        before, remembered = _state(rolled_back), _remembered(rolled_back)
        reference.limits = dataclasses.replace(ledger.limits, max_positions_per_shard=10**9)
        expected = [reference.record_fact(block.fact(i)) for i in range(len(block))]
        ledger.limits = dataclasses.replace(ledger.limits, max_positions_per_shard=len(reference.store))
        assert new_positions(ledger, block) == len(reference.store) - len(ledger.store), seed
        plan = _bulk._plan(ledger, block, block_cells(ledger, block))
        outcomes, reasons = ledger.load_counts(block)
        assert [(int(o), reasons.get(i, "")) for i, o in enumerate(outcomes)] == \
            [(int(o), r) for o, r in expected], seed
        assert _quarantined(ledger.open_events) == _quarantined(reference.open_events), seed
        assert _remembered(ledger) == _remembered(reference), seed
        entry = ledger.commit(T0 + 1)
        assert _state(ledger) == _state(reference), seed
        check_bookkeeping(ledger)
        replayed.replay(decode_entry(encode_entry(entry)))
        assert _state(replayed) == _state(ledger) and _remembered(replayed) == _remembered(reference), seed  # E10
        rolled_back.load_counts(block)
        rolled_back.rollback()
        assert _state(rolled_back) == before and _remembered(rolled_back) == remembered, seed  # R7
        if plan is None:
            taken["one_by_one"] += 1
        else:
            taken["numpy"] += 1
            taken["late"] += bool(plan.moves.any() and any(r.startswith("late") for r in reasons.values()))
    # every way through is exercised: rows in numpy with late ones among them, and every row one by one
    assert taken["late"] > 100 and taken["one_by_one"] > 50, taken


def _as_one_by_one(ledger: Ledger, block: CountRows) -> list[tuple[int, str]]:
    """The block loaded, checked against its rows recorded one by one on a copy of the shard: the
    outcomes and reasons (returned) and the state after."""
    reference = _copy(ledger)
    expected = [(int(o), r) for o, r in (reference.record_fact(block.fact(i)) for i in range(len(block)))]
    outcomes, reasons = ledger.load_counts(block)
    assert [(int(o), reasons.get(i, "")) for i, o in enumerate(outcomes)] == expected
    assert _state(ledger) == _state(reference) and _remembered(ledger) == _remembered(reference)
    return expected


def test_older_counts_absorbed_fill_e8s_memory_before_a_new_position_as_one_by_one() -> None:
    """Each older count (E5) is remembered by E8: two of them fill a memory two short of its bound,
    so the new position's row after them is quarantined for want of room, not made."""
    ledger = Ledger(0, Limits())
    for sku in ("S0", "S1"):
        ledger.record_fact(Fact(count_event_id(T0 + HOUR), "erp", FactKind.COUNT, sku, "L1", 5, T0 + HOUR, ""))
    ledger.commit(T0)
    ledger.limits = dataclasses.replace(ledger.limits, max_dedupe_entries_per_shard=len(ledger.memory) + 2)
    expected = _as_one_by_one(ledger, _block([(0, 0, 7, T0), (1, 0, 8, T0), (2, 0, 9, T0 + 1)]))
    assert [o for o, _ in expected] == [3, 3, 4] and "max_dedupe_entries_per_shard" in expected[2][1]
    assert not ledger.store.exists("S2", "L1")


@pytest.mark.parametrize(("source", "outcome"), [("a", "out of range"), ("zz", "")])
def test_a_count_stamped_like_the_latest_one_is_ordered_by_source_past_max_on_hand_too(source: str,
                                                                                      outcome: str) -> None:
    """E1: a count stamped like the latest count of a source before "erp" in order comes after it: its
    on_hand with the delta kept after it passes max_on_hand, so it is taken back (quarantined); after
    one of a source ordered later, it is absorbed (E5) and on_hand does not move."""
    ledger = Ledger(0, Limits(max_quantity=60, max_on_hand=80))
    ledger.record_fact(Fact(count_event_id(T0), source, FactKind.COUNT, "S0", "L1", 10, T0, ""))
    ledger.record_fact(Fact("r1", "wms", FactKind.RECEIPT, "S0", "L1", 50, T0 + 1, ""))  # kept: after the count
    ledger.commit(T0)
    expected = _as_one_by_one(ledger, _block([(0, 0, 40, T0), (1, 0, 7, T0)]))  # 40 + 50 > 80
    assert expected[0][1].startswith(outcome) and expected[0][0] == (4 if outcome else 3)
    assert ledger.quantities("S0", "L1").on_hand == 60


def test_a_late_row_leaves_the_rest_of_the_block_one_event_not_a_fact_per_row() -> None:
    """One row of an extract stamped before stream time minus grace (E6) is quarantined as one by one,
    and the others still load as one ``CountsLoaded``: it sent every row of the shard's part through
    ``record_fact`` (an event each, seconds of the shard's turn for 100,000 rows)."""
    ledger = Ledger(0, Limits(fact_grace_ms=HOUR))
    ledger.record_fact(Fact(count_event_id(T0), "erp", FactKind.COUNT, "S0", "L1", 5, T0, ""))
    ledger.commit(T0)
    rows = [(s, loc, 7, T0 + HOUR) for s in range(1, len(SKUS)) for loc in range(len(LOCATIONS))]
    rows.insert(5, (0, 0, 9, T0 + HOUR))  # a newer count at a position that exists
    rows.insert(17, (0, 1, 9, T0 - 2 * HOUR))  # late: quarantined, whatever the rows before it
    expected = _as_one_by_one(ledger, _block(rows))
    late = f"late: event_time {T0 - 2 * HOUR} is before stream time minus grace ({T0})"
    assert [r for _, r in expected if r] == [late]
    assert [type(e).__name__ for e in ledger.open_events] == ["FactQuarantined", "CountsLoaded"]
