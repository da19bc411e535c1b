"""Entries trimmed from an input stream before the group read them are counted exactly once, by the
read that crosses the gap (atp_ingest_trimmed_unread_total, alert ATPInputTrimmedUnread): whenever
the producer's MAXLEN trims, whatever the reader is doing, and never for entries read by another
consumer of the group. Real redis-server, real service."""

from __future__ import annotations

import time
from collections.abc import Awaitable

import redis.asyncio as aioredis

from atp_client import AtpClient
from atp_service import AtpService
from tests.atp_service.fact_helpers import F
from tests.conftest import ServiceFactory
from tests.waiting import until

POS, GROUP, TOTAL = "atp:in:pos", "atp", "atp_ingest_trimmed_unread_total"


async def blocked_readers(r: aioredis.Redis) -> int:
    """Clients of this Redis blocked in a command (the service's reader waiting for new entries)."""
    return sum(1 for c in await r.client_list() if "b" in c["flags"])


async def blocked_reader(start_service: ServiceFactory,
                         redis_url: str) -> tuple[aioredis.Redis, AtpService, AtpClient]:
    """A client of the test's Redis, and a service whose input streams' reader waits in a blocking read."""
    r = aioredis.Redis.from_url(redis_url)
    try:
        service, client = await start_service(ingest_block_ms=60_000)
        await until(lambda: _positive(blocked_readers(r)), "the reader blocked waiting for entries", 30)
    except BaseException:
        await r.aclose()
        raise
    return r, service, client


async def test_entries_trimmed_while_the_reader_is_blocked_are_counted_exactly(
        start_service: ServiceFactory, redis_url: str) -> None:
    """The reader waits in a blocking read; a producer adds 10 receipts with MAXLEN=3 in one MULTI.
    The blocked read was served after EXEC with the 3 left, moving the group past the 7 lost before
    any gap check saw them: on_hand 3 instead of 10, nothing counted, no alert, no log."""
    r, service, client = await blocked_reader(start_service, redis_url)
    registry = service.metrics.registry
    try:
        now = int(time.time() * 1000)
        async with r.pipeline(transaction=True) as pipe:
            for n in range(10):
                pipe.xadd(POS, F(f"p{n}", "RECEIPT", "A", "S1", 1, now - 1000 + n).fields(), maxlen=3,
                          approximate=False)
            await pipe.execute()
        await until(lambda: registry.get_sample_value(TOTAL, {"stream": POS}) == 7, "7 entries counted lost")
        await until(lambda: _on_hand_is(client, 3), "the 3 entries left applied", 30)
        # The group's lag (atp_ingest_lag, ATPIngestBehind) is 0 once read through: not raised for
        # good by the entries lost (Redis 7.0 kept counting them unread), and nothing counted twice.
        await until(lambda: registry.get_sample_value("atp_ingest_lag", {"stream": POS}) == 0, "lag 0", 30)
        assert registry.get_sample_value(TOTAL, {"stream": POS}) == 7
    finally:
        await r.aclose()


async def test_entries_trimmed_while_the_reader_reads_full_batches_are_counted_exactly(
        start_service: ServiceFactory, redis_url: str) -> None:
    """A backlog read 10 at a time; the producer trims most of what is not read yet. Every entry is
    either applied (a receipt of 1) or counted lost: none lost without a count, none counted twice."""
    r = aioredis.Redis.from_url(redis_url)
    now, backlog = int(time.time() * 1000), 3000
    await r.xgroup_create(POS, GROUP, id="0", mkstream=True)
    async with r.pipeline(transaction=False) as pipe:
        for n in range(backlog):
            pipe.xadd(POS, F(f"b{n}", "RECEIPT", "A", "S1", 1, now - 10_000 + n).fields())
        await pipe.execute()
    service, client = await start_service(ingest_count=10, ingest_count_publishing=10)
    registry = service.metrics.registry
    try:
        await until(lambda: _on_hand_at_least(client, 10), "the reader busy with the backlog", 30)
        async with r.pipeline(transaction=True) as pipe:
            for n in range(50):
                pipe.xadd(POS, F(f"t{n}", "RECEIPT", "A", "S1", 1, now + n).fields(), maxlen=100, approximate=False)
            await pipe.execute()

        async def all_accounted() -> bool:
            applied = (await client.availability([("A", "S1")]))[0].on_hand
            return applied + (registry.get_sample_value(TOTAL, {"stream": POS}) or 0) == backlog + 50
        await until(all_accounted, "every entry applied or counted lost", 60)
        assert (registry.get_sample_value(TOTAL, {"stream": POS}) or 0) > 0  # the gap was crossed mid-backlog
        await until(lambda: registry.get_sample_value("atp_ingest_lag", {"stream": POS}) == 0, "lag 0", 30)
    finally:
        await r.aclose()


async def test_entries_another_consumer_read_before_the_trim_are_not_counted(
        start_service: ServiceFactory, redis_url: str) -> None:
    """Another process's consumer of the group reads 10 entries; the producer then trims them away.
    They were read, not lost: counting them would page the operator for sales that were applied."""
    r, service, client = await blocked_reader(start_service, redis_url)
    registry = service.metrics.registry
    try:
        now = int(time.time() * 1000)
        async with r.pipeline(transaction=True) as pipe:  # in one go: the blocked reader gets none of them
            for n in range(10):
                pipe.xadd(POS, {"x-other": str(n)})
            pipe.xreadgroup(GROUP, "atp@10.0.0.2", {POS: ">"}, count=100)
            pipe.xadd(POS, F("p10", "RECEIPT", "A", "S1", 1, now).fields(), maxlen=1, approximate=False)
            await pipe.execute()
        await until(lambda: _on_hand_is(client, 1), "the entry after the trim applied", 30)
        await until(lambda: registry.get_sample_value("atp_ingest_lag", {"stream": POS}) == 0, "lag 0", 30)
        assert registry.get_sample_value(TOTAL, {"stream": POS}) == 0
    finally:
        await r.aclose()


async def _positive(count: Awaitable[int]) -> bool:
    return await count > 0


async def _on_hand_is(client: AtpClient, units: int) -> bool:
    return (await client.availability([("A", "S1")]))[0].on_hand == units


async def _on_hand_at_least(client: AtpClient, units: int) -> bool:
    return (await client.availability([("A", "S1")]))[0].on_hand >= units
