"""One shard through many positions (runs move, columns pack), every position-changing event and Reserves,
batches reverted newest first, rollback_to, E9 sweeps, snapshots; the store's layout invariants and
names' use counts after every step, every revert restoring the state before, and live == replay (E10)."""

from __future__ import annotations

import random

import msgspec
import numpy as np
import pytest

from reservation import MADE, Fact, FactKind, Ledger, LedgerSnapshot, Limits, LineRequest, ReserveCommand, reserve
from reservation._bulk import CountRows
from reservation._store import PositionStore

from .test_segments_invariants import check as check_layout

SKUS = [f"S{i}" for i in range(40)]
LOCS = [f"L{j}" for j in range(14)]
KINDS = [FactKind.SALE, FactKind.RECEIPT, FactKind.ADJUST, FactKind.COUNT, FactKind.RETURN]


def layout(store: PositionStore) -> None:
    seg = store._seg
    model = {}
    for row in range(seg.rows):
        run = seg.run(row)
        for slot in range(run.start, run.stop):
            model[(row, int(seg.col[slot]))] = tuple(seg.wide[:, slot].tolist()) + tuple(seg.narrow[:, slot].tolist())
    check_layout(seg, model)


def bookkeeping(ledger: Ledger) -> None:
    store, pool = ledger.store, ledger.histories.pool
    uses = np.zeros(len(store.names._names), dtype=np.int64)
    for column in (*store.name_users(), pool.sources):
        uses += np.bincount(column.ravel(), minlength=len(uses))[: len(uses)]
    assert uses[1:].tolist() == store.names._uses[1:]
    q = store.totals()
    items = list(store.items())
    assert q.on_hand == sum(x.on_hand for _, _, x in items)
    assert q.reserved == sum(x.reserved for _, _, x in items)
    assert q.safety_stock == sum(x.safety_stock for _, _, x in items)
    assert len(items) == len(store)


def positions(ledger: Ledger) -> set[tuple[str, str]]:
    return {(sku, location) for sku, location, _ in ledger.store.items()}


def state(ledger: Ledger) -> tuple:
    store = ledger.store
    return (sorted(store.items()),
            sorted((s, loc, store.latest_count(s, loc)) for s, loc, _ in store.items()),
            sorted((s, loc, ledger.history(s, loc)) for s, loc, _ in store.items()),
            ledger.stream_time, sorted(ledger.reservations), ledger.live_reservations)


