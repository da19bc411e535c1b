"""R7: Redis coming back from older data (a restart from an older RDB or AOF, a failover to a lagging
replica) while a shard is recovered: its snapshot read from the Redis before, its log from the one after.

Nothing is appended while a shard is recovered, so its log's newest id changing between the recovery's
first read and its last means Redis itself changed under it: the reads are of two states, and what they
add up to is neither. Recovery reads again from the snapshot; ``LogCutShort`` (exit status 2, "restore
Redis from a backup") stays for a log that really ends short of its snapshot (trimmed or deleted by hand,
``test_log_cut_short.py``). The older data is made with the real Redis, as ``test_redis_lost_tail.py``
does: every key DUMPed at the save point, later every key deleted and RESTOREd in one transaction."""

from __future__ import annotations

import logging
from typing import Any

import pytest
import redis.asyncio as aioredis

from atp_service.engine.recovery import recover_shard
from atp_service.storage.durability import LogDiverged
from atp_service.storage.log import LogStore, encode_snapshot
from reservation import Fact, FactKind, Ledger, Limits, encode_entry
from tests.atp_service.app.test_redis_lost_tail import restored, saved
from tests.atp_service.edge.test_api import receipt
from tests.conftest import ServiceFactory
from tests.waiting import until

NOW = 1_700_000_000_000


async def _received(store: LogStore, ledger: Ledger, seq: int) -> None:
    """Entry ``seq`` of shard 0: a receipt of one unit of S at DC, acknowledged durable."""
    ledger.record_fact(Fact(f"e{seq}", "wms", FactKind.RECEIPT, "S", "DC", 1, NOW + seq))
    await store.submit(0, seq, encode_entry(ledger.commit(NOW + seq)))


async def test_a_shard_recovered_while_redis_restarts_from_older_data_serves_what_redis_holds(
        store: LogStore, redis_url: str, caplog: pytest.LogCaptureFixture) -> None:
    """Defect: a process taking a group (or starting) read the snapshot at entry 6 from Redis, then Redis
    came back from a save holding its snapshot at entry 2 and its log up to entry 3, and the log was read
    from that one: nothing after entry 6, its newest id 3 — refused as a log cut short by hand
    (``LogCutShort``: at a start exit status 2 and "restore Redis from a backup"; with leases the group
    given back with that ERROR), though Redis held a whole, consistent state to serve."""
    ledger = Ledger(0, Limits())
    for seq in (1, 2):
        await _received(store, ledger, seq)
    await store.write_snapshot(0, 2, encode_snapshot(2, ledger.snapshot()))
    await _received(store, ledger, 3)
    direct = aioredis.Redis.from_url(redis_url)
    try:
        image = await saved(direct)  # snapshot at entry 2, log 2..3: 3 units received
        for seq in range(4, 7):
            await _received(store, ledger, seq)
        await store.write_snapshot(0, 6, encode_snapshot(6, ledger.snapshot()))
        for seq in (7, 8):
            await _received(store, ledger, seq)
        read_snapshot = store.load_snapshot

        async def load_snapshot_then_redis_restarts(shard: int) -> Any:  # observed, not replaced: Redis answers
            snap = await read_snapshot(shard)
            if snap is not None and snap.seq == 6:
                await restored(direct, image, at_once=True)  # the fault: once, after the newer snapshot's read
            return snap

        store.load_snapshot = load_snapshot_then_redis_restarts  # type: ignore[method-assign]
        caplog.set_level(logging.WARNING, "atp_service.engine.recovery")
        recovered, seq, replayed = await recover_shard(store, 0, Limits())
    finally:
        await direct.aclose()
    assert (seq, replayed) == (3, 1)  # what the restored Redis holds: its snapshot at 2, then entry 3
    assert recovered.quantities("S", "DC") == _after(3).quantities("S", "DC")
    assert recovered.quantities("S", "DC") != ledger.quantities("S", "DC")
    rereads = [r for r in caplog.records if getattr(r, "event", None) == "recovery_reread"]
    assert [(r.shard, r.newest, r.now) for r in rereads] == [(0, 8, 3)]  # type: ignore[attr-defined]


def _after(entries: int) -> Ledger:
    """Shard 0's state after ``entries`` of the receipts ``_received`` logs."""
    ledger = Ledger(0, Limits())
    for seq in range(1, entries + 1):
        ledger.record_fact(Fact(f"e{seq}", "wms", FactKind.RECEIPT, "S", "DC", 1, NOW + seq))
        ledger.commit(NOW + seq)
    return ledger


async def test_a_log_restored_shorter_after_a_snapshot_at_its_newest_id_was_read_stops_the_shard(
        start_service: ServiceFactory, redis_url: str, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """The case a re-read cannot see: the newest id (3) and the snapshot at it read from the Redis before,
    then the log from one back from the save of entry 1 — nothing after 3, and the replay's end equals the
    newest id read first, so the recovery serves entry 3's state, which Redis no longer holds. That is the
    state of a tail lost just after the recovery, and is handled alike (R7): the owner check finds the log
    ending before the entry the shard made durable and stops it (``LogDiverged``); the restart serves what
    Redis holds."""
    first, client = await start_service(shards=1)
    await client.record_events([receipt("e1", "SKU", "DC", 10)])
    direct = aioredis.Redis.from_url(redis_url)
    try:
        image = await saved(direct)  # the log at entry 1
        await client.record_events([receipt("e2", "SKU", "DC", 20)])
        await client.close()
        await first.stop(grace_s=0.1)  # its final snapshot: at the log's newest id
        read_snapshot, fault = LogStore.load_snapshot, {"armed": True}

        async def load_snapshot_then_redis_restarts(store: LogStore, shard: int) -> Any:
            snap = await read_snapshot(store, shard)
            if fault["armed"] and snap is not None and snap.seq == await store.last_seq(shard):
                fault["armed"] = False  # once: the shard's log and snapshot back at entry 1, the claim kept
                shard_keys = {store.keys.log(shard).encode(), store.keys.snap(shard).encode(),
                              store.keys.snap_parts(shard).encode(), store.keys.snap_parts_try(shard).encode()}
                async with direct.pipeline(transaction=True) as pipe:
                    pipe.delete(*shard_keys)
                    for key in shard_keys & set(image):
                        dump, ttl = image[key]
                        pipe.restore(key, ttl, dump, replace=True)
                    await pipe.execute()
            return snap

        monkeypatch.setattr(LogStore, "load_snapshot", load_snapshot_then_redis_restarts)
        caplog.set_level(logging.ERROR, logger="atp_service")
        second, _ = await start_service(shards=1, owner_check_s=0.05)
        assert not fault["armed"], "the fault was never made"
        await until(lambda: second.failed.is_set(), "the instance stopped: its log ends before what it serves")
    finally:
        await direct.aclose()
    failures = [r for r in caplog.records if getattr(r, "event", None) == "shard_failed"]
    assert failures and isinstance(failures[0].exc_info[1], LogDiverged)  # type: ignore[index]
    monkeypatch.undo()
    await second.stop(grace_s=0.1)
    _, again = await start_service(shards=1)
    (position,) = await again.availability([("SKU", "DC")])
    assert position.on_hand == 10  # what Redis holds: e2 was lost with the tail
