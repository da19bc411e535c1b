"""With several processes on one keyspace (``ownership = leases``) every new reservation id is
claimed in Redis before its Reserve is decided (R5 across processes). A shard at its bound on the
reservations it remembers refuses a new id without claiming it: a claim lives a day or so, so a
flood of new ids at a full shard grew Redis by a key a call while the shard refused them all."""

from __future__ import annotations

import zlib
from collections.abc import AsyncIterator

import grpc
import pytest
import redis.asyncio as aioredis

from atp_client.pb.atp.v1 import atp_pb2 as pb
from reservation import Limits
from tests.atp_service.app.test_processes import members_read, owned
from tests.atp_service.edge.test_api import receipt
from tests.atp_service.refusals import refused
from tests.conftest import ServiceFactory, services_on
from tests.ports import held_port
from tests.waiting import until


@pytest.fixture
async def start_process(redis_url: str) -> AsyncIterator[ServiceFactory]:
    async with services_on(redis_url, ownership="leases", lease_ms=5_000, balance_ms=200, shards=2,
                           input_streams=()) as start:
        yield start


@pytest.mark.parametrize("stream", [False, True])
async def test_new_ids_at_a_full_shard_are_refused_capacity_reached_without_a_claim(
        start_process: ServiceFactory, redis_url: str, stream: bool) -> None:
    limits = Limits(max_live_reservations_per_shard=3)
    service, client = await start_process(port=held_port(), host="127.0.0.1", limits=limits)
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


async def test_an_id_of_another_process_s_record_reused_at_a_full_shard_is_refused_naming_lines(
        start_process: ServiceFactory, redis_url: str) -> None:
    """R5: an id whose record another process holds, sent with lines of a full shard here, is refused
    naming ``lines``, as in one process (where its record's home decides) — not CAPACITY_REACHED,
    which says nothing of the id's record and is retried to no end; and it leaves no claim of its own."""
    limits = Limits(max_live_reservations_per_shard=1)
    running = [await start_process(port=held_port(), host="127.0.0.1", limits=limits) for _ in range(2)]
    await members_read(running)
    await until(lambda: all(len(owned(service)) == 1 for service, _ in running), "a group each", 60)
    here = "k0"
    there = next(sku for sku in (f"k{i}" for i in range(64)) if zlib.crc32(sku.encode()) % 2 != zlib.crc32(b"k0") % 2)
    if zlib.crc32(here.encode()) % 2 not in owned(running[0][0]):
        running.reverse()  # the first process owns ``here``'s group
    await until(lambda: all(s.membership is not None and s.membership.where(g)[0] == f"127.0.0.1:{o.port}"
                            for s, _ in running for o, _ in running for g in owned(o)), "each knows the other's", 60)
    await running[0][1].record_events([receipt("in-here", here, "DC", 10), receipt("in-there", there, "DC", 10)])
    (_, client), (_, other) = running
    assert (await client.reserve("x-1", [(here, "DC", 2)], ttl_seconds=600)).state == pb.RESERVATION_STATE_HELD
    await other.reserve("fill", [(there, "DC", 1)], ttl_seconds=600)  # ``there``'s shard at its bound
    async with aioredis.Redis.from_url(redis_url) as r:
        claims = len(await r.keys("atp:rid:*"))
        for caller in (client, other):
            refusal = await refused(caller.reserve("x-1", [(there, "DC", 3)], ttl_seconds=600))
            assert (refusal.code, refusal.reason, refusal.metadata) == (
                grpc.StatusCode.ALREADY_EXISTS, "RESERVATION_ID_REUSED", {"field": "lines"}), refusal
        batch = [pb.ReserveRequest(reservation_id="x-1", lines=[pb.Line(sku=there, location="DC", quantity=3)])]
        ((outcome,),) = [a.outcomes async for a in other.reserve_stream([batch])]
        assert outcome.error.code == grpc.StatusCode.ALREADY_EXISTS.value[0] and "lines" in outcome.error.message
        refusal = await refused(other.reserve("new", [(there, "DC", 1)], ttl_seconds=600))
        assert refusal.reason == "CAPACITY_REACHED", refusal  # a new id there: refused as before
        assert len(await r.keys("atp:rid:*")) == claims, "a refused id was claimed"


async def test_a_new_order_spanning_groups_one_short_of_the_bound_leaves_no_claim(
        start_process: ServiceFactory, redis_url: str) -> None:
    """An order's saga needs two records at its home (the order's and its part there): one short of the
    bound it is refused CAPACITY_REACHED, and its id must not be claimed either."""
    limits = Limits(max_live_reservations_per_shard=2)
    _, client = await start_process(port=held_port(), host="127.0.0.1", limits=limits)
    low, high = sorted(("k0", next(f"k{i}" for i in range(64) if zlib.crc32(f"k{i}".encode()) % 2
                                   != zlib.crc32(b"k0") % 2)), key=lambda sku: zlib.crc32(sku.encode()) % 2)
    await client.record_events([receipt("s1", low, "DC", 10), receipt("s2", high, "DC", 10)])
    await client.reserve("fill", [(low, "DC", 1)], ttl_seconds=600)  # the home one short of its bound
    async with aioredis.Redis.from_url(redis_url) as r:
        claims = len(await r.keys("atp:rid:*"))
        for n in range(3):
            refusal = await refused(client.reserve(f"order-{n}", [(low, "DC", 1), (high, "DC", 1)]))
            assert refusal.reason == "CAPACITY_REACHED", refusal
        assert len(await r.keys("atp:rid:*")) == claims, "a refused order's id was claimed"
