"""When snapshots are written. After a restart, the log entries a start replays count towards the
next snapshot, as the entries made since do: they did not (the count started at the replayed tail's
end), so a graceful stop after a crash wrote no final snapshot, and a service crashing before each
snapshot fell due never trimmed its log, each start replaying more. And a snapshot's write is
allowed time for its size."""

from __future__ import annotations

import asyncio

import redis

from tests.atp_service.edge.test_api import receipt
from tests.conftest import ServiceFactory
from tests.waiting import answered, until

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
    assert shard.seq == 3 * (every - 1)  # no run made `every` entries: counted per run, none fell due
    await service.engine._housekeeper.run_pass()  # a maintenance pass: snapshot what is due
    await until(lambda: r.exists(SNAP) == 1, f"a snapshot of the {shard.seq} entries (every {every})")


async def test_a_snapshot_write_is_allowed_time_for_its_size_beyond_the_socket_timeout(
        start_service: ServiceFactory, redis_url: str) -> None:
    """Held to an append's timeout, a large snapshot's write timed out on a slow disk, landed all the
    same, and was written again at every retry. Here Redis holds writes (``CLIENT PAUSE``) while a stop
    writes its final snapshot, for twice the 0.5 s socket timeout once the write is on its way: at
    200 bytes/s it is allowed seconds more, and it is stored. (A pause of a fixed time from before the
    stop could end before the write began, and the test pass with the write never held.)"""
    r = redis.Redis.from_url(redis_url)
    service, client = await start_service(shards=1, redis_timeout_s=0.5, snapshot_write_mb_per_s=0.0002)
    await answered(lambda: client.record_events([receipt(f"e{i}", "A", "DC", 1) for i in range(2)]))
    assert not r.exists(SNAP)
    store = service._log
    assert store is not None
    r.execute_command("CLIENT", "PAUSE", 60_000, "WRITE")  # the fault: Redis slow, until let go
    try:
        stopping = asyncio.ensure_future(service.stop(grace_s=0.1))
        await until(lambda: store.snapshots_in_flight == 1, "the final snapshot's write on its way")
        await asyncio.sleep(1.0)  # the fault's length, not a wait for an event: the write held twice its timeout
        assert store.snapshots_in_flight == 1 and not stopping.done()  # still waiting: not timed out
    finally:
        r.execute_command("CLIENT", "UNPAUSE")
    await stopping
    assert r.exists(SNAP) and service.metrics.registry.get_sample_value("atp_snapshot_failures_total") == 0
