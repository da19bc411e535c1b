"""WatchAvailability when Redis fails it: a documented, retryable status (UNAVAILABLE with its reason
and a retry delay), not UNKNOWN with Redis's address in it; and a quiet watch is not ended by the
service's own Redis timeout."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import grpc
import pytest
import redis.asyncio as aioredis

from atp_client import typed
from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_service import ManualClock
from tests.atp_service.channel_helpers import fact, wait_for_updates, write_estate
from tests.conftest import ServiceFactory
from tests.waiting import answered

T = 1_700_000_000_000


async def _blocked_reader(redis_url: str) -> int:
    """The id of the Redis client blocked in XREAD (the watcher's connection)."""
    raw = aioredis.Redis.from_url(redis_url, decode_responses=True)
    found: list[int] = []

    async def blocked() -> bool:
        found[:] = [int(c["id"]) for c in await raw.client_list() if c.get("cmd") == "xread" and "b" in c["flags"]]
        return bool(found)

    try:
        for _ in range(1000):  # bounded: 10 s
            if await blocked():
                return found[0]
            await asyncio.sleep(0.01)
        raise AssertionError("no watcher blocked in XREAD")
    finally:
        await raw.aclose()


async def test_a_watch_whose_redis_read_fails_ends_unavailable_with_its_reason(
        start_service: ServiceFactory, tmp_path: Path, clock: ManualClock, redis_url: str) -> None:
    # No input streams: their reader's wait for new entries is an XREAD too, and the one killed must
    # be the watcher's.
    service, client = await start_service(clock=clock, estate=write_estate(tmp_path), input_streams=())
    await client.record_events([fact("c1", "COUNT", "sku-a", "dc-1", 40, T)])
    # Confirmed: the watch begins after c1, blocked in XREAD for what comes next (else it reads c1 there).
    await wait_for_updates(redis_url, "market", 1, desk=service.channels)
    call = client.stub.WatchAvailability(pb.WatchAvailabilityRequest(channel="market"))
    victim = await _blocked_reader(redis_url)
    raw = aioredis.Redis.from_url(redis_url)
    await raw.execute_command("CLIENT", "KILL", "ID", victim)
    await raw.aclose()
    with pytest.raises(grpc.aio.AioRpcError) as ended:
        await asyncio.wait_for(call.read(), 10)
    said = typed(ended.value).refusal
    assert (said.code, said.reason) == (grpc.StatusCode.UNAVAILABLE, "STORAGE_UNREACHABLE")
    assert "127.0.0.1" not in (ended.value.details() or "")


async def test_a_quiet_watch_outlives_a_short_redis_timeout(
        start_service: ServiceFactory, tmp_path: Path, clock: ManualClock, redis_url: str) -> None:
    """Its read of the stream blocked for 1 s against a 0.5 s socket timeout: every watch of a
    channel quiet for a second ended, against a healthy Redis."""
    _, client = await start_service(clock=clock, estate=write_estate(tmp_path), redis_timeout_s=0.5,
                                    input_streams=())  # the watcher's the only XREAD blocked
    await answered(lambda: client.record_events([fact("c1", "COUNT", "sku-a", "dc-1", 40, T)]))
    await wait_for_updates(redis_url, "market", 1)
    call = client.stub.WatchAvailability(pb.WatchAvailabilityRequest(channel="market"))
    await _blocked_reader(redis_url)
    await asyncio.sleep(2.0)  # the scenario: quiet for four socket timeouts
    assert not call.done()
    # a change: it is told
    await answered(lambda: client.record_events([fact("s1", "SALE", "sku-a", "dc-1", 40, T + 1)]))
    message = await asyncio.wait_for(call.read(), 10)
    assert message.kind == pb.WatchAvailabilityResponse.KIND_CHANGES
    call.cancel()


async def test_a_quiet_watch_outlives_a_stall_of_its_process_past_the_redis_timeout(
        start_service: ServiceFactory, tmp_path: Path, clock: ManualClock, redis_url: str) -> None:
    """The process stalls (a long collection, a starved CPU) while the watch's read is blocked: when it runs
    again, Redis's empty reply and the read's 0.5 s deadline are due in the same pass of the loop, and the
    deadline runs first. The read changed nothing: it is asked again, and the watch goes on."""
    _, client = await start_service(clock=clock, estate=write_estate(tmp_path), redis_timeout_s=0.5,
                                    input_streams=())
    await answered(lambda: client.record_events([fact("c1", "COUNT", "sku-a", "dc-1", 40, T)]))
    await wait_for_updates(redis_url, "market", 1)
    call = client.stub.WatchAvailability(pb.WatchAvailabilityRequest(channel="market"))
    await _blocked_reader(redis_url)
    time.sleep(1.5)  # noqa: ASYNC251 -- the stall itself: the whole event loop held past the deadline
    await asyncio.sleep(0.1)
    assert not call.done()
    await answered(lambda: client.record_events([fact("s1", "SALE", "sku-a", "dc-1", 40, T + 1)]))
    message = await asyncio.wait_for(call.read(), 10)
    assert message.kind == pb.WatchAvailabilityResponse.KIND_CHANGES
    call.cancel()
