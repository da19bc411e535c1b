"""WatchAvailability on a Redis Cluster whose ``{avail}`` primary fails over, the service asked to
acknowledge a channel write only once a replica holds it (``redis_wait_replicas`` 1). A write the
replica never received is not published (C4): the desk settles it and, the promoted replica lacking
it, writes what is due above them (a marker linking the stream past them). A watch that had been sent it
resumed after its version and skipped the value written there since: a stock-out its channel never learned."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import redis
from redis.asyncio.cluster import RedisCluster

from atp_client import AtpClient, RetryPolicy
from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_service import AtpService, ManualClock
from atp_service.channels.feeds import VERSIONS_PER_MS
from atp_service.storage.channel_wire import state_entry
from atp_service.storage.embedded_cluster import EmbeddedCluster
from atp_service.tasks import cancel_and_wait
from tests.atp_service.app.test_cluster_channel_failover import _port_of, _replica_of
from tests.atp_service.channel_helpers import fact, write_estate
from tests.atp_service.edge.test_api import T0
from tests.conftest import test_config as make_config
from tests.waiting import until

pytestmark = pytest.mark.slow
STATE = "atp:{avail}:pickup:state"
STREAM = "atp:{avail}:pickup"
PICKUP = ('[[locations]]\nid = "store-1"\ntype = "store"\n\n[[channels]]\nname = "pickup"\nsells_from = ["store-1"]\n'
          'per_location = true\nthrottle_ms = 0\nrate_limit_per_s = 1000.0\n')
Kind = pb.WatchAvailabilityResponse


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[EmbeddedCluster]:
    """A cluster of its own: this test changes its topology."""
    with EmbeddedCluster(tmp_path / "cluster", primaries=3, replicas=1, node_timeout_ms=1000, sync_delay_s=0) as formed:
        yield formed


def _durable(port: int) -> tuple[dict[str, int], int]:
    """The pickup channel's published quantity per SKU, and its stream's newest version, on the node at ``port``."""
    with redis.Redis(host="127.0.0.1", port=port) as node:
        fields = node.hgetall(STATE)
        top = node.xrevrange(STREAM, count=1)
    quantities = {}
    for field, value in fields.items():
        (sku, _), published = state_entry(field, value)
        quantities[sku] = published.quantity
    return quantities, int(top[0][0].split(b"-")[0]) if top else 0


class Follower:
    """A subscriber's view: the newest quantity per SKU it was sent, and the last version it read."""

    def __init__(self, since: int) -> None:
        self.seen: dict[str, int] = {}
        self.version = since

    def take(self, message: pb.WatchAvailabilityResponse) -> None:
        for u in message.updates:
            self.seen[u.sku] = u.quantity
        self.version = message.version

    async def follow(self, call: grpc.aio.UnaryStreamCall) -> None:  # type: ignore[type-arg]
        with contextlib.suppress(grpc.aio.AioRpcError, asyncio.CancelledError):  # its Redis killed: it resumes
            async for message in call:
                self.take(message)


async def test_a_watch_resumed_after_a_failover_sees_what_replaced_a_write_the_replica_lacked_C4(
        cluster: EmbeddedCluster, tmp_path: Path) -> None:
    clock = ManualClock(T0)
    config = make_config(redis_cluster=True, input_streams=(), redis_wait_replicas=1, redis_wait_timeout_ms=300,
                         redis_timeout_s=1.0, estate=write_estate(tmp_path, PICKUP))
    service = AtpService(config, cluster.url, clock=clock)
    await service.start()
    # A refusal (UNAVAILABLE: a Redis node refusing or not answering) is retried with the same ids,
    # as the service's published retry policy says: a refusal decided nothing (R7).
    client = AtpClient(f"127.0.0.1:{service.port}", timeout_s=5.0, retry=RetryPolicy())
    finder = RedisCluster.from_url(cluster.url)
    watching: asyncio.Task[None] | None = None
    try:
        await finder.initialize()
        avail_port = _port_of(finder, STATE)
        assert service.engine is not None and service.channels is not None
        place, feed = service.engine.place, service.channels.feeds["pickup"]
        skus = [f"S{i}" for i in range(200)  # their shards' logs on other primaries: their writes stay confirmed
                if _port_of(finder, f"atp:{{g{place(f'S{i}')}}}:log") != avail_port][:2]
        await client.record_events([fact(f"c-{sku}", "COUNT", sku, "store-1", 40, T0) for sku in skus])
        second = T0 * VERSIONS_PER_MS + 1  # the start's first version is its clock's floor (C3)
        await until(lambda: feed.published_version >= second and not feed.in_flight, "both counts published", 30)
        start = feed.published_version
        follower = Follower(start)
        watching = asyncio.ensure_future(follower.follow(
            client.stub.WatchAvailability(pb.WatchAvailabilityRequest(channel="pickup"))))
        primary = next(node for node in cluster.nodes if node.port == avail_port)
        replica = _replica_of(cluster, primary)
        assert replica.process is not None
        failures = service.metrics.channels.write_failures
        os.kill(replica.process.pid, signal.SIGSTOP)  # the replica receives nothing more: the next write is in doubt
        try:
            with redis.Redis(host="127.0.0.1", port=avail_port) as admin:
                admin.execute_command("CLIENT", "KILL", "TYPE", "replica")
            await client.record_events([fact("a0", "COUNT", skus[0], "store-1", 0, T0 + 1)])
            await until(lambda: follower.seen.get(skus[0]) == 0
                        or sum(s.value for m in failures.collect() for s in m.samples if s.name.endswith("_total")),
                        "the stock-out's write sent to the primary (and watched), unconfirmed", 30)
            await client.record_events([fact("b0", "COUNT", skus[1], "store-1", 0, T0 + 2)])
            await until(lambda: feed.stockouts_pending, "the second stock-out waiting behind the write in doubt", 30)
            primary.kill()  # kill -9: the first stock-out never reached the replica
        finally:
            os.kill(replica.process.pid, signal.SIGCONT)
        await asyncio.to_thread(cluster.take_over, replica)  # every running node agreeing, serving
        # Back as a replica of the promoted one (writes can be confirmed again), every node agreeing: read on the
        # promoted one once every node serves, as back from its stop it may refuse CLUSTERDOWN a while.
        await asyncio.to_thread(cluster.rejoin, primary)
        await until(lambda: _durable(replica.port)[0] == dict.fromkeys(skus, 0) and not feed.in_flight,
                    "both stock-outs published on the promoted primary", 30)
        durable, top = _durable(replica.port)
        await cancel_and_wait(watching)  # until it has ended: one cancel can be lost on Python 3.11
        # The subscriber watches again from the last version it read, as told (docs/CHANNELS.md).
        call = client.stub.WatchAvailability(pb.WatchAvailabilityRequest(channel="pickup",
                                                                         since_version=follower.version))
        while follower.version < top:
            message = await asyncio.wait_for(call.read(), 30)
            if message.kind == Kind.KIND_RESNAPSHOT_REQUIRED:  # told so: it reads every value again
                call.cancel()
                call = client.stub.WatchAvailability(pb.WatchAvailabilityRequest(channel="pickup", snapshot=True))
                follower.seen.clear()
                continue
            follower.take(message)
        call.cancel()
        assert follower.seen == durable, "the subscriber's view is the channel's durable state"
    finally:
        await cancel_and_wait(watching)
        await finder.aclose()
        await client.close()
        await service.stop(grace_s=0.1)
