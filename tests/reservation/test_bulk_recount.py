"""Recounts in one step (``_bulk._recount``) against ``record_fact`` row by row, over the history that
makes ``head == 0`` subtle: deltas folded away by E9's sweep after the latest count, the service's
own shipments (SERVICE_SOURCE), counts of several sources stamped alike, counts under ids that are
not ``count@<their time>``, and deltas of the ERP under a later count's id. Then, as a shard's
pipeline does it: the block sealed, a later batch sealed on top, both reverted newest first (R7)
and replayed as if they landed late (E10); and two blocks in one batch, the second taken back by
``rollback_to`` (one failed command)."""

from __future__ import annotations

import random

import numpy as np
import pytest

from reservation import MADE, Fact, FactKind, Ledger, Limits, decode_entry, encode_entry
from reservation._bulk import CountRows, count_event_id
from tests.reservation.test_bulk import _copy, _state
from tests.reservation.test_ledger_model import check_bookkeeping

HOUR = 3_600_000
T0 = 1_790_000_000_000
SKUS = [f"S{n}" for n in range(6)]
LOCATIONS = ["L1", "L2", "DC"]
SOURCES = ["erp", "pos", "a", "zz"]


def _fact(rng: random.Random, n: int, base: int) -> Fact:
    kind = rng.choice([FactKind.COUNT, FactKind.COUNT, FactKind.SALE, FactKind.RECEIPT, FactKind.ADJUST])
    at = base + rng.choice([0, 1, -1, HOUR, -HOUR, rng.randrange(-5 * HOUR, 5 * HOUR)])
    if kind == FactKind.COUNT:
        event_id = count_event_id(at) if rng.random() < 0.7 else count_event_id(at + rng.choice([1, HOUR, -1]))
        quantity = rng.randrange(0, 50)
    else:
        event_id = f"e{n}" if rng.random() < 0.8 else count_event_id(at + rng.choice([0, 1, HOUR]))
        quantity = rng.randrange(1, 20) if kind != FactKind.ADJUST else rng.choice([-3, -1, 1, 4])
    return Fact(event_id, rng.choice(SOURCES), kind, rng.choice(SKUS), rng.choice(LOCATIONS), quantity, at, "")


