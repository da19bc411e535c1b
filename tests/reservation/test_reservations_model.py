"""A seeded model check of one shard's reservations against snapshot plus replay (E10, R3, R5, R7).

Each run mixes receipts, reserves (ids reused, one or two lines), confirms, whole and partial
releases, fulfilments, expiries, evictions of resolved records (a retention shorter than a batch's
time in flight), batches in flight whose append fails
(reverted newest first, a prefix of them landing after all and replayed) and snapshots between
drained batches. At the end every snapshot plus the rest of the log must equal live: positions,
reservation records, the live count, the expiry heap's valid entries (one for every HELD record:
R3), the resolved records kept for R5, the holds index per position, and stream time.
"""

from __future__ import annotations

import contextlib
import random

import msgspec
import pytest

from reservation import DomainError, Fact, FactKind, Ledger, LedgerSnapshot, Limits, LogEntry
from reservation import _operations as ops
from reservation._model import TERMINAL, LineRequest, ReserveCommand, State
from reservation._undo import Undo

POSITIONS = [("A", "S1"), ("B", "S1"), ("A", "S2")]
LIMITS = Limits(retention_ms=5)  # shorter than a batch's time in flight here: eviction meets it


def _expiring(ledger: Ledger) -> list[str]:
    """The ids the expiry heap would expire: those of HELD records whose deadline it holds."""
    return sorted({rid for at, rid in ledger._expiry
                   if (rec := ledger.reservations.get(rid)) and rec.state == State.HELD and rec.expires_at == at})


def _kept_resolved(ledger: Ledger) -> list[tuple[int, str]]:
    return sorted({(at, rid) for at, rid in ledger._resolved
                   if (rec := ledger.reservations.get(rid)) and rec.updated_at == at and rec.state in TERMINAL})


def _drop_evicted(live: Ledger, again: Ledger) -> None:
    """Eviction of resolved records is not logged: records live evicted may still be in ``again``."""
    extra = set(again.reservations) - set(live.reservations)
    assert all(again.reservations[rid].state in TERMINAL for rid in extra)
    for rid in extra:
        del again.reservations[rid]
    again._resolved = type(again._resolved)(item for item in again._resolved if item[1] not in extra)


def _assert_same(live: Ledger, again: Ledger, where: str) -> None:
    assert sorted(again.store.items()) == sorted(live.store.items()), where
    _drop_evicted(live, again)
    assert again.reservations == live.reservations, where
    assert again.live_reservations == live.live_reservations, where
    assert _expiring(again) == _expiring(live), where
    assert _expiring(live) == sorted(rid for rid, rec in live.reservations.items() if rec.state == State.HELD), where
    assert _kept_resolved(again) == _kept_resolved(live), where
    for sku, location in POSITIONS:
        assert (sorted(h.reservation_id for h in again.holds_at(sku, location))
                == sorted(h.reservation_id for h in live.holds_at(sku, location))), where
    assert again.stream_time == live.stream_time, where


def _step(ledger: Ledger, rng: random.Random, step: int, now: int, ids: list[str], unsure_from: int | None) -> None:
    r = rng.random()
    if r < 0.15:
        sku, location = rng.choice(POSITIONS)
        ledger.record_fact(Fact(f"e{step}", "erp", FactKind.RECEIPT, sku, location, rng.randint(1, 5), now))
    elif r < 0.45:
        rid = f"r{rng.randint(0, 40)}"
        lines = tuple(LineRequest(s, loc, rng.randint(1, 3)) for s, loc in rng.sample(POSITIONS, rng.randint(1, 2)))
        ops.reserve(ledger, ReserveCommand(rid, "", "", lines, rng.randint(1, 30), rng.random() < 0.5), now)
        ids.append(rid)
    elif r < 0.55 and ids:
        ops.confirm(ledger, rng.choice(ids), now)
    elif r < 0.65 and ids:
        rid = rng.choice(ids)
        record, lines = ledger.reservation(rid), ()
        if record and rng.random() < 0.5:
            line = rng.choice(record.lines)
            lines = (LineRequest(line.sku, line.location, 1),)
        ops.release(ledger, rid, lines, f"op{step}" if lines else "", now, LIMITS)
    elif r < 0.72 and ids:
        ops.fulfill(ledger, rng.choice(ids), (), "", now, LIMITS)
    elif r < 0.85:
        for rid in ledger.due(now, rng.randint(1, 5)):
            ops.expire(ledger, rid, now)
    else:
        ledger.evict(now, rng.randint(1, 5), unsure_from)  # not what a batch in flight resolved (R7)


@pytest.mark.parametrize("seed", range(40))
def test_snapshot_plus_replay_equals_live_reservations_E10(seed: int) -> None:
    rng = random.Random(seed)
    live, now = Ledger(0, LIMITS), 1_000
    log: list[LogEntry] = []
    snapshots: list[tuple[int, bytes | None]] = [(0, None)]
    in_flight: list[tuple[LogEntry, list[Undo]]] = []
    ids: list[str] = []
    for step in range(300):
        now += rng.randint(0, 5)
        with contextlib.suppress(DomainError):  # a refusal changes nothing; the model goes on
            _step(live, rng, step, now, ids, min((entry.ts for entry, _ in in_flight), default=None))
        if live.pending:
            entry, undo, _ = live.seal(now)
            in_flight.append((entry, undo))
        else:
            live.commit(now)
        if in_flight and rng.random() < 0.2:  # the appends fail (R7): undone newest first, a prefix landed
            for _, undo in reversed(in_flight):
                live.revert(undo)
            for entry, _ in in_flight[:rng.randint(0, len(in_flight))]:
                live.replay(entry)
                log.append(entry)
            in_flight = []
        elif rng.random() < 0.5:
            log.extend(entry for entry, _ in in_flight)
            in_flight = []
        if not in_flight and rng.random() < 0.2:
            if rng.random() < 0.5:
                live.sweep_expiry()
            snapshots.append((len(log), msgspec.msgpack.encode(live.snapshot())))
    log.extend(entry for entry, _ in in_flight)
    for at, data in snapshots:
        again = (Ledger(0, LIMITS) if data is None
                 else Ledger.restore(0, LIMITS, msgspec.msgpack.decode(data, type=LedgerSnapshot)))
        for entry in log[at:]:
            again.replay(entry)
        _assert_same(live, again, f"seed {seed}, snapshot after {at} entries")
