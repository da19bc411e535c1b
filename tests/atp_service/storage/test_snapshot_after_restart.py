"""Snapshots after a restart: the log entries a start replays count towards the next snapshot, as
the entries made since do. They did not (the count started at the replayed tail's end): a graceful
stop after a crash wrote no final snapshot, and a service crashing before each snapshot fell due
never trimmed its log, each start replaying more."""

from __future__ import annotations

import redis

from tests.atp_service.edge.test_api import receipt
from tests.atp_service.redis_proxy import until
from tests.conftest import ServiceFactory

SNAP, LOG = "atp:{g0}:snap", "atp:{g0}:log"


async def test_a_graceful_stop_after_a_crash_restart_snapshots_the_replayed_tail(
        start_service: ServiceFactory, redis_url: str) -> None:
    r = redis.Redis.from_url(redis_url)
    _, first = await start_service(shards=1)  # left running: the next start fences it, as after kill -9
    for i in range(3):
        await first.record_events([receipt(f"e{i}", "A", "DC", 1)])
    assert not r.exists(SNAP) and r.xlen(LOG) == 3
    second, _ = await start_service(shards=1)  # recovers by replaying the 3 entries
    assert second.engine is not None and second.engine.actors[0].seq == 3
    await second.stop(grace_s=0.1)  # drained, then a final snapshot per shard
    assert r.exists(SNAP)


async def test_crash_restarts_do_not_let_the_log_grow_past_snapshot_every_entries(
        start_service: ServiceFactory, redis_url: str) -> None:
    r = redis.Redis.from_url(redis_url)
    every = 4
    for round_ in range(3):  # each start fences the one before it: a kill -9 each time
        service, client = await start_service(shards=1, snapshot_every_entries=every, snapshot_interval_s=3600)
        for i in range(every - 1):
            await client.record_events([receipt(f"e{round_}-{i}", "A", "DC", 1)])
    assert service.engine is not None
    shard = service.engine.actors[0]
    assert shard.seq == 3 * (every - 1) and not r.exists(SNAP)
    await service.engine._housekeeper.run_pass()  # a maintenance pass: snapshot what is due
    await until(lambda: r.exists(SNAP) == 1, f"a snapshot of the {shard.seq} entries (every {every})")
