"""R7: Redis coming back with older data (a primary restarted from an older AOF or RDB, a failover to a
replica that lagged) loses entries the service acknowledged. The service must not go on serving them:
it stops to be restarted, and the restart serves what Redis holds.

The older data is made with the real Redis: every key DUMPed at the save point, then after more
acknowledged changes every key deleted and RESTOREd from those dumps — what a restart from that point's
RDB would hold (the simulation does the same with ``--lose-tail``, ``tests/sim/tailloss.py``)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest
import redis.asyncio as aioredis

from atp_service.storage.durability import LogDiverged
from atp_service.storage.embedded_cluster import EmbeddedCluster
from atp_service.storage.log import LogStore
from atp_service.storage.nodes import open_nodes
from reservation import LogEntry, decode_entry, encode_entry
from reservation._events import ReservationSaved
from tests.atp_service.edge.test_api import receipt
from tests.conftest import ServiceFactory, services_on
from tests.waiting import until

Image = dict[Any, tuple[Any, int]]


@contextlib.asynccontextmanager
async def services_and_primaries(request: pytest.FixtureRequest, settings: dict[str, Any]
                                 ) -> AsyncIterator[tuple[ServiceFactory, list[aioredis.Redis]]]:
    """Services with ``settings`` on the test's one Redis or Redis Cluster (``request.param``: "one Redis"
    or "cluster"), and a direct client of every primary, for ``async with``: each can be saved and restored alone."""
    if request.param == "cluster":
        cluster: EmbeddedCluster = request.getfixturevalue("redis_cluster")
        url = request.getfixturevalue("cluster_url")
        ports, settings = [node.port for node in cluster.primaries], {**settings, "redis_cluster": True}
    else:
        url = request.getfixturevalue("redis_url")
        ports = [int(url.rsplit(":", 1)[1].split("/")[0])]
    primaries = [aioredis.Redis(host="127.0.0.1", port=port) for port in ports]
    try:
        async with services_on(url, **settings) as start:
            yield start, primaries
    finally:
        for client in primaries:
            await client.aclose()


async def saved(client: aioredis.Redis) -> Image:
    """Every key's DUMP and time to live (ms; 0: none): Redis's state now."""
    image: Image = {}
    for key in await client.keys("*"):
        dump, ttl = await client.dump(key), await client.pttl(key)
        image[key] = (dump, max(ttl, 0))
    return image


async def restored(client: aioredis.Redis, image: Image, at_once: bool = False) -> None:
    """Redis holds ``image`` again: what was written since is gone. ``at_once``: in one transaction,
    as a restart does it (one Redis, not a cluster node: its keys span slots), so that no owner check
    sees the keyspace empty between the wipe and the restores and stops the instance for its claim
    lost instead of for what the test is about."""
    async with client.pipeline(transaction=at_once) as pipe:
        pipe.flushall()
        for key, (dump, ttl) in image.items():
            pipe.restore(key, ttl, dump, replace=True)
        await pipe.execute()


async def test_an_idle_shard_stops_when_redis_lost_entries_it_made_durable(
        start_service: ServiceFactory, redis_url: str, caplog: pytest.LogCaptureFixture) -> None:
    """Defect: a shard noticed a log shorter than what it made durable only at its next write or snapshot.
    Redis restarted from data older than the last changes but newer than the instance's claim (so no write
    was refused FENCED): an idle shard went on serving the lost reservation's hold — availability lower
    than Redis said, on GetAvailability and the channel feeds, health SERVING — for as long as nothing
    changed there. The owner check (every owner_check_s) now also asks each shard whether its log still
    reaches the entry it made durable; one that does not stops, and the instance is restarted."""
    service, client = await start_service(owner_check_s=0.05)
    await client.record_events([receipt("e1", "SKU", "DC", 10)])
    direct = aioredis.Redis.from_url(redis_url)
    try:
        image = await saved(direct)
        await client.reserve("r1", [("SKU", "DC", 4)], ttl_seconds=600)
        caplog.set_level(logging.ERROR, logger="atp_service")
        await restored(direct, image, at_once=True)  # r1's entry gone; the claim still this instance's
        await until(lambda: service.failed.is_set(), "the instance told to stop after Redis lost r1's entry",
                    timeout_s=20)
    finally:
        await direct.aclose()
    failures = [r for r in caplog.records if getattr(r, "event", None) == "shard_failed"]
    assert failures and isinstance(failures[0].exc_info[1], LogDiverged)  # type: ignore[index]
    await client.close()
    await service.stop(grace_s=0.1)
    _, again = await start_service()
    (position,) = await again.availability([("SKU", "DC")])
    assert (position.on_hand, position.reserved) == (10, 0)  # what Redis holds: r1 was lost


async def test_a_shard_stops_when_its_log_holds_an_entry_it_never_sent(
        start_service: ServiceFactory, redis_url: str, caplog: pytest.LogCaptureFixture) -> None:
    """Defect: the owner check caught a log shorter than a shard made durable, never one longer than it
    ever sent. Redis lost a taking drawn while the claims key ran ahead of the clocks, the next taking drew
    its epoch again, and the deposed owner's writes passed every owner check as the new owner's (E10): its
    reservation in the log, unknown to the serving shard, which published availability without it until
    its own next write was refused. A taking now has an epoch of its own whatever number it draws
    (``test_epoch_drawn_again``); the check stays, the last word on any other writer. Here the other
    writer holds this instance's epoch and fence; the owner check stops the shard, and the restart
    serves what the log holds."""
    service, client = await start_service(owner_check_s=0.05)
    await client.record_events([receipt("e1", "SKU", "DC", 10)])
    await client.reserve("r1", [("SKU", "DC", 4)], ttl_seconds=600)
    other = LogStore(open_nodes(redis_url, 5.0, cluster=False), "atp:", pipeline_max=64)
    try:
        shard, newest, entry = await _newest_reservation(other, "r1")
        epoch = (await other.client.get(other.keys.owner(shard))).decode()
        fence = int(await other.client.get(other.keys.fence(shard)) or 0)
        other.adopt(shard, epoch, fence)  # another writer with this instance's epoch
        (saved_r1,) = (e for e in entry.events if isinstance(e, ReservationSaved))
        changed = msgspec.structs.replace(saved_r1.reservation, order_ref=OTHER_WRITER)
        caplog.set_level(logging.ERROR, logger="atp_service")
        await other.submit(shard, newest + 1, encode_entry(LogEntry(ts=entry.ts, events=[ReservationSaved(changed)])))
        await until(lambda: service.failed.is_set(), "the instance told to stop: its log holds an entry it never "
                    "sent", timeout_s=20)
    finally:
        await other.nodes.aclose()
    failures = [r for r in caplog.records if getattr(r, "event", None) == "shard_failed"]
    assert failures and isinstance(failures[0].exc_info[1], LogDiverged)  # type: ignore[index]
    assert "sent none past entry" in str(failures[0].exc_info[1])  # type: ignore[index]
    await client.close()
    await service.stop(grace_s=0.1)
    _, again = await start_service()
    assert (await again.get_reservation("r1")).order_ref == OTHER_WRITER  # what the log holds is served


OTHER_WRITER = "changed by another process under this one's epoch"


async def _newest_reservation(store: LogStore, rid: str) -> tuple[int, int, LogEntry]:
    """The shard whose newest entry saves reservation ``rid``: its number, that entry's seq, the entry."""
    for shard in range(4):
        entries = [(seq, data) async for seq, data in store.entries_after(shard, 0)]
        if entries and rid.encode() in entries[-1][1]:
            seq, data = entries[-1]
            return shard, seq, decode_entry(data)
    raise AssertionError(f"no shard's newest entry saves {rid}")
