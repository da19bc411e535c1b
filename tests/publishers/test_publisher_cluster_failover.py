"""atp-publisher on a Redis Cluster whose ``{avail}`` primary fails over, the service and the publisher
both told that a write counts once a replica holds it (``ATP_REDIS_WAIT_REPLICAS`` 1). A channel
write the replica never received is not published (C4): the desk settles it, and the promoted
replica lacking it, leaves its version unused (a marker links the stream past it). A publisher that
delivered it as soon as the primary's stream held it left the destination showing a value that was never
published: here a restock the next sale undid before the desk settled, so nothing was due again (E11) and the
marketplace kept selling 5 units that are not on hand."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from redis.asyncio.cluster import RedisCluster

from atp_client import AtpClient, RetryPolicy
from atp_service import AtpService, ManualClock
from atp_service.storage.embedded_cluster import EmbeddedCluster
from atp_service.storage.nodes import Nodes, NotReplicated, connect_any
from atp_service.tasks import cancel_and_wait
from publishers import JsonlAdapter, Publisher, PublisherMetrics, cli
from tests.atp_service.app.test_cluster_channel_failover import _port_of, _replica_of
from tests.atp_service.app.test_cluster_watch_failover import PICKUP, STATE, _durable
from tests.atp_service.channel_helpers import fact, write_estate
from tests.atp_service.edge.test_api import T0
from tests.conftest import test_config as make_config
from tests.publishers.http_helpers import Answer, serve
from tests.publishers.test_publisher import SECRET, publish, update
from tests.publishers.test_publisher import config as publisher_config
from tests.waiting import until

pytestmark = pytest.mark.slow


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[EmbeddedCluster]:
    """A cluster of its own: this test changes its topology."""
    with EmbeddedCluster(tmp_path / "cluster", primaries=3, replicas=1, node_timeout_ms=1000, sync_delay_s=0) as formed:
        yield formed


class Marketplace:
    """A destination that shows, per SKU, the last quantity it was sent."""

    def __init__(self) -> None:
        self.shown: dict[str, int] = {}
        self.lock = threading.Lock()

    def handle(self, path: str, headers: dict[str, str], body: bytes) -> Answer:
        with self.lock:
            for u in json.loads(body)["updates"]:
                self.shown[u["sku"]] = u["quantity"]
        return 204, {}, b""

    def showing(self, sku: str) -> int | None:
        with self.lock:
            return self.shown.get(sku)


def _held_back(metrics: PublisherMetrics) -> float:
    """Reads the publisher did not deliver because the replicas had not confirmed them (none counted: 0)."""
    return metrics.registry.get_sample_value("atp_publisher_not_replicated_total", {"channel": "pickup"}) or 0.0


async def test_a_publisher_never_delivers_a_write_the_replica_lacked_and_a_failover_lost_C4(
        cluster: EmbeddedCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = ManualClock(T0)
    config = make_config(redis_cluster=True, input_streams=(), redis_wait_replicas=1, redis_wait_timeout_ms=300,
                         redis_timeout_s=1.0, estate=write_estate(tmp_path, PICKUP))
    service = AtpService(config, cluster.url, clock=clock)
    await service.start()
    # A refusal (UNAVAILABLE: a Redis node refusing CLUSTERDOWN or not answering) is retried with the
    # same ids, as the service's published retry policy says: a refusal decided nothing (R7).
    client = AtpClient(f"127.0.0.1:{service.port}", timeout_s=5.0, retry=RetryPolicy())
    finder = RedisCluster.from_url(cluster.url)
    market = Marketplace()
    # The publisher as deployed beside the service: the same environment tells both how many replicas count.
    monkeypatch.setenv("ATP_REDIS_WAIT_REPLICAS", "1")
    monkeypatch.setenv("ATP_REDIS_WAIT_TIMEOUT_MS", "300")
    monkeypatch.setenv("ATP_WEBHOOK_SECRET", SECRET)
    publishing: asyncio.Task[None] | None = None
    with serve(market.handle) as url:
        try:
            await finder.initialize()
            avail_port = _port_of(finder, STATE)
            assert service.engine is not None and service.channels is not None
            place, feed = service.engine.place, service.channels.feeds["pickup"]
            a, b = [f"S{i}" for i in range(200)  # their shards' logs on other primaries: their writes stay confirmed
                    if _port_of(finder, f"atp:{{g{place(f'S{i}')}}}:log") != avail_port][:2]
            await client.record_events([fact("a-none", "COUNT", a, "store-1", 0, T0)])
            await until(lambda: (a, "store-1") in feed.published and not feed.in_flight, "A's 0 published", 30)
            args = cli.build_parser().parse_args(["--channel", "pickup", "--adapter", "webhook", "--url", url,
                                                  "--redis-url", cluster.url, "--redis-cluster"])
            metrics = PublisherMetrics()
            publishing = asyncio.ensure_future(
                cli._run(cli.make_config(args), cluster.url, cli.make_adapter(args), metrics, cluster=True))
            await until(lambda: market.showing(a) == 0, "the marketplace showing A's 0", 30)
            restock = feed.version + 1
            primary = next(node for node in cluster.nodes if node.port == avail_port)
            replica = _replica_of(cluster, primary)
            assert replica.process is not None
            os.kill(replica.process.pid, signal.SIGSTOP)  # the replica receives nothing more: the next write in doubt
            try:
                with redis_node(avail_port) as admin:
                    admin.execute_command("CLIENT", "KILL", "TYPE", "replica")
                await client.record_events([fact("a-restock", "COUNT", a, "store-1", 5, T0 + 1)])
                await until(lambda: market.showing(a) == 5 or _held_back(metrics),
                            "the restock, on the primary alone, delivered or held back by the publisher", 30)
                await client.record_events([fact("a-sold", "COUNT", a, "store-1", 0, T0 + 2)])
                await until(lambda: feed.stockouts_pending, "the sale's 0 waiting behind the write in doubt", 30)
                primary.kill()  # kill -9: the restock never reached the replica
            finally:
                os.kill(replica.process.pid, signal.SIGCONT)
            await asyncio.to_thread(cluster.take_over, replica)  # every running node agreeing, serving
            # Back as a replica of the promoted one (writes can be confirmed again), every node agreeing: B's count
            # goes to its group's log on another primary, which refuses it CLUSTERDOWN until it has seen the
            # promoted replica reachable.
            await asyncio.to_thread(cluster.rejoin, primary)
            # Its version left unused (it may have been read before it was lost, C3): a marker at the next links on
            await until(lambda: not feed.in_flight and feed.version == restock + 1,
                        "the restock settled as lost, its version passed over by a marker", 30)
            await client.record_events([fact("b-count", "COUNT", b, "store-1", 7, T0 + 3)])
            await until(lambda: market.showing(b) == 7, "B's count delivered, after the marker", 30)
            durable, top = _durable(replica.port)
            assert top == restock + 2 and durable == {a: 0, b: 7}, "the restock lost, B written after the marker"
            assert market.showing(a) == durable[a], "the marketplace shows A's durable 0, not the lost restock"
            assert _held_back(metrics) >= 1, "held back while the replica lacked it, not missed by luck"
        finally:
            if publishing is not None:
                await stop(publishing, delivering=market.showing(a) is not None)
            await finder.aclose()
            await client.close()
            await service.stop(grace_s=0.1)


async def stop(publishing: asyncio.Task[None], delivering: bool) -> None:
    """The publisher stopped as its operator does, by SIGTERM (its handler, on this loop, stops it between
    reads): once it delivers, ``_run`` has installed it. Cancelled, what is left before that (or of a
    publisher the signal did not stop), until it has ended: a single cancel can be lost on Python 3.11
    (``cancel_and_wait``), and the publisher ran on past the test, against a cluster being torn down."""
    if delivering:
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.wait([publishing], timeout=30)
    await cancel_and_wait(publishing)


def redis_node(port: int) -> redis.Redis:
    return redis.Redis(host="127.0.0.1", port=port)


async def test_a_read_is_confirmed_where_it_was_read_not_after_a_failover_moved_the_slot_C4(
        cluster: EmbeddedCluster, tmp_path: Path) -> None:
    """What a publisher read must be confirmed on the node it read it from, right after the read. Confirmed
    later — after a resync of trimmed versions delivered between the read and its delivery, minutes at a slow
    destination — a failover meanwhile, the slot map read again by another call (the lease's renewal failing
    on the old primary), sent the confirmation to the promoted replica: its replicas held the renewal, so a
    restock the promoted replica never received was delivered."""
    client = connect_any(cluster.url, 5.0, cluster=True)
    writer = Nodes(client, cluster=True, url=cluster.url, timeout_s=5.0)
    out = tmp_path / "feed.jsonl"
    metrics = PublisherMetrics()
    publisher = Publisher(publisher_config(wait_replicas=1, wait_timeout_ms=300), client, JsonlAdapter(out),
                          metrics, writer=writer)
    try:
        await client.initialize()
        avail_port = _port_of(client, "atp:{avail}:web")
        primary = next(node for node in cluster.nodes if node.port == avail_port)
        replica = _replica_of(cluster, primary)
        assert replica.process is not None
        await publish(client, [update("A", 0, 1)])
        assert await publisher.hold()  # the lease, replicated: the promoted replica holds it too
        await publisher.prepare()
        await publisher.process(await publisher._read(">"))
        assert [json.loads(line)["quantity"] for line in out.read_text().splitlines()] == [0]
        os.kill(replica.process.pid, signal.SIGSTOP)  # the replica receives nothing more: the restock in doubt
        try:
            with redis_node(avail_port) as admin:
                admin.execute_command("CLIENT", "KILL", "TYPE", "replica")
            await publish(client, [update("A", 5, 2)])
            read = None
            with contextlib.suppress(NotReplicated):  # held back at the read: nothing of it is delivered
                read = await publisher._read(">")
            primary.kill()  # kill -9: the restock never reached the replica
        finally:
            os.kill(replica.process.pid, signal.SIGCONT)
        await asyncio.to_thread(cluster.take_over, replica)  # every running node agreeing, serving
        await asyncio.to_thread(cluster.rejoin, primary)  # a replica of the promoted one: a renewal confirmed there
        await until(lambda: _linked(primary.port), "the old primary replicating the promoted one", 30)
        await client.nodes_manager.initialize()  # the slot map read again by another call
        assert _durable_versions(replica.port) == [1], "the restock lost with the old primary"
        if read is not None:
            with contextlib.suppress(NotReplicated):
                await publisher.process(read)
        shown = [json.loads(line)["quantity"] for line in out.read_text().splitlines()]
        assert shown == [0], f"the lost restock delivered: {shown}"
    finally:
        await writer.aclose()


def _linked(port: int) -> bool:
    with redis_node(port) as node:
        info = node.info("replication")
    return info.get("role") == "slave" and info.get("master_link_status") == "up"


def _durable_versions(port: int) -> list[int]:
    with redis_node(port) as node:
        return [int(entry_id.split(b"-")[0]) for entry_id, _ in node.xrange("atp:{avail}:web")]
