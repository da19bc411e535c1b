"""``GroupReader``: the read that crosses entries trimmed before the group read them counts them,
exactly, whichever consumer of the group (process) it is — against a real redis-server's counters."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry, Counter
from redis.exceptions import ResponseError

from atp_service.intake.backlog import Backlog, backlog
from atp_service.intake.unread import GroupReader
from atp_service.storage.resp import group_lost

STREAM, GROUP = "atp:in:pos", "atp"


def counted(counter: Counter) -> float:
    return float(counter.labels(STREAM)._value.get())


async def test_gaps_crossed_by_consumers_of_two_processes_are_each_counted_once(redis_url: str) -> None:
    """Redis 7.0 counts a group's entries read one by one as delivered: after a read across 7 lost
    entries its lag stayed 7 too high for good, and the next gap, crossed by another process's
    consumer, counted those 7 again with its own."""
    client = aioredis.Redis.from_url(redis_url)
    counter = Counter("trimmed_unread", "test", ["stream"], registry=CollectorRegistry())
    first = GroupReader(client, [STREAM], GROUP, "atp@10.0.0.1", counter)
    second = GroupReader(client, [STREAM], GROUP, "atp@10.0.0.2", counter)
    try:
        await client.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
        await client.xadd(STREAM, {"n": 0})
        assert len((await first.read(100, None))[0][1]) == 1
        for n in range(1, 11):  # 1..7 trimmed unread, 8..10 left
            await client.xadd(STREAM, {"n": n}, maxlen=3, approximate=False)
        assert len((await first.read(2, None))[0][1]) == 2  # crosses the gap: 7 lost
        assert counted(counter) == 7
        assert len((await second.read(100, None))[0][1]) == 1  # no gap: nothing more
        assert counted(counter) == 7
        for n in range(11, 20):  # 11..14 trimmed unread, 15..19 left
            await client.xadd(STREAM, {"n": n}, maxlen=5, approximate=False)
        assert len((await second.read(100, None))[0][1]) == 5
        assert counted(counter) == 7 + 4
        assert await first.read(100, None) is None  # nothing left, nothing counted
        assert counted(counter) == 11
        assert await backlog(client, STREAM, GROUP) == Backlog(pending=1 + 2 + 1 + 5, lag=0, consumers=2)
    finally:
        await client.aclose()


async def test_entries_another_consumer_read_before_they_were_trimmed_are_not_counted(redis_url: str) -> None:
    client = aioredis.Redis.from_url(redis_url)
    counter = Counter("trimmed_unread", "test", ["stream"], registry=CollectorRegistry())
    reader = GroupReader(client, [STREAM], GROUP, "atp@10.0.0.1", counter)
    try:
        await client.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
        for n in range(10):
            await client.xadd(STREAM, {"n": n})
        await client.xreadgroup(GROUP, "atp@10.0.0.2", {STREAM: ">"}, count=100)
        await client.xadd(STREAM, {"n": 10}, maxlen=1, approximate=False)
        assert len((await reader.read(100, None))[0][1]) == 1
        assert counted(counter) == 0
    finally:
        await client.aclose()


async def test_entries_deleted_after_the_position_are_not_counted_as_trimmed(redis_url: str) -> None:
    """An operator's XDEL of unread entries is no producer's MAXLEN: Redis cannot tell them apart."""
    client = aioredis.Redis.from_url(redis_url)
    counter = Counter("trimmed_unread", "test", ["stream"], registry=CollectorRegistry())
    reader = GroupReader(client, [STREAM], GROUP, "atp@10.0.0.1", counter)
    try:
        await client.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
        ids = [await client.xadd(STREAM, {"n": n}) for n in range(5)]
        await client.xdel(STREAM, ids[0], ids[1])
        assert len((await reader.read(100, None))[0][1]) == 3
        assert counted(counter) == 0
    finally:
        await client.aclose()


async def test_a_stream_without_its_group_is_refused_as_group_lost(redis_url: str) -> None:
    client = aioredis.Redis.from_url(redis_url)
    counter = Counter("trimmed_unread", "test", ["stream"], registry=CollectorRegistry())
    try:
        with pytest.raises(ResponseError) as refused:
            await GroupReader(client, [STREAM], GROUP, "atp@10.0.0.1", counter).read(10, 1)
        assert group_lost(refused.value)
        assert await backlog(client, STREAM, GROUP) is None
    finally:
        await client.aclose()


@pytest.mark.parametrize("stray", ["owed", "mark"])
async def test_a_key_of_another_type_refuses_the_read_before_it_crosses_a_gap(redis_url: str, stray: str) -> None:
    """The read that crosses a gap owes its count in the consumer's hash, and answers the group's made-again mark:
    either of another type (an operator's key) failed the script after XREADGROUP had moved the group past the gap,
    the entries trimmed unread never counted nor said. Refused first, nothing is read; the gap is counted once the
    key is removed."""
    client = aioredis.Redis.from_url(redis_url)
    counter = Counter("trimmed_unread", "test", ["stream"], registry=CollectorRegistry())
    reader = GroupReader(client, [STREAM], GROUP, "atp@10.0.0.1", counter)
    key = reader.owed_key if stray == "owed" else f"{STREAM}:made-again:{GROUP}"
    try:
        await client.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
        for n in range(5):  # 0..2 trimmed unread, 3 and 4 left
            await client.xadd(STREAM, {"n": n}, maxlen=2, approximate=False)
        await client.rpush(key, "an operator's")
        with pytest.raises(ResponseError, match="WRONGTYPE"):
            await reader.read(100, None)
        (group,) = await client.xinfo_groups(STREAM)
        assert group["last-delivered-id"] == b"0-0" and group["pending"] == 0
        await client.delete(key)
        assert len((await reader.read(100, None))[0][1]) == 2
        assert counted(counter) == 3
    finally:
        await client.aclose()


async def test_an_owed_count_that_is_no_count_refuses_the_read_before_it_crosses_a_gap(redis_url: str) -> None:
    """The consumer's hash is a hash, but its field for the stream holds no count (a restore of other data): its
    HINCRBY failed after XREADGROUP had moved the group past the gap, the entries trimmed unread never counted."""
    client = aioredis.Redis.from_url(redis_url)
    counter = Counter("trimmed_unread", "test", ["stream"], registry=CollectorRegistry())
    reader = GroupReader(client, [STREAM], GROUP, "atp@10.0.0.1", counter)
    try:
        await client.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
        for n in range(5):  # 0..2 trimmed unread, 3 and 4 left
            await client.xadd(STREAM, {"n": n}, maxlen=2, approximate=False)
        await client.hset(reader.owed_key, STREAM, "an operator's")
        with pytest.raises(ResponseError):
            await reader.read(100, None)
        (group,) = await client.xinfo_groups(STREAM)
        assert group["last-delivered-id"] == b"0-0" and group["pending"] == 0
    finally:
        await client.aclose()
