"""A resync from the channel's state hash (one HSCAN call a step) across a restart of Redis: HSCAN's
cursor holds within one server's life only (a restarted server — or a replica promoted — builds the
hash again under another hash seed), so a cursor kept across the restart, read against the new table,
passes over keys it never saw. No resync may end with a key it never looked at. A real redis-server,
restarted from its AOF at a point the test chooses, and a real local webhook receiver."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from redis.exceptions import ConnectionError

from atp_service import EmbeddedRedis
from atp_service.storage.channel_wire import script_item
from atp_service.storage.clients import close_any, connect_any
from atp_service.storage.durability import STORAGE_ERRORS
from atp_service.storage.embedded_cluster import EmbeddedCluster
from publishers import PublisherMetrics
from publishers._state_resync import StateResync, Sweep
from reservation import ChannelUpdate
from tests.publishers.test_publisher import Receiver, config, receiver_factory
from tests.publishers.test_publisher_redeliver import last_values, outcome, publisher
from tests.publishers.test_publisher_redeliver_redis_restart import RestartsRedisOnFirstRequest, server
from tests.publishers.test_publisher_trimmed import value
from tests.waiting import until

__all__ = ["receiver_factory", "server"]  # fixtures
STATE = "atp:{avail}:web:state"
EVERY_KEY = "atp:{avail}:web:redeliver-all:webhook"
KEYS = 1000
"""Past the listpack size of a hash: a hashtable, paged by HSCAN, its buckets placed by the server's hash seed."""


@pytest.fixture
async def client(server: EmbeddedRedis) -> AsyncIterator[Any]:
    """As atp-publisher's: a connection the restart closed is made again."""
    made = connect_any(server.url, 5.0)
    yield made
    await made.aclose()


async def state_of(client: Any, n: int = KEYS) -> list[ChannelUpdate]:
    """``n`` keys in the state hash, none a stock-out (the stock-outs' sweep sends nothing)."""
    updates = [value(f"s{n}", n + 1, n + 1) for n in range(n)]
    await client.hset(STATE, mapping={f"{u.sku}\t": script_item(u)[-1] for u in updates})
    return updates


def restart(redis_server: EmbeddedRedis) -> None:
    """A new redis-server process: the same data, from its AOF, under another hash seed."""
    redis_server.stop()
    redis_server.start()


def swept_again(caplog: pytest.LogCaptureFixture) -> int:
    return sum(getattr(r, "event", None) == "publisher_resync_again" for r in caplog.records)


async def test_a_resync_of_trimmed_pending_entries_across_a_redis_restart_delivers_every_key_C4(
        server: EmbeddedRedis, client: Any, caplog: pytest.LogCaptureFixture) -> None:
    """The one-go resync (own pending entries found trimmed; each of its steps one HSCAN call): Redis restarted
    (from its AOF) while the first page was being delivered. Its cursor, kept across the restart, passed over
    about a tenth of the keys, and it returned done: their entries acknowledged, their values never sent."""
    updates = await state_of(client)
    delivered: dict[str, int] = {}

    async def deliver(page: list[ChannelUpdate]) -> bool:
        if not delivered:  # the first page: Redis restarts before it is answered (the loop sees its sockets close)
            await asyncio.to_thread(restart, server)
        delivered.update({f"{u.sku}\t{u.location}": u.version for u in page})
        return True

    resync = StateResync(config(read_count=100), client, PublisherMetrics(), "webhook",
                         lambda key: delivered.get(key, 0), deliver)
    assert await resync(lambda version: True, "entries trimmed")
    missed = {f"{u.sku}\t" for u in updates} - set(delivered)
    assert missed == set(), f"{len(missed)} keys never delivered"
    assert swept_again(caplog) == 1


async def test_a_resync_of_every_key_across_a_redis_restart_delivers_every_key_C4(
        server: EmbeddedRedis, client: Any, receiver_factory: Any, caplog: pytest.LogCaptureFixture) -> None:
    """A resync of every key owed (its mark set: more keys were owed than remembered, or a gap was left half
    caught up): Redis restarted after its first page. Its kept cursor skipped about a tenth of the keys, and the
    resync ended and deleted its mark: nothing owed those keys again until each changed (C4, for good)."""
    updates = await state_of(client)
    await client.set(EVERY_KEY, 1)
    receiver = RestartsRedisOnFirstRequest(server)
    metrics = PublisherMetrics()
    running = publisher(client, receiver_factory(receiver), metrics, read_count=100, delivery_batch=100)
    task = asyncio.create_task(running.run())
    try:
        async def over() -> bool:
            try:
                return outcome(metrics, "resynced") > 0 and not await client.exists(EVERY_KEY)
            except ConnectionError:  # this test's own connection, closed by the restart: asked again
                return False

        await until(over, "the resync of every key over")
        assert not task.done(), task
        missed = {u.sku for u in updates} - set(last_values(receiver))
        assert missed == set(), f"{len(missed)} keys never delivered"
        assert last_values(receiver) == {u.sku: (u.quantity, u.version) for u in updates}
        assert swept_again(caplog) == 1
    finally:
        running.stop()
        await asyncio.wait_for(task, 5)
        await running.adapter.close()


