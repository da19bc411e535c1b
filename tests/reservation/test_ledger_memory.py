"""The ledger's maps that grow with the estate stay out of the cyclic garbage collector's view.

A tracked dict is walked by every full collection, entry by entry, while the service holds the
GIL: with a map per shard of every position and remembered fact, that walk was a stall of every
call in flight that grew with the estate. CPython keeps a dict untracked while all it holds is
untracked, so these maps must never receive a tracked key or value.
"""

from __future__ import annotations

import gc

import msgspec

from reservation import Fact, FactKind, Ledger, LedgerSnapshot, Limits, release, reserve
from reservation import _orders as orders
from reservation._expiry import EXPIRY_SLACK
from tests.reservation.helpers import cmd, ledger_with


def _maps(ledger: Ledger) -> dict[str, object]:
    return {"open fact identities": ledger.memory.open, "holds": ledger._holds_at._at,
            "reservations": ledger.reservations}


def test_new_positions_facts_and_holds_keep_the_big_maps_untracked() -> None:
    ledger = ledger_with({("A", "S1"): 10})
    gc.collect()  # what existed is untracked now; only what follows can track a map again
    ledger.record_fact(Fact("new-1", "pos", FactKind.RECEIPT, "B", "S2", 5, 2_000))  # new position, new fact
    reserve(ledger, cmd("r1", ("B", "S2", 2), ("A", "S1", 1)), 3_000)  # new held positions
    ledger.commit(3_000)
    assert {name: gc.is_tracked(m) for name, m in _maps(ledger).items()} == dict.fromkeys(_maps(ledger), False)


def test_restored_ledger_keeps_its_maps_untracked_and_its_histories() -> None:
    live = ledger_with({("A", "S1"): 10, ("B", "S2"): 3})
    reserve(live, cmd("r1", ("A", "S1", 4)), 3_000)
    live.commit(3_000)
    snap = msgspec.msgpack.decode(msgspec.msgpack.encode(live.snapshot()), type=LedgerSnapshot)
    restored = Ledger.restore(0, Limits(), snap)
    for position in (("A", "S1"), ("B", "S2")):
        assert restored.history(*position) == live.history(*position) is not None
    assert list(restored.holds_at("A", "S1")) == list(live.holds_at("A", "S1"))
    assert not any(gc.is_tracked(m) for m in _maps(restored).values())


def test_a_restored_ledger_forgets_resolved_reservations_when_the_live_one_would() -> None:
    """The snapshot lists reservations in the order they were made; resolved in another order, a
    restored ledger forgot them in the order made, and kept one past its retention (R5's window)."""
    limits = Limits()
    live = ledger_with({("A", "S1"): 10})
    reserve(live, cmd("made-first", ("A", "S1", 1)), 2_000)
    reserve(live, cmd("made-second", ("A", "S1", 1)), 2_000)
    live.commit(2_000)
    release(live, "made-second", (), "", 3_000, limits)  # resolved first
    live.commit(3_000)
    release(live, "made-first", (), "", 5_000, limits)
    live.commit(5_000)
    snap = msgspec.msgpack.decode(msgspec.msgpack.encode(live.snapshot()), type=LedgerSnapshot)
    restored = Ledger.restore(0, limits, snap)
    after_the_first = 3_000 + limits.retention_ms + 1  # past made-second's retention, not made-first's
    assert live.evict(after_the_first) == ["made-second"]
    assert restored.evict(after_the_first) == ["made-second"]


def test_an_order_whose_expiry_is_still_pending_is_not_forgotten_after_the_retention_R3() -> None:
    """An order recorded EXPIRED with its parts' release still pending (a part's group unreachable)
    is not resolved yet: forgotten, its saga found no record and the parts held their units for good.
    Once saved settled, it is forgotten a retention after that."""
    limits = Limits(retention_ms=60_000)
    ledger = ledger_with({("A", "S1"): 10}, limits)
    order = orders.open_order(cmd("o", ("A", "S1", 3), ("B", "S1", 2)), (0, 1), 2_000)
    ledger.save(order)
    expiring = orders.abandoned(order, 3_000)
    ledger.save(expiring)
    ledger.commit(3_000)
    assert ledger.evict(3_000 + limits.retention_ms + 1) == []
    assert ledger.reservation("o") == expiring
    ledger.save(orders.settled(expiring, 200_000))
    ledger.commit(200_000)
    assert ledger.evict(200_000 + limits.retention_ms) == []
    assert ledger.evict(200_000 + limits.retention_ms + 1) == ["o"]


def test_the_expiry_heap_is_bounded_by_the_live_reservations_not_by_their_ttls() -> None:
    """Holds released before their TTL left (expires_at, id) in the heap until the TTL passed (up to
    7 days, past retention, outside max_live_reservations_per_shard). Between batches the stale
    entries go once they outnumber the live ones by EXPIRY_SLACK; a hold still held keeps its own."""
    limits = Limits()
    holds = EXPIRY_SLACK + 10
    ledger = ledger_with({("A", "S1"): holds + 1})
    for n in range(holds + 1):
        reserve(ledger, cmd(f"r{n}", ("A", "S1", 1), ttl=limits.max_ttl_seconds), 2_000)
    ledger.commit(2_000)
    for n in range(holds):
        release(ledger, f"r{n}", (), "", 3_000, limits)
    ledger.commit(3_000)
    assert ledger.live_reservations == 1 and ledger.housekeeping_wanted()
    assert ledger.sweep_expiry() == holds
    assert ledger._expiry == [(2_000 + limits.max_ttl_seconds * 1000, f"r{holds}")]
    assert ledger.sweep_expiry() == 0 and not ledger.housekeeping_wanted()
    assert ledger.due(2_000 + limits.max_ttl_seconds * 1000) == [f"r{holds}"]
