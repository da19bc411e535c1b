"""A shard recovered from a real Redis lets the event loop run between slices of its snapshot's
reservations and of its log's events: a group taken over (ownership by leases) must not hold the
calls and lease renewals of the groups this process already serves (E10 unchanged)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from atp_service.engine.recovery import recover_shard
from atp_service.storage.log import LogStore, encode_snapshot
from reservation import Fact, FactKind, FactOutcome, Ledger, Limits, LineRequest, ReserveCommand, encode_entry, reserve

SLICE = 100
IN_SNAPSHOT = 5 * SLICE  # reservations the snapshot holds: 5 slices, 4 turns between
LOGGED_ENTRIES, RESERVES_EACH = 50, 10  # 2 events a Reserve: 1,000 events, 10 slices
NOW = 1_700_000_000_000


def _reserve_some(ledger: Ledger, first: int, count: int) -> bytes:
    for i in range(first, first + count):
        cmd = ReserveCommand(f"r{i}", "o", "web", (LineRequest(f"S{i % 7}", "DC", 1),), 600_000, False)
        reserve(ledger, cmd, NOW)
    return encode_entry(ledger.commit(NOW))


async def _written(store: LogStore) -> Ledger:
    """Shard 0 in Redis: a snapshot at entry 1 holding IN_SNAPSHOT reservations, then LOGGED_ENTRIES more."""
    ledger = Ledger(0, Limits())
    for sku in range(7):
        ledger.record_fact(Fact(f"c{sku}", "erp", FactKind.COUNT, f"S{sku}", "DC", 100_000, NOW))
    await store.submit(0, 1, _reserve_some(ledger, 0, IN_SNAPSHOT))
    await store.write_snapshot(0, 1, encode_snapshot(1, ledger.snapshot()))
    for n in range(LOGGED_ENTRIES):
        await store.submit(0, 2 + n, _reserve_some(ledger, IN_SNAPSHOT + n * RESERVES_EACH, RESERVES_EACH))
    return ledger


async def test_a_recovering_shard_lets_other_work_run_between_slices(store: LogStore) -> None:
    written = await _written(store)
    phase: list[Any] = ["reading the snapshot"]
    read_snapshot, read_log = store.load_snapshot, store.entries_after

    async def load_snapshot(shard: int) -> Any:  # observed, not replaced: Redis answers
        snap = await read_snapshot(shard)
        phase[0] = "restoring"
        return snap

    async def entries_after(shard: int, seq: int, chunk: int = 2000) -> AsyncIterator[tuple[int, bytes]]:
        phase[0] = "reading the log"
        async for entry in read_log(shard, seq, chunk):
            phase[0] = entry[0]  # replaying this entry until the next is asked for
            yield entry
        phase[0] = "done"

    store.load_snapshot, store.entries_after = load_snapshot, entries_after  # type: ignore[method-assign]
    seen: list[Any] = []

    async def ticker() -> None:
        while True:
            seen.append(phase[0])
            await asyncio.sleep(0)

    ticking = asyncio.ensure_future(ticker())
    try:
        ledger, seq, replayed = await recover_shard(store, 0, Limits(), restore_slice=SLICE, replay_slice=SLICE)
    finally:
        ticking.cancel()
    assert (seq, replayed) == (1 + LOGGED_ENTRIES, LOGGED_ENTRIES)
    assert seen.count("restoring") >= IN_SNAPSHOT // SLICE - 1, "the snapshot's reservations went in one go"
    replay_turns = {p for p in seen if isinstance(p, int)}
    assert len(replay_turns) >= LOGGED_ENTRIES * RESERVES_EACH * 2 // SLICE - 1, "the log went in one go"
    assert ledger.reservations == written.reservations  # E10: replay equals live, sliced or not
    assert ledger.live_reservations == written.live_reservations == IN_SNAPSHOT + LOGGED_ENTRIES * RESERVES_EACH
    for sku in range(7):
        assert ledger.quantities(f"S{sku}", "DC") == written.quantities(f"S{sku}", "DC")
    assert ledger.due(NOW + 600_001) == written.due(NOW + 600_001)


@pytest.mark.parametrize("kind", [FactKind.COUNT, FactKind.RECEIPT])
async def test_a_recovering_shard_restores_its_names_and_remembered_facts_a_slice_at_a_time(
        store: LogStore, kind: FactKind) -> None:
    """Counts sent as facts name each position's own event_id, and every other fact applied inside the grace
    window is remembered (E8) in the open map until sealed (up to an eighth of the sealed rows): a shard held
    millions of either, restored in one go at ~0.4 µs each (seconds in which a process serving other groups
    answered no call and renewed no lease). They go a slice at a time too, and are the same after (E10)."""
    ledger = Ledger(0, Limits())
    facts = 5 * SLICE  # COUNT: one name each (the event_id), RECEIPT: one remembered identity each: 4 turns between
    sent = [Fact(f"fact-{i}", "wms", kind, f"S{i}", "DC", i + 1, NOW) for i in range(facts)]
    for fact in sent:
        ledger.record_fact(fact)
    await store.submit(0, 1, encode_entry(ledger.commit(NOW)))
    await store.write_snapshot(0, 1, encode_snapshot(1, ledger.snapshot()))
    restoring = [False]
    read_snapshot, read_log = store.load_snapshot, store.entries_after

    async def load_snapshot(shard: int) -> Any:  # observed, not replaced: Redis answers
        snap = await read_snapshot(shard)
        restoring[0] = True
        return snap

    async def entries_after(shard: int, seq: int, chunk: int = 2000) -> AsyncIterator[tuple[int, bytes]]:
        restoring[0] = False  # restored: the turns from here on are the log's
        async for entry in read_log(shard, seq, chunk):
            yield entry

    store.load_snapshot, store.entries_after = load_snapshot, entries_after  # type: ignore[method-assign]
    turns = 0

    async def ticker() -> None:
        nonlocal turns
        while True:
            turns += restoring[0]
            await asyncio.sleep(0)

    ticking = asyncio.ensure_future(ticker())
    try:
        again, seq, _ = await recover_shard(store, 0, Limits(), restore_slice=SLICE)
    finally:
        ticking.cancel()
    assert seq == 1
    assert turns >= facts // SLICE - 1, "restored in one go"
    assert again.store.names._index == ledger.store.names._index
    assert again.memory.open == ledger.memory.open
    for fact in sent[:: SLICE - 1]:  # E8: each is known, a resend of it a duplicate
        assert again.record_fact(fact) == (FactOutcome.DUPLICATE, "")
