"""``max_positions_per_shard`` for LoadCounts: a block is refused whole exactly when its rows, recorded
one by one in its order as RecordEvents records them, would make more positions than the shard has
room for. Stream time (E6) and E8's memory move with the rows, so a row can be late, or find the
memory full, only because of the rows before it in the same block: it makes no position then, and
must not count toward the bound (never fewer counted than made: the bound would be passed)."""

from __future__ import annotations

import contextlib
import dataclasses
import random

import numpy as np
import pytest

from reservation import DomainError, Fact, FactKind, FactOutcome, Ledger, Limits, ResourceExhausted, _bulk
from reservation import _operations as ops
from reservation._bulk import CountRows, count_event_id, new_positions
from reservation._deltas import DeltaPool
from reservation._model import LineRequest, ReserveCommand

T0 = 1_790_000_000_000
HOUR = 3_600_000
SKUS = [f"S{n}" for n in range(10)]
LOCATIONS = ["L1", "L2", "DC"]


def _block(rows: list[tuple[int, int, int, int]]) -> CountRows:
    """(sku, location, quantity, at) per row, in the block's order."""
    s, loc, qty, at = (np.array(col, dtype=np.int64) for col in zip(*rows, strict=True))
    return CountRows("erp", SKUS, LOCATIONS, s.astype(np.uint32), loc.astype(np.uint32), qty, at)


def _made_one_by_one(ledger: Ledger, block: CountRows) -> tuple[int, list[tuple[FactOutcome, str]]]:
    """Positions the block's rows make recorded one by one (no bound on positions), and their
    outcomes; then the open batch taken back (R7), so the ledger is as before."""
    bounded = ledger.limits
    ledger.limits = dataclasses.replace(bounded, max_positions_per_shard=10**9)
    held = len(ledger.store)
    outcomes = [ledger.record_fact(block.fact(i)) for i in range(len(block))]
    made = len(ledger.store) - held
    ledger.rollback()
    ledger.limits = bounded
    return made, outcomes


def test_a_row_late_only_after_an_earlier_row_of_the_block_makes_no_position_and_the_block_loads() -> None:
    """Stream time moves with the block's rows: the second row is inside the grace window as of
    before the block, late (E6) once the first has moved it, so the block fits the bound exactly."""
    ledger = Ledger(0, Limits(fact_grace_ms=HOUR, max_positions_per_shard=3))
    ledger.record_fact(Fact("r0", "wms", FactKind.RECEIPT, "S0", "L1", 5, T0 - 2 * HOUR, ""))
    ledger.commit(T0)
    block = _block([(1, 0, 10, T0), (2, 0, 11, T0 - 90 * 60_000), (3, 0, 12, T0 + 1)])
    made, expected = _made_one_by_one(ledger, block)
    assert made == 2 and new_positions(ledger, block) == 2
    outcomes, reasons = ledger.load_counts(block)
    assert [(int(o), reasons.get(i, "")) for i, o in enumerate(outcomes)] == [(int(o), r) for o, r in expected]
    assert expected[1][1].startswith("late") and len(ledger.store) == 3
    assert not ledger.store.exists("S2", "L1")


def test_a_row_past_a_memory_the_block_itself_filled_makes_no_position_and_the_block_loads() -> None:
    """E8's memory fills with the counts the block's own newer counts supersede: the new position's
    row after them is quarantined (``max_dedupe_entries_per_shard``), so it makes none."""
    ledger = Ledger(0, Limits(max_positions_per_shard=1, max_dedupe_entries_per_shard=2))
    ledger.record_fact(Fact(count_event_id(T0), "erp", FactKind.COUNT, "S0", "L1", 4, T0, ""))
    ledger.commit(T0)
    block = _block([(0, 0, 5, T0 + 1), (0, 0, 6, T0 + 2), (1, 0, 7, T0 + 3)])
    made, expected = _made_one_by_one(ledger, block)
    assert made == 0 and new_positions(ledger, block) == 0
    outcomes, reasons = ledger.load_counts(block)
    assert [(int(o), reasons.get(i, "")) for i, o in enumerate(outcomes)] == [(int(o), r) for o, r in expected]
    assert int(outcomes[2]) == FactOutcome.QUARANTINED and "max_dedupe_entries_per_shard" in reasons[2]
    assert len(ledger.store) == 1 and len(ledger.memory) == 2