async def test_a_resync_on_a_redis_cluster_across_a_restart_of_the_hash_s_node_delivers_every_key_C4(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The same on a Redis Cluster: the node serving the state hash's slot restarted (from its AOF) while the
    first page was being delivered; the cluster client's connection to it, made again at the same address,
    reached a new table (its first call after the restart failed, on a connection the server had closed; the
    publisher takes that step again). Its HSCAN calls go on one connection of that node: made again, the sweep
    starts over."""
    with EmbeddedCluster(tmp_path / "cluster", primaries=1, appendfsync="always") as cluster:
        node = cluster.primaries[0]
        client = connect_any(cluster.url, 5.0, cluster=True)
        try:
            updates = await state_of(client)
            delivered: dict[str, int] = {}

            def restart_node() -> None:
                restart(node)
                cluster._wait_until_ready(30)  # its slots served again (CLUSTERDOWN until then)

            async def deliver(page: list[ChannelUpdate]) -> bool:
                if not delivered:
                    await asyncio.to_thread(restart_node)
                delivered.update({f"{u.sku}\t{u.location}": u.version for u in page})
                return True

            resync = StateResync(config(read_count=100), client, PublisherMetrics(), "webhook",
                                 lambda key: delivered.get(key, 0), deliver)
            sweep, failed = Sweep(lambda version: True), 0
            while not sweep.done:  # as the publisher's loop: a step Redis did not answer, taken again
                try:
                    assert await resync.step(sweep) is not None
                except STORAGE_ERRORS:
                    failed += 1
                    assert failed < 5, "Redis answered no step"
            missed = {f"{u.sku}\t" for u in updates} - set(delivered)
            assert missed == set(), f"{len(missed)} keys never delivered"
            assert swept_again(caplog) == 1
        finally:
            await close_any(client)


async def test_a_resync_whose_connection_redis_closes_between_its_steps_ends_C4(
        server: EmbeddedRedis, client: Any) -> None:
    """Redis closing idle connections (``timeout``) while the publisher's loop works between two steps of a
    resync (reads and delivers the stream, a redelivery pass, a comparison: longer than ``timeout`` under load or
    with a slow destination): the held HSCAN connection is made again at every step, the same server all along.
    Each step saw a new life and sent the sweep back to cursor 0, from where the next step (after the loop's work,
    the connection closed again) got no further than its first page: the resync never ended, its mark never
    deleted, and the keys past its first page never delivered (C4). Here the loop's work is a ``CLIENT KILL`` of
    every other connection, as the server's ``timeout`` closes them."""
    updates = await state_of(client)
    delivered: dict[str, int] = {}

    async def deliver(page: list[ChannelUpdate]) -> bool:
        delivered.update({f"{u.sku}\t{u.location}": u.version for u in page})
        return True

    resync = StateResync(config(read_count=100), client, PublisherMetrics(), "webhook",
                         lambda key: delivered.get(key, 0), deliver)
    sweep = Sweep(lambda version: True)
    for _ in range(100):  # about 11 pages a sweep, two sweeps
        if sweep.done:
            break
        assert await resync.step(sweep) is not None
        await client.client_kill_filter(_type="normal", skipme=True)  # idle past ``timeout``: closed
    missed = {f"{u.sku}\t" for u in updates} - set(delivered)
    assert sweep.done, f"not over after 100 steps, {len(missed)} keys never delivered"
    assert missed == set(), f"{len(missed)} keys never delivered"


async def test_a_publisher_s_resync_connection_is_given_back_when_it_stops(
        server: EmbeddedRedis, client: Any, receiver_factory: Any) -> None:
    """The connection a resync's HSCAN calls are held on is given back to the pool once the publisher stops
    holding its lease (a stop, the lease lost): held until ``aclose``, which nothing called, it stayed taken from
    the pool for the publisher's life after its first resync, standing by included (one connection fewer for a
    pool of a few, ``max_connections``, and one more connection open at the server per publisher)."""
    await state_of(client, 10)
    await client.set(EVERY_KEY, 1)
    receiver = Receiver()
    metrics = PublisherMetrics()
    running = publisher(client, receiver_factory(receiver), metrics, read_count=100, delivery_batch=100)
    task = asyncio.create_task(running.run())
    try:
        async def over() -> bool:
            return outcome(metrics, "resynced") > 0 and not await client.exists(EVERY_KEY)

        await until(over, "the resync of every key over")
    finally:
        running.stop()
        await asyncio.wait_for(task, 5)
        await running.adapter.close()
    pool = client.connection_pool
    assert not pool._in_use_connections, f"{len(pool._in_use_connections)} connections kept from the pool"
