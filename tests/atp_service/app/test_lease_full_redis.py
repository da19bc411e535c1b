"""Leased groups on a Redis at its ``maxmemory`` (``noeviction``): the log that filled it frees itself by
the snapshot's trim, which only the group's owner writes. A group its owner handed over (a rolling
restart) or lost (a process killed) is taken by another process there too — the taking's writes (its
epoch drawn, its lease and owner key set) are a few small keys a group, bounded as the fence is — instead
of every taking refused ``OOM``: the group answered nobody, reads included, and its log was never trimmed,
until an operator gave Redis room."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis.asyncio

from atp_service import EmbeddedRedis
from atp_service.storage.leases import GroupLeases
from atp_service.storage.log import Fenced, LogStore
from atp_service.storage.nodes import open_nodes
from tests.atp_service.edge.test_api import receipt
from tests.conftest import services_on
from tests.ports import held_port

SHARDS = 2


async def test_a_group_given_back_on_a_full_redis_is_taken_and_its_giver_fenced_R7(tmp_path: Path) -> None:
    with EmbeddedRedis(tmp_path / "redis", appendfsync="always") as server:
        stores = [LogStore(open_nodes(server.url, 5.0), "t:", pipeline_max=64) for _ in range(2)]
        admin = redis.asyncio.Redis.from_url(server.url)
        giver, taker = GroupLeases(stores[0], "process-a", 60_000), GroupLeases(stores[1], "process-b", 60_000)
        try:
            assert await giver.acquire(0)
            await stores[0].submit(0, 1, b"acknowledged before Redis filled")
            await admin.config_set("maxmemory", 1)  # full: every write that may grow it is refused OOM
            await giver.release(0)  # a graceful stop hands the group over
            assert await taker.acquire(0)  # refused OOM before: the group answered nobody
            with pytest.raises(Fenced):  # the giver, were it still writing, lands nothing (R7)
                await stores[0].submit(0, 2, b"written after the hand-over")
        finally:
            await admin.config_set("maxmemory", 0)
            await admin.aclose()
            for store in stores:
                await store.nodes.aclose()


async def test_groups_handed_over_on_a_full_redis_are_served_by_the_process_that_takes_them(tmp_path: Path) -> None:
    with EmbeddedRedis(tmp_path / "redis", appendfsync="always") as server:
        admin = redis.asyncio.Redis.from_url(server.url)
        try:
            async with services_on(server.url, ownership="leases", lease_ms=60_000, shards=SHARDS,
                                   input_streams=()) as start:
                leaving, client = await start(port=held_port(), host="127.0.0.1")
                await client.record_events([receipt("r1", "A", "DC", 7)])
                staying, other = await start(port=held_port(), host="127.0.0.1")
                assert staying.membership is not None and not staying.membership.leases.held  # all the other's
                await admin.config_set("maxmemory", 1)
                await leaving.stop(grace_s=0.1)  # hands every group over (final snapshots go through)
                assert not await staying.membership.renew()  # reads the members: the other left them
                await staying.membership.balance()  # raised OutOfMemoryError before: nothing taken
                assert sorted(staying.membership.leases.held) == list(range(SHARDS))
                (position,) = await other.availability([("A", "DC")])
                assert position.on_hand == 7
                await admin.config_set("maxmemory", 0)  # the services' stops write freely
        finally:
            await admin.config_set("maxmemory", 0)
            await admin.aclose()