def test_a_later_row_e8_knows_moves_no_stream_time_and_the_new_position_after_it_counts() -> None:
    """The ERP once sent a SALE under the id its count at T0 carries: that count, later than stream
    time, is a conflict (E8 before E6) and moves nothing, so the row after it is not late."""
    ledger = Ledger(0, Limits(fact_grace_ms=HOUR, max_positions_per_shard=2))
    ledger.record_fact(Fact(count_event_id(T0), "erp", FactKind.SALE, "S0", "L1", 1, T0 - 2 * HOUR, ""))
    ledger.commit(T0)
    block = _block([(0, 0, 9, T0), (1, 0, 7, T0 - 90 * 60_000)])
    made, expected = _made_one_by_one(ledger, block)
    assert expected[0][1].startswith("conflict") and made == 1
    assert new_positions(ledger, block) == 1
    outcomes, reasons = ledger.load_counts(block)
    assert [(int(o), reasons.get(i, "")) for i, o in enumerate(outcomes)] == [(int(o), r) for o, r in expected]
    assert len(ledger.store) == 2


@pytest.mark.parametrize(("at", "outcome", "made"), [(T0 + 5, "out of range", 1), (T0 - 5, "", 0)])
def test_a_newer_count_taken_back_past_max_on_hand_fills_no_memory_an_older_one_absorbed_does(
        at: int, outcome: str, made: int) -> None:
    """A newer count whose kept deltas after it take on_hand past max_on_hand is quarantined: E8
    remembers nothing for it, so the memory is not full when the new position's row comes. An older
    one is absorbed (E5, on_hand unmoved) and remembered: the memory is full then."""
    ledger = Ledger(0, Limits(max_quantity=60, max_on_hand=80, max_positions_per_shard=1 + made,
                              max_dedupe_entries_per_shard=2))
    ledger.record_fact(Fact(count_event_id(T0), "erp", FactKind.COUNT, "S0", "L1", 10, T0, ""))
    ledger.record_fact(Fact("r1", "wms", FactKind.RECEIPT, "S0", "L1", 50, T0 + 10, ""))  # kept: after the count
    ledger.commit(T0)
    block = _block([(0, 0, 40, at), (1, 0, 7, T0 + 6)])  # 40 + 50 > 80; then a new position
    one_by_one, expected = _made_one_by_one(ledger, block)
    assert expected[0][1].startswith(outcome) and one_by_one == made
    assert new_positions(ledger, block) == made
    outcomes, reasons = ledger.load_counts(block)
    assert [(int(o), reasons.get(i, "")) for i, o in enumerate(outcomes)] == [(int(o), r) for o, r in expected]
    assert len(ledger.store) == 1 + made and len(ledger.memory) == 1 + (1 - made)


def test_a_count_later_than_stream_time_taken_back_past_max_on_hand_moves_no_stream_time() -> None:
    """Fulfils shipped units at the service's clock (R4): kept deltas stamped past stream time, as no
    fact moved it there. A count later than stream time but before them takes on_hand past
    -max_on_hand, so it is quarantined and stream time stays; the new position's row after it is not
    late and makes one. Counted as moving stream time, that row looked late: 0 counted, 1 made, and
    every load of the block failed with an internal error."""
    stream = T0 - 3 * HOUR
    ledger = Ledger(0, Limits(fact_grace_ms=HOUR, max_quantity=60, max_on_hand=60, max_positions_per_shard=2))
    ledger.record_fact(Fact(count_event_id(stream), "erp", FactKind.COUNT, "S0", "L1", 60, stream, ""))
    for n in range(2):  # 60 shipped twice, after the receipt that brought them back
        if n:
            ledger.record_fact(Fact(f"r{n}", "wms", FactKind.RECEIPT, "S0", "L1", 60, stream + n, ""))
        ops.reserve(ledger, ReserveCommand(f"o{n}", "", "", (LineRequest("S0", "L1", 60),), 60_000, False), T0 + n)
        ops.confirm(ledger, f"o{n}", T0 + n)
        ops.fulfill(ledger, f"o{n}", (), "", T0 + n, ledger.limits)
    ledger.commit(T0 + 2)
    assert ledger.stream_time == stream + 1
    block = _block([(0, 0, 0, stream + 2 * HOUR), (1, 0, 7, stream + 30 * 60_000)])  # 0 - 120 < -60; a new one
    made, expected = _made_one_by_one(ledger, block)
    assert expected[0][1].startswith("out of range") and made == 1
    assert new_positions(ledger, block) == 1
    outcomes, reasons = ledger.load_counts(block)
    assert [(int(o), reasons.get(i, "")) for i, o in enumerate(outcomes)] == [(int(o), r) for o, r in expected]
    assert len(ledger.store) == 2 and ledger.stream_time == stream + 30 * 60_000  # the new row moved it


