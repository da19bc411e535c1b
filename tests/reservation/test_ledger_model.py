"""A seeded model check of one shard's fact state against the rules, through everything that moves it.

Each run mixes facts of three sources with ties, counts, resends and conflicting resends, service
shipments, batches in flight whose append fails (reverted newest first, some of them landing after
all and replayed), maintenance between drained batches (E8 forgetting and sealing, E9 sweeps) and
snapshots. After every batch ``on_hand`` must equal the reference fold (E1/E2 by the book); at the
end every snapshot plus the rest of the log must equal live (E10), the names' use counts and the
delta pool's slots must add up, and every identity applied inside the window must still be known (E8).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import msgspec
import numpy as np
import pytest

from reservation import Fact, FactKind, FactOutcome, Ledger, LedgerSnapshot, Limits, _dedupe
from reservation._dedupe import digest

POSITIONS = [("A", "S1"), ("B", "S1"), ("A", "S2")]
SOURCES = ["pos", "wms", "erp"]
KINDS = [FactKind.SALE, FactKind.RECEIPT, FactKind.ADJUST, FactKind.COUNT, FactKind.COUNT]
Identity = tuple[str, str, str, str]
Folded = tuple[int, int, str, str, str, str, int]  # E1 key, position, signed quantity (a count: its quantity)


def reference_on_hand(applied: dict[Identity, Folded]) -> dict[tuple[str, str], int]:
    out: dict[tuple[str, str], int] = {}
    for _, rank, _, _, sku, loc, quantity in sorted(applied.values(), key=lambda v: v[:4]):
        out[(sku, loc)] = quantity if rank == 1 else out.get((sku, loc), 0) + quantity
    return out


def check_bookkeeping(ledger: Ledger) -> None:
    """Names' use counts equal the columns' references; every pool slot is chained once or free."""
    store, pool = ledger.store, ledger.histories.pool
    n, m = store.row_count, store.location_count
    uses = np.zeros(len(store.names._names), dtype=np.int64)
    for column in (*store.name_users(), pool.sources):
        uses += np.bincount(column.ravel(), minlength=len(uses))[: len(uses)]
    assert uses[1:].tolist() == store.names._uses[1:]
    free = set(pool._free[: pool._top].tolist())
    chained = [slot for r in range(n) for c in range(m) for slot in pool.slots(store.head_at(r, c))]
    assert len(free) == pool._top and len(set(chained)) == len(chained) and not free & set(chained)
    assert len(chained) + len(free) == len(pool.times) - 1


@dataclass
class Run:
    rng: random.Random
    grace: int
    ledger: Ledger
    applied: dict[Identity, Folded] = field(default_factory=dict)
    payloads: dict[Identity, tuple[int, int, int]] = field(default_factory=dict)
    in_flight: list[tuple[Any, Any, dict[Identity, Folded]]] = field(default_factory=list)
    log: list[Any] = field(default_factory=list)
    snapshots: list[tuple[int, bytes | None]] = field(default_factory=lambda: [(0, None)])
    sent: list[Fact] = field(default_factory=list)
    newest: int = 10
    shipments: int = 0

    def fail_appends(self) -> None:
        """The appends in flight fail: reverted newest first; a prefix of them landed after all."""
        for _, undo, ids in reversed(self.in_flight):
            self.ledger.revert(undo)
            for identity in ids:
                self.applied.pop(identity, None)
        for entry, _, ids in self.in_flight[: self.rng.randint(0, len(self.in_flight))]:
            self.ledger.replay(entry)
            self.log.append(entry)
            self.applied.update(ids)
        self.in_flight = []

    def maintain(self) -> None:
        self.ledger.forget_old_facts()
        self.ledger.compact_some(limit=self.rng.choice([1, 2, 100]))
        check_bookkeeping(self.ledger)
        if self.rng.random() < 0.5:
            self.snapshots.append((len(self.log), msgspec.msgpack.encode(self.ledger.snapshot())))

    def batch(self, step: int) -> None:
        added: dict[Identity, Folded] = {}
        for _ in range(self.rng.randint(1, 3)):
            if self.rng.random() < 0.1:
                self.ship(added)
            else:
                self.record(self.next_fact(step), added)
        entry, undo, _ = self.ledger.seal(10)
        self.in_flight.append((entry, undo, added))
        for key, quantity in reference_on_hand(self.applied).items():
            assert self.ledger.quantities(*key).on_hand == quantity, (step, key)

    def next_fact(self, step: int) -> Fact:
        if self.sent and self.rng.random() < 0.25:
            f = self.rng.choice(self.sent)
            if self.rng.random() < 0.4:  # the same identity with another payload
                f = Fact(f.event_id, f.source, f.kind, f.sku, f.location, f.quantity + 1, f.event_time)
            return f
        self.newest += self.rng.randint(0, 2)
        sku, loc = self.rng.choice(POSITIONS)
        f = Fact(f"e{step}_{len(self.sent)}", self.rng.choice(SOURCES), self.rng.choice(KINDS), sku, loc,
                 self.rng.randint(1, 9), self.newest - self.rng.randint(0, self.grace + 2))
        self.sent.append(f)
        return f

    def ship(self, added: dict[Identity, Folded]) -> None:
        sku, loc = self.rng.choice(POSITIONS)
        self.shipments += 1
        at, ref = self.newest - self.rng.randint(0, self.grace), f"ship{self.shipments}"
        self.ledger.ship(sku, loc, 1, at, ref)
        added[("", ref, sku, loc)] = self.applied[("", ref, sku, loc)] = (at, 0, "", ref, sku, loc, -1)

    def record(self, f: Fact, added: dict[Identity, Folded]) -> None:
        identity = (f.source, f.event_id, f.sku, f.location)
        late = f.event_time < self.ledger.stream_time - self.grace
        outcome, _ = self.ledger.record_fact(f)
        payload = (f.event_time, int(f.kind), f.quantity)
        if identity in self.applied:  # E8; once late, forgetting may have dropped it (E6 decides)
            expected = {FactOutcome.DUPLICATE if self.payloads[identity] == payload else FactOutcome.QUARANTINED}
            if late:
                expected |= {FactOutcome.QUARANTINED}
        else:
            expected = {FactOutcome.QUARANTINED} if late else {FactOutcome.APPLIED, FactOutcome.ABSORBED}
        assert outcome in expected, (f, outcome, expected)
        if outcome in (FactOutcome.APPLIED, FactOutcome.ABSORBED):
            signed = -f.quantity if f.kind == FactKind.SALE else f.quantity
            folded = (f.event_time, int(f.kind == FactKind.COUNT), f.source, f.event_id, f.sku, f.location, signed)
            added[identity] = self.applied[identity] = folded
            self.payloads[identity] = payload

    def check_end(self, limits: Limits) -> None:
        self.log.extend(entry for entry, _, _ in self.in_flight)
        self.in_flight = []
        check_bookkeeping(self.ledger)
        horizon = self.ledger.stream_time - self.grace
        for at, data in self.snapshots:
            again = Ledger(0, limits) if data is None else Ledger.restore(
                0, limits, msgspec.msgpack.decode(data, type=LedgerSnapshot))
            for entry in self.log[at:]:
                again.replay(entry)
            assert sorted(again.store.items()) == sorted(self.ledger.store.items()), at  # E10
            assert [again.history(*p) for p in POSITIONS] == [self.ledger.history(*p) for p in POSITIONS], at
            assert again.stream_time == self.ledger.stream_time
            check_bookkeeping(again)
            for identity, folded in self.applied.items():  # E8 covers the window, restored or not
                if identity[0] and folded[0] >= horizon:
                    for ledger in (self.ledger, again):
                        assert ledger.memory.payload(digest(*identity), *identity) is not None, (at, identity)


@pytest.mark.parametrize(("grace", "seal_at"), [(0, 1), (5, 2), (5, 4), (30, 3)])
def test_fact_state_follows_the_rules_through_faults_maintenance_and_snapshots_E1_E10(
        grace: int, seal_at: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_dedupe, "SEAL_AT", seal_at)  # seal all the time: the sealed columns are searched
    for seed in range(150):
        rng = random.Random(seed)
        limits = Limits(fact_grace_ms=grace)
        run = Run(rng, grace, Ledger(0, limits))
        for step in range(rng.randint(5, 60)):
            roll = rng.random()
            if roll < 0.12 and run.in_flight:
                run.fail_appends()
            elif roll < 0.30 and run.in_flight:
                run.log.append(run.in_flight.pop(0)[0])
            elif roll < 0.42 and not run.in_flight:
                run.maintain()
            else:
                run.batch(step)
        run.check_end(limits)