class Run:
    def __init__(self, seed: int, grace: int) -> None:
        self.rng = random.Random(seed)
        self.limits = Limits(fact_grace_ms=grace)
        self.ledger = Ledger(0, self.limits)
        self.ledger.safety_defaults = {"L0": 3, "L5": 1}
        self.newest = 1000
        self.n = 0
        self.log: list = []
        self.in_flight: list = []  # (entry, undo, state before)
        self.snapshots: list[tuple[int, bytes]] = []
        self.grace = grace

    def pos(self) -> tuple[str, str]:
        return self.rng.choice(SKUS), self.rng.choice(LOCS)

    def one(self) -> None:
        rng, led = self.rng, self.ledger
        self.n += 1
        roll = rng.random()
        if roll < 0.45:
            self.newest += rng.randint(0, 2)
            s, loc = self.pos()
            led.record_fact(Fact(f"e{self.n}", rng.choice(["pos", "wms"]), rng.choice(KINDS), s, loc,
                                 rng.randint(1, 9), self.newest - rng.randint(0, self.grace)))
        elif roll < 0.53:
            s, loc = self.pos()
            led.move_hold(s, loc, rng.randint(-2, 5), rng.randint(-1, 3))
        elif roll < 0.6:  # a Reserve of one line (``Ledger.reserve_new``): held, or refused and remembered
            s, loc = self.pos()
            reserve(led, ReserveCommand(f"r{self.n}", "", "", (LineRequest(s, loc, rng.randint(1, 4)),), 60_000, False),
                    self.newest)
        elif roll < 0.67:
            s, loc = self.pos()
            led.ship(s, loc, rng.randint(1, 3), self.newest - rng.randint(0, self.grace), f"sh{self.n}")
        elif roll < 0.75:
            s, loc = self.pos()
            led.set_safety_stock(s, loc, rng.randint(0, 4))
        else:
            k = rng.randint(1, 60)
            skus = rng.sample(SKUS, rng.randint(1, 12))
            locs = rng.sample(LOCS, rng.randint(1, 6))
            si = np.array([rng.randrange(len(skus)) for _ in range(k)], dtype=np.uint32)
            li = np.array([rng.randrange(len(locs)) for _ in range(k)], dtype=np.uint32)
            self.newest += rng.randint(0, 2)
            at = np.array([self.newest - rng.randint(0, max(0, self.grace // 2)) for _ in range(k)], dtype=np.int64)
            qty = np.array([rng.randint(0, 50) for _ in range(k)], dtype=np.int64)
            led.load_counts(CountRows("erp", skus, locs, si, li, qty, at))

    def batch(self) -> None:
        led, rng = self.ledger, self.rng
        before = state(led) if not self.in_flight else None
        there = positions(led)
        for _ in range(rng.randint(1, 5)):
            mark = led.mark()
            snap_before = state(led)
            for _ in range(rng.randint(1, 3)):
                self.one()
            if rng.random() < 0.15:  # a command failed half-way
                led.rollback_to(mark)
                assert state(led) == snap_before
            layout(led.store)
        if rng.random() < 0.1:
            led.rollback()
            if before is not None:
                assert state(led) == before
            return
        entry, undo, moved = led.seal(10)
        # C4: what a batch made is named among its moves (a reader of durable state takes it as absent),
        # and only that (a command taken back by ``rollback_to`` may leave the name of a position gone again).
        new = {(sku, location) for sku, location, delta in moved if delta is MADE}
        assert new & positions(led) == positions(led) - there and not new & there
        self.in_flight.append((entry, undo, before))
        layout(led.store)
        bookkeeping(led)

    def fail(self) -> None:
        for _entry, undo, before in reversed(self.in_flight):
            self.ledger.revert(undo)
            layout(self.ledger.store)
            if before is not None:
                assert state(self.ledger) == before
        bookkeeping(self.ledger)
        self.in_flight = []

    def land(self) -> None:
        self.log.append(self.in_flight.pop(0)[0])

    def maintain(self) -> None:
        led = self.ledger
        led.forget_old_facts()
        led.compact_some(limit=self.rng.choice([1, 3, 50]))
        layout(led.store)
        bookkeeping(led)
        if self.rng.random() < 0.4:
            data = msgspec.msgpack.encode(led.snapshot())
            self.snapshots.append((len(self.log), data))
            if self.rng.random() < 0.5:  # carry on from the restored ledger
                restored = Ledger.restore(0, self.limits, msgspec.msgpack.decode(data, type=LedgerSnapshot))
                restored.safety_defaults = led.safety_defaults
                assert state(restored) == state(led)
                layout(restored.store)
                bookkeeping(restored)
                self.ledger = restored

    def end(self) -> None:
        while self.in_flight:
            self.land()
        final = state(self.ledger)
        for at, data in [(0, None), *self.snapshots]:
            again = Ledger(0, self.limits) if data is None else Ledger.restore(
                0, self.limits, msgspec.msgpack.decode(data, type=LedgerSnapshot))
            for entry in self.log[at:]:
                again.replay(entry)
            layout(again.store)
            bookkeeping(again)
            assert state(again) == final, at


@pytest.mark.parametrize("seed", range(12))
def test_every_revert_restores_and_replay_equals_live(seed: int) -> None:
    run = Run(seed, grace=random.Random(seed).choice([0, 5, 40]))
    for _ in range(random.Random(seed).randint(20, 70)):
        roll = run.rng.random()
        if roll < 0.12 and run.in_flight:
            run.fail()
        elif roll < 0.35 and run.in_flight:
            run.land()
        elif roll < 0.45 and not run.in_flight:
            run.maintain()
        elif len(run.in_flight) < 3:
            run.batch()
        else:
            run.land()
    run.end()


def test_a_batch_rolled_back_whole_leaves_no_position_made_to_the_next_batch_C4() -> None:
    """The next batch's moves name only what it made: a position the rolled-back batch made is gone,
    and a reader of durable state must not take it for one made by a batch in flight."""
    ledger = Ledger(0, Limits())
    assert ledger.record_fact(Fact("r1", "pos", FactKind.RECEIPT, "S0", "L0", 5, 1_000))[0] is not None
    ledger.rollback()
    assert not ledger.store.exists("S0", "L0")
    ledger.record_fact(Fact("r2", "pos", FactKind.RECEIPT, "S1", "L0", 5, 1_000))
    _, _, moved = ledger.seal(2_000)
    assert {(sku, loc) for sku, loc, delta in moved if delta is MADE} == {("S1", "L0")}