def _day(rng: random.Random, ledger: Ledger, grace: int) -> tuple[list[Fact], int]:
    """Facts, shipments and safety stocks over a few batches, stream time moving on past the grace
    window now and then, with E8's forgetting and E9's sweep run to the end between batches."""
    sent: list[Fact] = []
    base = T0
    for phase in range(rng.randrange(1, 4)):
        for n in range(rng.randrange(0, 30)):
            fact = _fact(rng, 100 * phase + n, base)
            sent.append(fact)
            ledger.record_fact(fact)
        for n in range(rng.randrange(0, 4)):
            ledger.ship(rng.choice(SKUS), rng.choice(LOCATIONS), rng.randrange(1, 5), base + rng.randrange(-HOUR, HOUR),
                        f"r{phase}-{n}")
        if rng.random() < 0.3:
            ledger.set_safety_stock(rng.choice(SKUS), rng.choice(LOCATIONS), rng.randrange(0, 5))
        ledger.commit(base)
        if rng.random() < 0.6:
            base += rng.choice([grace // 2, grace, 2 * grace])
            ledger.record_fact(Fact(f"tick{phase}", "clock", FactKind.RECEIPT, "ZZ", "L1", 1, base, ""))
            ledger.commit(base)
            ledger.forget_old_facts()
            while ledger.histories.sweep_due(ledger._horizon()) and ledger.compact_some():
                pass
    for _ in range(rng.randrange(0, 3)):  # the ERP's own delta under the id its next count will carry (E8)
        fact = Fact(count_event_id(base + rng.choice([0, 1, HOUR, -1])), "erp", FactKind.SALE, rng.choice(SKUS),
                    rng.choice(LOCATIONS), 1, base - grace // 4, "")
        sent.append(fact)
        ledger.record_fact(fact)
    ledger.commit(base)
    return sent, base


def _block(rng: random.Random, sent: list[Fact], base: int, grace: int, source: str = "erp") -> CountRows:
    rows = []
    as_of = base + rng.choice([0, 1, HOUR, -1])
    for _ in range(rng.randrange(1, 25)):
        when = as_of if rng.random() < 0.7 else base + rng.randrange(-grace // 2, HOUR)
        rows.append((rng.randrange(len(SKUS)), rng.randrange(len(LOCATIONS)), rng.randrange(0, 50), when))
    for f in rng.sample(sent, min(len(sent), 4)):  # counts sent before, the latest or superseded since
        if f.kind == FactKind.COUNT and f.source == source and f.event_id == count_event_id(f.event_time):
            rows.append((SKUS.index(f.sku), LOCATIONS.index(f.location), f.quantity, f.event_time))
    rng.shuffle(rows)
    s, loc, qty, at = (np.array(col, dtype=np.int64) for col in zip(*rows, strict=True))
    return CountRows(source, SKUS, LOCATIONS, s.astype(np.uint32), loc.astype(np.uint32), qty, at)


def _available(ledger: Ledger) -> dict[tuple[str, str], int]:
    return {(sku, loc): q.on_hand - q.reserved - q.committed - q.safety_stock for sku, loc, q in ledger.store.items()}


@pytest.mark.parametrize("seed", range(40))
def test_recounts_over_swept_history_equal_their_rows_one_by_one(seed: int) -> None:
    rng = random.Random(seed)
    grace = rng.choice([2 * HOUR, 24 * HOUR])
    ledger = Ledger(0, Limits(fact_grace_ms=grace))
    if seed % 2:
        ledger.safety_defaults = {"DC": 3}
    sent, base = _day(rng, ledger, grace)
    block = _block(rng, sent, base, grace)
    one_by_one, replayed, pipelined = _copy(ledger), _copy(ledger), _copy(ledger)
    before = _state(pipelined)

    outcomes, reasons = ledger.load_counts(block)
    expected = [one_by_one.record_fact(block.fact(i)) for i in range(len(block))]
    assert [(int(o), reasons.get(i, "")) for i, o in enumerate(outcomes)] == [(int(o), r) for o, r in expected]
    entry = ledger.commit(base + 1)
    one_by_one.commit(base + 1)
    assert _state(ledger) == _state(one_by_one)
    check_bookkeeping(ledger)
    later = sent + [block.fact(i) for i in range(len(block))] + [_fact(rng, 1000 + n, base) for n in range(10)]
    assert [ledger.record_fact(f) for f in later] == [one_by_one.record_fact(f) for f in later]  # E8, E2 after
    assert _state(ledger) == _state(one_by_one)
    ledger.rollback()

    replayed.replay(decode_entry(encode_entry(entry)))
    assert _state(replayed) == _state(ledger)  # E10
    check_bookkeeping(replayed)

    durable = _available(pipelined)
    pipelined.load_counts(block)  # sealed, a batch on top of it, both fail: reverted newest first (R7)
    first, undo_first, moved = pipelined.seal(base + 1)
    ahead = _available(pipelined)
    for sku, location, d in moved:  # C4: memory less the moves of the batch in flight is what is durable
        ahead[(sku, location)] -= d
    made = {(sku, location) for sku, location, d in moved if d is MADE}  # and less the positions it made
    assert {k: v for k, v in ahead.items() if k not in made} == durable
    assert not made & set(durable)
    for f in later[:15]:
        pipelined.record_fact(f)
    second, undo_second, _ = pipelined.seal(base + 2)
    live = _state(pipelined)
    pipelined.revert(undo_second)
    pipelined.revert(undo_first)
    assert _state(pipelined) == before
    check_bookkeeping(pipelined)
    pipelined.replay(decode_entry(encode_entry(first)))  # they had landed after all
    pipelined.replay(decode_entry(encode_entry(second)))
    assert _state(pipelined) == live
    check_bookkeeping(pipelined)


@pytest.mark.parametrize("seed", range(20))
def test_a_second_block_taken_back_by_rollback_to_leaves_the_first(seed: int) -> None:
    rng = random.Random(seed)
    grace = 24 * HOUR
    ledger = Ledger(0, Limits(fact_grace_ms=grace))
    sent, base = _day(rng, ledger, grace)
    first = _block(rng, sent, base + HOUR, grace, rng.choice(["erp", "pos"]))
    second = _block(rng, sent, base + 2 * HOUR, grace, rng.choice(["erp", "pos"]))
    one_by_one, replayed = _copy(ledger), _copy(ledger)
    ledger.load_counts(first)
    after_first = _state(ledger)
    mark = ledger.mark()
    ledger.load_counts(second)
    ledger.rollback_to(mark)  # the second command failed half-way: only it is taken back
    assert _state(ledger) == after_first
    check_bookkeeping(ledger)
    ledger.load_counts(second)
    for block in (first, second):
        for i in range(len(block)):
            one_by_one.record_fact(block.fact(i))
    assert _state(ledger) == _state(one_by_one)
    replayed.replay(decode_entry(encode_entry(ledger.commit(base + 5))))
    assert _state(replayed) == _state(ledger)
    check_bookkeeping(replayed)
