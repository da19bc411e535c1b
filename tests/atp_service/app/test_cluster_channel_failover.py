"""The channel feeds on a Redis Cluster whose ``{avail}`` primary fails over, the service asked to
acknowledge a write only once a replica holds it (``redis_wait_replicas`` 1): a channel write the
promoted replica never received is not believed published — the feed converges to the durable value
on the new primary (C4), as the log loses nothing acknowledged ("Redis durability and failover")."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from redis.asyncio.cluster import RedisCluster

from atp_client import AtpClient
from atp_service import AtpService, ManualClock
from atp_service.storage.channel_wire import state_entry
from atp_service.storage.embedded_cluster import EmbeddedCluster
from atp_service.storage.embedded_redis import EmbeddedRedis
from reservation import Feed
from tests.atp_service.channel_helpers import fact, one_dc_market, write_estate
from tests.atp_service.edge.test_api import T0
from tests.conftest import test_config as make_config
from tests.waiting import until

pytestmark = pytest.mark.slow
STATE = "atp:{avail}:market:state"


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[EmbeddedCluster]:
    """A cluster of its own: this test changes its topology."""
    with EmbeddedCluster(tmp_path / "cluster", primaries=3, replicas=1, node_timeout_ms=1000, sync_delay_s=0) as formed:
        yield formed


def _replica_of(cluster: EmbeddedCluster, primary: EmbeddedRedis) -> EmbeddedRedis:
    for node in cluster.nodes:
        with redis.Redis(host="127.0.0.1", port=node.port) as admin:
            info = admin.info("replication")
        if info.get("role") == "slave" and int(info.get("master_port", 0)) == primary.port:
            return node
    raise AssertionError(f"no replica of {primary.port}")


def _quantity_on(port: int, sku: str) -> int | None:
    """The published quantity of ``sku`` in the market state hash held by the node at ``port``."""
    with redis.Redis(host="127.0.0.1", port=port) as node:
        try:
            fields = node.hgetall(STATE)
        except redis.exceptions.ResponseError:  # MOVED: that node no longer serves the slot
            return None
    for field, value in fields.items():
        (found, _), published = state_entry(field, value)
        if found == sku:
            return published.quantity
    return None


def _port_of(finder: RedisCluster, key: str) -> int:
    node = finder.get_node_from_key(key)
    assert node is not None
    return int(node.port)


def _role(port: int) -> str:
    with redis.Redis(host="127.0.0.1", port=port) as node:
        return str(node.info("replication").get("role"))


def _shown(feed: Feed, sku: str) -> int | None:
    """The quantity of ``sku`` the desk believes published: its write confirmed (None: none yet)."""
    return next((published.quantity for key, published in feed.published.items() if key[0] == sku), None)


def _views(cluster: EmbeddedCluster, service: AtpService, sku: str) -> str:
    """Each node's role and published quantity of ``sku``, and the desk's feed of it."""
    nodes = [f"{node.port}: {_role(node.port)} {_quantity_on(node.port, sku)}" for node in cluster.nodes
             if node.process is not None and node.process.poll() is None]
    desk = service.channels
    feed = None if desk is None else desk.feeds["market"]
    held = None if feed is None else (feed.version, feed.published_version, feed.pending,
                                      [(k, v.quantity) for k, v in feed.published.items() if k[0] == sku])
    return f"nodes {nodes}; desk feed (version, published, pending, {sku}) {held}"


def _slot_primary(cluster: EmbeddedCluster) -> int | None:
    """The port of the primary every live node agrees serves the feeds' slot (None: they disagree, mid-change).
    Not necessarily the replica promoted by the test: a busy host's stall of that one past the node timeout
    has the old primary, back as its replica, fail over to it in turn."""
    seen = set()
    for node in cluster.nodes:
        if node.process is None or node.process.poll() is not None:
            continue
        with redis.Redis(host="127.0.0.1", port=node.port, socket_timeout=2.0) as admin:
            slot = int(admin.cluster("KEYSLOT", STATE))
            ranges = admin.execute_command("CLUSTER", "SLOTS")
        seen |= {int(r[2][1]) for r in ranges if int(r[0]) <= slot <= int(r[1])}
    return seen.pop() if len(seen) == 1 else None


def _published_on_primary(cluster: EmbeddedCluster, sku: str) -> int | None:
    port = _slot_primary(cluster)
    return None if port is None else _quantity_on(port, sku)


async def test_a_channel_write_the_promoted_replica_lacks_is_published_again_C4(
        cluster: EmbeddedCluster, tmp_path: Path) -> None:
    clock = ManualClock(T0)
    config = make_config(redis_cluster=True, input_streams=(), redis_wait_replicas=1, redis_wait_timeout_ms=300,
                         redis_timeout_s=1.0, estate=write_estate(tmp_path, one_dc_market(0, 1000.0)))
    service = AtpService(config, cluster.url, clock=clock)
    await service.start()
    client = AtpClient(f"127.0.0.1:{service.port}", timeout_s=5.0)
    finder = RedisCluster.from_url(cluster.url)
    try:
        await finder.initialize()
        avail_port = _port_of(finder, STATE)
        assert service.engine is not None
        place = service.engine.place
        primary = next(node for node in cluster.nodes if node.port == avail_port)
        replica = _replica_of(cluster, primary)
        sku = next(f"S{i}" for i in range(200)  # its shard's log on another primary: its writes stay confirmed
                   if _port_of(finder, f"atp:{{g{place(f'S{i}')}}}:log") != avail_port)
        assert service.channels is not None
        feed = service.channels.feeds["market"]
        await client.record_events([fact("c1", "COUNT", sku, "dc-1", 40, T0)])
        # Published: its write confirmed by the replica, not only seen on the primary. Seen there before the
        # replica acknowledged it (a busy host), the stop below left it in doubt: the desk settles it first,
        # and its fence waits for a replica too — the stock-out was never written before the failover.
        await until(lambda: _shown(feed, sku) is not None and not feed.in_flight,
                    "the first count published, its write confirmed by the replica", 30)
        counted = _shown(feed, sku)
        assert counted and _quantity_on(avail_port, sku) == counted
        assert replica.process is not None
        os.kill(replica.process.pid, signal.SIGSTOP)  # the replica receives nothing more for now: stopped,
        try:  # and cut off (its link's socket would still hand it what was sent meanwhile once it runs on)
            with redis.Redis(host="127.0.0.1", port=avail_port) as admin:
                admin.execute_command("CLIENT", "KILL", "TYPE", "replica")
            clock.advance(1000)
            await client.record_events([fact("c2", "COUNT", sku, "dc-1", 0, T0 + 1000)])  # a stock-out
            await until(lambda: _quantity_on(avail_port, sku) == 0, "the stock-out written on the primary", 30)
            primary.kill()  # kill -9: the stock-out never reached the replica
        finally:
            os.kill(replica.process.pid, signal.SIGCONT)
        await asyncio.to_thread(cluster.take_over, replica)  # every running node agreeing, serving
        assert _quantity_on(replica.port, sku) == counted  # the stock-out was lost with the old primary
        await asyncio.to_thread(cluster.rejoin, primary)  # a replica of the promoted one: writes confirmed again
        try:
            await until(lambda: _published_on_primary(cluster, sku) == 0,
                        "the stock-out published again on the primary serving the feeds", 30)
        except AssertionError as exc:  # what a failure needs to be understood: the nodes' and the desk's view
            raise AssertionError(f"{exc}; {_views(cluster, service, sku)}") from None
    finally:
        await finder.aclose()
        await client.close()
        await service.stop(grace_s=0.1)