def test_a_block_one_position_past_the_bound_is_still_refused_whole() -> None:
    """The late row of the first test made a position after all (nothing before it moved stream
    time): one more than the bound allows, so nothing of the block is applied."""
    ledger = Ledger(0, Limits(fact_grace_ms=HOUR, max_positions_per_shard=3))
    ledger.record_fact(Fact("r0", "wms", FactKind.RECEIPT, "S0", "L1", 5, T0 - 2 * HOUR, ""))
    ledger.commit(T0)
    block = _block([(2, 0, 11, T0 - 90 * 60_000), (1, 0, 10, T0), (3, 0, 12, T0 + 1)])
    assert new_positions(ledger, block) == 3
    with pytest.raises(ResourceExhausted):
        ledger.load_counts(block)
    assert not ledger.pending and len(ledger.store) == 1


def test_a_shard_that_would_make_more_positions_than_it_counted_refuses_to_and_the_turn_takes_it_back(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Never more positions than the bound was checked for: a count too low (a bug) would pass the
    bound in one event, so the load raises, and its turn takes back what it had applied."""
    ledger = Ledger(0, Limits(max_positions_per_shard=1))
    monkeypatch.setattr(_bulk, "new_positions", lambda _ledger, _block, _cells=None: 0)
    mark = ledger.mark()
    with pytest.raises(AssertionError, match="2 positions made, 0 counted"):
        ledger.load_counts(_block([(1, 0, 10, T0), (2, 0, 11, T0)]))
    ledger.rollback_to(mark)  # as ``apply_batch`` does for a command that failed
    assert len(ledger.store) == 0 and not ledger.pending


def _history(rng: random.Random, ledger: Ledger) -> None:
    """Positions with counts, kept deltas (some large: a newer count on top may pass max_on_hand)
    and identities E8 remembers; stream time somewhere around the block's times."""
    for n in range(rng.randrange(0, 14)):
        kind = rng.choice([FactKind.COUNT, FactKind.COUNT, FactKind.RECEIPT, FactKind.SALE])
        at = T0 + rng.randrange(-3 * HOUR, 2 * HOUR)
        ledger.record_fact(Fact(count_event_id(at) if kind == FactKind.COUNT else f"e{n}",
                                rng.choice(["erp", "erp", "pos"]), kind, rng.choice(SKUS[:6]),
                                rng.choice(LOCATIONS), rng.randrange(0 if kind == FactKind.COUNT else 1, 60), at, ""))
    for _ in range(rng.randrange(0, 3)):  # the ERP's own delta under the id a later count carries: E8
        # knows that count's identity (a conflict), so it changes nothing, stream time included
        at = T0 + rng.choice([0, HOUR, 2 * HOUR])
        ledger.record_fact(Fact(count_event_id(at), "erp", FactKind.SALE, rng.choice(SKUS[:6]),
                                rng.choice(LOCATIONS), 1, ledger.stream_time, ""))
    ship_past_stream_time(ledger, rng.choice(SKUS[:6]), rng.choice(LOCATIONS), rng.choice([0, 2, 3, 4]))
    ledger.commit(T0)


def ship_past_stream_time(ledger: Ledger, sku: str, location: str, shipments: int) -> None:
    """R4 by Fulfil: kept deltas stamped by the service's clock, past stream time (no fact moved it
    there), 60 units each: a newer count before them may pass -max_on_hand."""
    for n in range(shipments):
        ledger.record_fact(Fact(f"g{n}", "wms", FactKind.RECEIPT, sku, location, 60, ledger.stream_time, ""))
        now = T0 + 3 * HOUR + n
        with contextlib.suppress(DomainError):  # too little available: no shipment
            ops.reserve(ledger, ReserveCommand(f"o{n}", "", "", (LineRequest(sku, location, 60),), 60_000, False), now)
            ops.confirm(ledger, f"o{n}", now)
            ops.fulfill(ledger, f"o{n}", (), "", now, ledger.limits)


def _random_block(rng: random.Random, ledger: Ledger) -> CountRows:
    """Rows around the grace window's edge, new positions and known ones, some positions twice, some
    resends of the latest counts (E8 knows them)."""
    rows: list[tuple[int, int, int, int]] = []
    for _ in range(rng.randrange(1, 12)):
        jitter = rng.randrange(-HOUR, HOUR) if rng.random() < 0.7 else 0
        at = T0 + rng.choice([0, HOUR, -HOUR, 2 * HOUR, 3 * HOUR]) + jitter  # 3 h: before the shipments
        rows.append((rng.randrange(len(SKUS)), rng.randrange(len(LOCATIONS)), rng.randrange(0, 60), at))
    for sku, location, _ in list(ledger.store.items())[:3]:
        count = ledger.store.latest_count(sku, location)
        if count is not None and count[1] == "erp" and rng.random() < 0.5:
            rows.insert(rng.randrange(len(rows) + 1), (SKUS.index(sku), LOCATIONS.index(location), count[3], count[0]))
    return _block(rows)


def test_new_positions_is_what_the_rows_one_by_one_make_and_the_bound_refuses_exactly_past_it() -> None:
    """Random blocks against random shards at the bound (E8's memory near its own, kept deltas near
    max_on_hand): the count equals the positions recorded one by one make; a bound that leaves room
    for them loads the block as RecordEvents would, one position less refuses it whole."""
    checked = 0
    for seed in range(2_000):
        rng = random.Random(seed)
        limits = Limits(fact_grace_ms=HOUR, max_quantity=60, max_on_hand=rng.choice([60, 80, 10**6]),
                        max_dedupe_entries_per_shard=rng.randrange(1, 12))
        ledger = Ledger(0, limits)
        _history(rng, ledger)
        block = _random_block(rng, ledger)
        made, expected = _made_one_by_one(ledger, block)
        assert new_positions(ledger, block) == made, seed
        held = len(ledger.store)
        ledger.limits = dataclasses.replace(limits, max_positions_per_shard=max(1, held + made))
        outcomes, reasons = ledger.load_counts(block)
        assert [(int(o), reasons.get(i, "")) for i, o in enumerate(outcomes)] == \
            [(int(o), r) for o, r in expected], seed
        assert len(ledger.store) == held + made, seed
        ledger.rollback()
        if made and held + made > 1:  # (a bound is at least 1)
            ledger.limits = dataclasses.replace(limits, max_positions_per_shard=held + made - 1)
            with pytest.raises(ResourceExhausted):
                ledger.load_counts(block)
            assert not ledger.pending, seed
            checked += 1
    assert checked > 1_000  # most blocks make a position: the refusal side is exercised too


def test_the_room_check_asks_only_about_rows_that_could_move_stream_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """A nightly resync: every position counted again at one stamp, each keeping the day's sales after
    its count, and one row for a new position stamped inside the grace window as of before the block,
    late (E6) once a row before it moved stream time. Only a row that would raise stream time as the
    rows before it leave it can make that row late: the first at the extract's stamp; the others are
    stamped alike. The check asks E8 and sums the kept deltas (max_on_hand) for that row alone, not for
    every row of the block: it runs on the event loop at the edge and again in the shard's turn (~12 µs
    a row with 20 sales kept: 1.2 s per 100,000)."""
    ledger = Ledger(0, Limits(fact_grace_ms=HOUR))
    for s in range(len(SKUS) - 1):  # S9 has no position yet
        for loc in range(len(LOCATIONS)):
            ledger.record_fact(Fact(count_event_id(T0 - 3 * HOUR), "erp", FactKind.COUNT, SKUS[s], LOCATIONS[loc],
                                    40, T0 - 3 * HOUR, ""))
            ledger.record_fact(Fact(f"sale-{s}-{loc}", "pos", FactKind.SALE, SKUS[s], LOCATIONS[loc], 1,
                                    T0 - 2 * HOUR, ""))
    ledger.commit(T0)
    rows = [(s, loc, 30, T0) for s in range(len(SKUS) - 1) for loc in range(len(LOCATIONS))]
    rows.append((len(SKUS) - 1, 0, 7, T0 - 90 * 60_000))  # a new position, late once a row before it applied
    block = _block(rows)
    made, expected = _made_one_by_one(ledger, block)
    summed: list[int] = []
    asked: list[int] = []
    sum_after, digests = DeltaPool.sum_after, CountRows.digests
    monkeypatch.setattr(DeltaPool, "sum_after", lambda pool, head, at: summed.append(head) or sum_after(pool, head, at))
    monkeypatch.setattr(CountRows, "digests", lambda self, ask: asked.append(len(ask)) or digests(self, ask))
    assert made == 0 and expected[-1][1].startswith("late") and new_positions(ledger, block) == 0
    assert len(summed) <= 1 and sum(asked) <= 1, (len(summed), asked)
