"""A Redis Cluster primary killed under a reservation load, the service acknowledging after one
replica confirms (``redis_wait_replicas`` 1): its shards stop answering writes until the replica
takes over (and, to confirm writes again, the killed node rejoins as a replica), nothing it
acknowledged is lost, every shard answers again, and every unit is held once (R7, liveness)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import grpc
import pytest

from atp_client import AtpClient
from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_service.storage.embedded_cluster import EmbeddedCluster
from tests.atp_service.conftest import served
from tests.atp_service.edge.test_api import receipt
from tests.conftest import test_config as make_config
from tests.waiting import until

SKUS = [f"K{i}" for i in range(8)]
T = TypeVar("T")
pytestmark = pytest.mark.slow


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[EmbeddedCluster]:
    """A cluster of its own: this test changes its topology."""
    with EmbeddedCluster(tmp_path / "cluster", primaries=3, replicas=1, node_timeout_ms=1000, sync_delay_s=0) as formed:
        yield formed


async def load(client: AtpClient, worker: int, acked: set[str], tried: set[str], stop: asyncio.Event) -> None:
    n = 0
    while not stop.is_set():
        rid = f"w{worker}-{n}"
        tried.add(rid)
        lines = [(SKUS[(worker + n) % len(SKUS)], "DC", 1), (SKUS[(worker + 3 * n + 1) % len(SKUS)], "DC", 1)]
        try:
            if (await client.reserve(rid, lines, ttl_seconds=3600)).state == pb.RESERVATION_STATE_HELD:
                acked.add(rid)
        except grpc.aio.AioRpcError as exc:
            if exc.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
                                  grpc.StatusCode.RESOURCE_EXHAUSTED):
                raise
            await asyncio.sleep(0.05)
        n += 1


async def test_a_primary_killed_under_load_loses_nothing_acknowledged(cluster: EmbeddedCluster) -> None:
    config = make_config(redis_cluster=True, input_streams=(), redis_wait_replicas=1, redis_wait_timeout_ms=300,
                         redis_timeout_s=1.0)
    # 30 s for the seeding and the checks, which must be answered (a bound against a hang); the load's
    # calls keep 3 s, whose DEADLINE_EXCEEDED through the failover it takes as a change in doubt.
    async with served(config, cluster.url, 30.0) as (service, client):
        await client.record_events([receipt(f"seed-{s}", s, "DC", 100_000) for s in SKUS])
        acked: set[str] = set()
        tried: set[str] = set()
        stop = asyncio.Event()
        client.timeout_s = 3.0
        workers = [asyncio.ensure_future(load(client, w, acked, tried, stop)) for w in range(8)]
        await until(lambda: len(acked) >= 40, "the load got going", 120)
        before = len(acked)
        assert service.engine is not None
        victim = next(node for node in cluster.primaries
                      if node.port == service.engine.log_client.get_node_from_key("atp:{g0}:log").port)
        victim.kill()  # kill -9 under the load
        await asyncio.to_thread(cluster.fail_over, victim)  # back as a replica once its replica took over
        await until(lambda: len(acked) >= before + 50, "writes acknowledged again after the failover", 60)
        stop.set()
        await asyncio.gather(*workers)
        client.timeout_s = 30.0
        for s in SKUS:  # every shard answers a write again (liveness), once its appends in doubt are settled
            await _retried(lambda s=s: client.record_events([receipt(f"after-{s}", s, "DC", 1)]))  # type: ignore[misc]
        held: dict[str, int] = {}
        for rid in sorted(tried):
            try:
                rec = await _retried(lambda rid=rid: client.get_reservation(rid))  # type: ignore[misc]
            except grpc.aio.AioRpcError as exc:
                assert exc.code() == grpc.StatusCode.NOT_FOUND and rid not in acked, (rid, exc.details())
                continue
            assert rec.state == pb.RESERVATION_STATE_HELD or rid not in acked, rid
            for line in rec.lines:
                held[line.sku] = held.get(line.sku, 0) + line.held
        for p in await client.availability([(s, "DC") for s in SKUS]):
            assert p.reserved == held.get(p.sku, 0), p  # every unit held once, by a reservation that is there


async def _retried(call: Callable[[], Awaitable[T]], bound_s: float = 30.0) -> T:
    """``call()`` until it is not UNAVAILABLE (a shard still settling), within ``bound_s``."""
    deadline = asyncio.get_running_loop().time() + bound_s
    while True:
        try:
            return await call()
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.UNAVAILABLE or asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.1)
