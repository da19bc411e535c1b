"""A Redis Cluster primary that hangs (SIGSTOP: it takes connections and bytes, answers nothing)
while a Reserve of one of its shards waits on it: a Reserve of a shard served by another primary is
held and durable while that one still waits — the log commits each shard on its own, so a hung
primary holds only the shards it serves (liveness: every shard answers). Once it runs again, every
shard answers, and a restart reads back from the log what memory held."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Iterable

from atp_client import AtpClient
from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_service.engine.router import Engine
from atp_service.storage.embedded_cluster import EmbeddedCluster
from tests.atp_service.app.test_cluster_failover_service import _retried
from tests.atp_service.conftest import served
from tests.atp_service.edge.test_api import receipt
from tests.conftest import test_config as make_config
from tests.waiting import until

SHARDS = 8
PATIENT_TIMEOUT_S = 15.0
"""The service's Redis timeout: no write to a node that answers comes near it, so while the hung node
is stopped a write to it can end only by this timeout — one still waiting is one not answered."""


def _a_sku_per_shard(engine: Engine) -> dict[int, str]:
    skus: dict[int, str] = {}
    for n in range(10_000):
        skus.setdefault(engine.place(f"K{n}"), f"K{n}")
        if len(skus) == SHARDS:
            return skus
    raise AssertionError("no SKU for some shard")


def _shard_ports(engine: Engine, shards: Iterable[int]) -> dict[int, int]:
    """The port of the primary that serves each shard's log."""
    return {shard: int(engine.log_client.get_node_from_key(engine._log.keys.log(shard)).port) for shard in shards}


async def _state(client: AtpClient, skus: list[str]) -> tuple[list[tuple[int, int]], list[int]]:
    """Every SKU's (on hand, reserved) at S1, and the state of each reservation of this test."""
    positions = [(p.on_hand, p.reserved) for p in await client.availability([(sku, "S1") for sku in skus])]
    ids = ["stuck", "elsewhere", *(f"after-{sku}" for sku in skus)]
    return positions, [(await client.get_reservation(rid)).state for rid in ids]


async def test_a_hung_primary_holds_no_reserve_of_a_shard_served_by_another(cluster: EmbeddedCluster) -> None:
    config = make_config(redis_cluster=True, input_streams=(), shards=SHARDS, redis_timeout_s=PATIENT_TIMEOUT_S)
    async with served(config, cluster.url, 60.0) as (service, client):
        engine = service.engine
        assert engine is not None
        skus = _a_sku_per_shard(engine)
        await client.record_events([receipt(f"stock-{sku}", sku, "S1", 10) for sku in skus.values()])
        port = _shard_ports(engine, skus)
        hung = next(node for node in cluster.primaries if node.port == port[0])
        elsewhere = next(shard for shard in skus if port[shard] != hung.port)
        assert hung.process is not None
        os.kill(hung.process.pid, signal.SIGSTOP)
        try:
            stuck = asyncio.ensure_future(client.reserve("stuck", [(skus[0], "S1", 1)], ttl_seconds=3600))
            actor, log = engine.actors[0], engine._log
            await until(lambda: actor._inflight and not log.unsent(actor._inflight[0].done), "its append sent")
            held = await client.reserve("elsewhere", [(skus[elsewhere], "S1", 1)], ttl_seconds=3600)
            assert held.state == pb.RESERVATION_STATE_HELD  # durable: answered only once its append was
            assert not stuck.done(), "the Reserve of a shard on a primary that answers waited for the hung one"
        finally:
            os.kill(hung.process.pid, signal.SIGCONT)
        await asyncio.wait([stuck])  # held, or its outcome unknown: asked again by id it answers (R5)
        again = await _retried(lambda: client.reserve("stuck", [(skus[0], "S1", 1)], ttl_seconds=3600))
        assert again.state == pb.RESERVATION_STATE_HELD
        for sku in skus.values():  # every shard answers a write again (liveness)
            after = await _retried(lambda sku=sku: client.reserve(f"after-{sku}", [(sku, "S1", 1)],  # type: ignore[misc]
                                                                   ttl_seconds=3600))
            assert after.state == pb.RESERVATION_STATE_HELD and not after.replayed
        before = await _state(client, list(skus.values()))
        assert sorted(before[0]) == sorted([(10, 1)] * (SHARDS - 2) + [(10, 2)] * 2)  # each unit held once
    async with served(config, cluster.url, 60.0) as (_, client):
        assert await _state(client, list(skus.values())) == before  # what memory held is what the log holds
