"""``UnreadWatch``: entries trimmed from an input stream before its group read them, and only those."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, cast

import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry, Counter

from atp_service.intake.unread import UnreadWatch

STREAM, GROUP = "atp:in:pos", "atp"


class ReadsOnBetween(aioredis.Redis):
    """A real client after whose XINFO GROUPS ``between`` runs: what other processes do meanwhile."""

    between: Callable[[], Awaitable[None]] | None = None

    async def xinfo_groups(self, name: Any) -> Any:
        groups = await super().xinfo_groups(name)
        if self.between is not None:
            between, self.between = self.between, None
            await between()
        return groups


async def test_entries_another_consumer_read_before_they_were_trimmed_are_not_counted_lost(redis_url: str) -> None:
    """With several processes reading one group, another consumer may read the backlog and the
    producer's MAXLEN trim it between the group's XINFO and the stream's: the group's old position
    and lag against the stream as trimmed since read as entries lost unread, a critical alert
    (ATPInputTrimmedUnread) and an error log telling the operator sales were never applied."""
    client = cast(ReadsOnBetween, ReadsOnBetween.from_url(redis_url))
    other = aioredis.Redis.from_url(redis_url)
    await other.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
    for n in range(10):
        await other.xadd(STREAM, {"n": n})

    async def another_process_reads_then_the_producer_trims() -> None:
        await other.xreadgroup(GROUP, "atp@10.0.0.2", {STREAM: ">"}, count=100)
        await other.xadd(STREAM, {"n": 10}, maxlen=1, approximate=False)

    client.between = another_process_reads_then_the_producer_trims
    counter = Counter("trimmed_unread", "test", ["stream"], registry=CollectorRegistry())
    try:
        assert await UnreadWatch(client, GROUP, counter).check(STREAM) == 0
        assert counter.labels(STREAM)._value.get() == 0
    finally:
        await client.aclose()
        await other.aclose()


async def test_entries_trimmed_unread_are_counted_once_and_a_missing_stream_is_none(redis_url: str) -> None:
    client = aioredis.Redis.from_url(redis_url)
    counter = Counter("trimmed_unread", "test", ["stream"], registry=CollectorRegistry())
    watch = UnreadWatch(client, GROUP, counter)
    try:
        assert await watch.check(STREAM) == 0  # no such stream yet
        await client.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
        await client.xadd(STREAM, {"n": 0})
        await client.xreadgroup(GROUP, "atp-1", {STREAM: ">"}, count=10)  # read: the group's lag is known
        for n in range(1, 11):
            await client.xadd(STREAM, {"n": n}, maxlen=1, approximate=False)
        assert await watch.check(STREAM) == 9
        assert await watch.check(STREAM) == 0  # the same gap: told once
        assert counter.labels(STREAM)._value.get() == 9
    finally:
        await client.aclose()
