"""With several processes on one keyspace (``ownership = leases``) every new reservation id is
claimed in Redis before its Reserve is decided (R5 across processes). A shard at its bound on the
reservations it remembers refuses a new id without claiming it: a claim lives a day or so, so a
flood of new ids at a full shard grew Redis by a key a call while the shard refused them all."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
import redis.asyncio as aioredis

from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_service import free_port
from reservation import Limits
from tests.atp_service.edge.test_api import receipt
from tests.conftest import ServiceFactory, services_on


@pytest.fixture
async def start_process(redis_url: str) -> AsyncIterator[ServiceFactory]:
    async for start in services_on(redis_url, ownership="leases", lease_ms=5_000, balance_ms=200, shards=2,
                                   input_streams=()):
        yield start


@pytest.mark.parametrize("stream", [False, True])
async def test_new_ids_at_a_full_shard_are_refused_capacity_reached_without_a_claim(
        start_process: ServiceFactory, redis_url: str, stream: bool) -> None:
    limits = Limits(max_live_reservations_per_shard=3)
    service, client = await start_process(port=free_port(), host="127.0.0.1", limits=limits)
    await client.record_events([receipt("s1", "A", "S1", 100)])
    for n in range(3):
        await client.reserve(f"fill-{n}", [("A", "S1", 1)], ttl_seconds=600)
    async with aioredis.Redis.from_url(redis_url) as r:
        claims = len(await r.keys("atp:rid:*"))
        assert claims == 3
        for n in range(10):
            if stream:
                batch = [pb.ReserveRequest(reservation_id=f"new-{n}",
                                           lines=[pb.Line(sku="A", location="S1", quantity=1)])]
                ((outcome,),) = [r.outcomes async for r in client.reserve_stream([batch])]
                assert outcome.error.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0], outcome
                assert "max_live_reservations_per_shard" in outcome.error.message
            else:
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await client.reserve(f"new-{n}", [("A", "S1", 1)], ttl_seconds=600)
                assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                assert "max_live_reservations_per_shard" in (refused.value.details() or "")
        assert len(await r.keys("atp:rid:*")) == claims, "a refused id was claimed"
    again = await client.reserve("fill-0", [("A", "S1", 1)], ttl_seconds=600)
    assert again.replayed  # a retry of one remembered is answered (R5)
    assert service.engine is not None
