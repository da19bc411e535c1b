"""R8 over real gRPC and Redis: callers whose deadlines expire at any moment of a cross-shard Reserve
change nothing about correctness — every shard goes on answering, and memory equals the log."""

from __future__ import annotations

import asyncio
import random

import grpc

from atp_client import AtpClient
from atp_service import AtpService
from atp_service.storage.log import LogStore, connect
from reservation import Ledger, decode_entry
from tests.atp_service.edge.test_api import receipt
from tests.conftest import ServiceFactory
from tests.waiting import until

CALLERS = 16
CALLS_EACH = 120
DOOR_TRIES = 60
"""Tries of a liveness Reserve refused at the door (each already retried by the client's policy)."""


def _one_sku_per_shard(service: AtpService) -> list[str]:
    engine = service.engine
    assert engine is not None
    found: dict[int, str] = {}
    for i in range(1000):
        found.setdefault(engine.place(f"SKU-{i}"), f"SKU-{i}")
    return [found[shard] for shard in sorted(found)]


async def _caller(target: str, skus: list[str], seed: int) -> None:
    """Two-line Reserves over two shards, confirms and releases, each with a deadline of 1-20 ms."""
    rng = random.Random(seed)
    async with AtpClient(target) as client:
        for n in range(CALLS_EACH):
            client.timeout_s = rng.uniform(0.001, 0.02)
            first, second = rng.sample(skus, 2)
            rid = f"c{seed}-{n // 2}"  # every id is tried twice: a retry after a deadline
            try:
                if rng.random() < 0.8:
                    await client.reserve(rid, [(first, "DC", 1), (second, "DC", 1)], ttl_seconds=600)
                elif rng.random() < 0.5:
                    await client.confirm(rid)
                else:
                    await client.release(rid)
            except grpc.aio.AioRpcError:
                pass  # deadline exceeded, refused, not found: the outcome is not the point here


async def test_callers_timing_out_mid_cross_shard_reserve_leave_every_shard_answering_and_memory_equal_to_the_log(
        start_service: ServiceFactory, redis_url: str) -> None:
    service, client = await start_service(shards=4)
    skus = _one_sku_per_shard(service)
    assert len(skus) == 4
    await client.record_events([receipt(f"stock-{sku}", sku, "DC", 100_000) for sku in skus])
    target = f"127.0.0.1:{service.port}"
    await asyncio.gather(*(_caller(target, skus, seed) for seed in range(CALLERS)))

    # Liveness: every shard decides a new order, alone and across shards.
    for i, sku in enumerate(skus):
        assert await _decided(client, f"alive-{i}", [(sku, "DC", 1)])
    assert await _decided(client, "alive-all", [(sku, "DC", 1) for sku in skus])

    engine = service.engine
    assert engine is not None
    await until(lambda: not any(a._inflight or a.in_doubt for a in engine.actors), "every append settled")
    assert all(actor.failure is None for actor in engine.actors)
    await _memory_equals_log(service, redis_url)


async def _decided(client: AtpClient, rid: str, lines: list[tuple[str, str, int]]) -> bool:
    """Whether a Reserve of ``rid`` is HELD once the service takes it up. The callers' abandoned
    calls may still fill gRPC's queue ahead of the service (``max_pending_calls``) for a while on a
    busy machine, and a call refused there (CANCELLED, RESOURCE_EXHAUSTED) never reached a shard:
    it is tried again with the same id (R5), within a bound. Any other answer is the shard's."""
    for _ in range(DOOR_TRIES):
        try:
            return (await client.reserve(rid, lines, ttl_seconds=600)).state == 1
        except grpc.aio.AioRpcError as err:
            if err.code() not in (grpc.StatusCode.CANCELLED, grpc.StatusCode.RESOURCE_EXHAUSTED):
                raise
        await asyncio.sleep(0.5)
    raise AssertionError(f"{rid}: refused at the door {DOOR_TRIES} times over")


async def _memory_equals_log(service: AtpService, redis_url: str) -> None:
    """E10: a replay of each shard's snapshot and log gives exactly what the shard holds in memory."""
    assert service.engine is not None
    redis = connect(redis_url, 5.0)
    try:
        store = LogStore(redis, service.config.key_prefix, pipeline_max=1)
        for actor in service.engine.actors:
            snap = await store.load_snapshot(actor.shard)
            limits = service.config.limits
            ledger = Ledger.restore(actor.shard, limits, snap.ledger) if snap else Ledger(actor.shard, limits)
            async for _, data in store.entries_after(actor.shard, snap.seq if snap else 0):
                ledger.replay(decode_entry(data))
            assert sorted(ledger.store.items()) == sorted(actor.ledger.store.items()), f"shard {actor.shard}"
            assert ledger.reservations == actor.ledger.reservations, f"shard {actor.shard}"
    finally:
        await redis.aclose()
