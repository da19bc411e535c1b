"""A shard's sweep of stale expiry entries (R3) goes a slice at a time with a turn of the event loop
between, and no hold loses its expiry across slices, an entry requeued meanwhile or a sweep stopped
part-way."""

from __future__ import annotations

import asyncio
import heapq
from collections.abc import AsyncIterator

import pytest

from atp_service.engine import shard as shard_module
from atp_service.engine.clock import ManualClock
from atp_service.engine.shard import ShardActor
from atp_service.storage.log import LogStore, connect
from reservation import Fact, FactKind, Ledger, Limits, LineRequest, ReserveCommand, release, reserve
from tests.sim.world import sim_config

SLICE = 100
HOLDS, RELEASED = 6000, 5000  # 6,000 entries for 1,000 live holds: past 2 x live + EXPIRY_SLACK
NOW = 1_700_000_000_000
TTL = 600_000


@pytest.fixture
async def store(redis_url: str) -> AsyncIterator[LogStore]:
    client = connect(redis_url, 5.0)
    log_store = LogStore(client, "sweep:", pipeline_max=64)
    await log_store.claim(1)
    yield log_store
    await client.aclose()


def _holds_mostly_released() -> Ledger:
    ledger = Ledger(0, Limits())
    ledger.record_fact(Fact("c", "erp", FactKind.COUNT, "S", "DC", 100_000, NOW))
    for i in range(HOLDS):
        reserve(ledger, ReserveCommand(f"r{i}", "o", "web", (LineRequest("S", "DC", 1),), TTL + i, False), NOW)
    for i in range(RELEASED):
        release(ledger, f"r{i}", (), "", NOW, ledger.limits)
    ledger.commit(NOW)
    assert ledger.housekeeping_wanted()
    return ledger


def _expiring(ledger: Ledger) -> list[str]:
    return ledger.due(NOW + 2 * TTL + HOLDS)


async def test_a_shard_sweeps_stale_expiry_entries_a_slice_at_a_time(
        store: LogStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shard_module, "EXPIRY_SWEEP_SLICE", SLICE)
    ledger = _holds_mostly_released()
    actor = ShardActor(0, ledger, store, ManualClock(NOW), sim_config(shards=1).shard_settings, 0)
    actor.start()
    sizes: list[int] = []
    try:
        actor.request_maintenance()
        for _ in range(100_000):  # a bound in turns, not time: the sweep ends within it or the test fails
            sizes.append(len(ledger._expiry))
            if len(ledger._expiry) == HOLDS - RELEASED:
                break
            await asyncio.sleep(0)
        else:
            raise AssertionError("the stale entries were never dropped")
    finally:
        await actor.stop()
    # Between slices the heap is set aside (the fresh one is empty): the loop turned there.
    assert sizes.count(0) >= HOLDS // SLICE - 1, "the sweep went in one go"
    assert _expiring(ledger) == [f"r{i}" for i in range(RELEASED, HOLDS)]  # R3: every live hold still expires


def test_an_entry_requeued_between_slices_and_a_sweep_stopped_part_way_keep_every_expiry() -> None:
    ledger = _holds_mostly_released()
    last = ledger.reservations[f"r{HOLDS - 1}"]
    entry = (last.expires_at, last.reservation_id)
    ledger._expiry.remove(entry)  # popped by an expiry spanning shards, whose coordinator run is under way
    heapq.heapify(ledger._expiry)
    steps = ledger.expiry_sweep(SLICE)
    next(steps)
    next(steps)  # two slices (released holds only) looked at, the rest not
    ledger.requeue_expiry(*entry)  # that expiry failed meanwhile: it is tried again later (R3)
    steps.close()
    assert len(ledger._expiry) == HOLDS - 2 * SLICE  # the unlooked entries kept whole, the requeued one too
    assert _expiring(ledger) == [f"r{i}" for i in range(RELEASED, HOLDS)]  # each live hold once, in order
