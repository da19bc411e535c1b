"""A pass's read of the reader's own pending entries (``again.read_pending``): the entries and each stream's
made-again mark answered by one script, against a real redis-server; and how the reader keeps or lets go the mark it
holds from what that read answers (``Unacked.marked``, pure logic)."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from atp_service.intake.again import read_pending
from atp_service.intake.unacked import Unacked
from atp_service.intake.unread import made_again_key
from atp_service.storage.resp import group_lost

POS, WMS, GROUP, ME = "atp:in:pos", "atp:in:wms", "atp", "atp@10.0.0.1"


async def test_the_pending_read_answers_this_consumer_s_entries_with_each_stream_s_mark(redis_url: str) -> None:
    """Only this consumer's pending entries after the ids told, at most ``count`` per stream, in id order, one
    trimmed away answered with no fields; each stream's mark as Redis holds it (None where it holds none)."""
    client = aioredis.Redis.from_url(redis_url)
    try:
        for stream in (POS, WMS):
            await client.xgroup_create(stream, GROUP, id="0", mkstream=True)
        ids = [await client.xadd(POS, {"n": n}) for n in range(4)]
        await client.xreadgroup(GROUP, ME, {POS: ">"}, count=3)
        await client.xreadgroup(GROUP, "atp@10.0.0.2", {POS: ">"}, count=1)  # another consumer's: not answered
        await client.xtrim(POS, minid=ids[1], approximate=False)  # the first trimmed away, still pending
        await client.set(made_again_key(POS, GROUP), ids[3])
        reply, marks = await read_pending(client, [POS, WMS], GROUP, ME, 2, ["0", "0"])
        assert marks == {POS: ids[3], WMS: None}
        assert [(stream, [(row[0], row[1]) for row in rows]) for stream, rows in reply] == [
            (POS.encode(), [(ids[0], None), (ids[1], [b"n", b"1"])]), (WMS.encode(), [])]
        reply, _ = await read_pending(client, [POS, WMS], GROUP, ME, 2, [ids[1].decode(), "0"])
        assert [row[0] for row in reply[0][1]] == [ids[2]]
    finally:
        await client.aclose()


@pytest.mark.parametrize("protocol", [2, 3])
async def test_a_stream_without_a_mark_between_two_with_one_is_answered_none_in_its_place(
        redis_url: str, protocol: int) -> None:
    """The marks come back one per stream in the streams' order, None for one Redis holds none of, wherever it falls
    (Lua's false, not nil: a nil would end the table there), and an entry trimmed away while pending comes back with
    no fields — as a RESP2 client reads them and as a RESP3 one (``?protocol=3`` in ``redis_url``) does."""
    streams = [POS, WMS, "atp:in:ecom"]
    client = aioredis.Redis.from_url(f"{redis_url}{'&' if '?' in redis_url else '?'}protocol={protocol}")
    try:
        ids = {}
        for stream in streams:
            await client.xgroup_create(stream, GROUP, id="0", mkstream=True)
            ids[stream] = [await client.xadd(stream, {"n": n}) for n in range(2)]
        await client.xreadgroup(GROUP, ME, {stream: ">" for stream in streams})
        await client.xdel(WMS, ids[WMS][0])
        for stream in (POS, streams[2]):
            await client.set(made_again_key(stream, GROUP), ids[stream][1])
        reply, marks = await read_pending(client, streams, GROUP, ME, 10, ["0"] * 3)
        assert marks == {POS: ids[POS][1], WMS: None, streams[2]: ids[streams[2]][1]}
        assert [(stream, [row[0] for row in rows]) for stream, rows in reply] == [
            (stream.encode(), ids[stream]) for stream in streams]
        assert reply[1][1][0][1] is None and reply[1][1][1][1] == [b"n", b"1"]
    finally:
        await client.aclose()


async def test_a_mark_of_another_type_refuses_the_read_naming_it_and_delivers_nothing(redis_url: str) -> None:
    """A key of another type where a mark belongs (an operator's, a restore of other data): refused naming it, before
    the read delivered anything again (its entries' delivery counts as they were)."""
    client = aioredis.Redis.from_url(redis_url)
    try:
        await client.xgroup_create(POS, GROUP, id="0", mkstream=True)
        await client.xadd(POS, {"n": 0})
        await client.xreadgroup(GROUP, ME, {POS: ">"})
        for stray in ({"not": "an id"}, "not an id"):
            await client.delete(made_again_key(POS, GROUP))
            if isinstance(stray, dict):
                await client.hset(made_again_key(POS, GROUP), mapping=stray)
            else:
                await client.set(made_again_key(POS, GROUP), stray)
            with pytest.raises(ResponseError, match=f"WRONGTYPE {made_again_key(POS, GROUP)} holds no entry id"):
                await read_pending(client, [POS], GROUP, ME, 10, ["0"])
        assert [one["times_delivered"] for one in await client.xpending_range(POS, GROUP, "-", "+", 10)] == [1]
    finally:
        await client.aclose()


@pytest.mark.parametrize("denied", ["-type", "-get"])
async def test_a_mark_the_acl_denies_refuses_the_read_before_it_delivers_anything(redis_url: str, denied: str) -> None:
    """The Redis user may not ``TYPE`` or ``GET`` the marks (an ACL narrowed while serving): refused before the
    XREADGROUP ran, the entries' delivery counts as they were (a refusal for good must not raise them to
    ``ingest_max_deliveries`` pass after pass)."""
    admin = aioredis.Redis.from_url(redis_url)
    user = "atp-pending-read"
    try:
        await admin.xgroup_create(POS, GROUP, id="0", mkstream=True)
        await admin.set(made_again_key(POS, GROUP), await admin.xadd(POS, {"n": 0}))
        await admin.xreadgroup(GROUP, ME, {POS: ">"})
        await admin.execute_command("ACL", "SETUSER", user, "reset", "on", "nopass", "~*", "+@all", denied)
        client = aioredis.Redis.from_url(redis_url.replace("redis://", f"redis://{user}@", 1))
        try:
            with pytest.raises(ResponseError):
                await read_pending(client, [POS], GROUP, ME, 10, ["0"])
        finally:
            await client.aclose()
        assert [one["times_delivered"] for one in await admin.xpending_range(POS, GROUP, "-", "+", 10)] == [1]
    finally:
        await admin.execute_command("ACL", "DELUSER", user)
        await admin.aclose()


async def test_a_pending_read_of_a_group_gone_is_refused_as_the_group_lost(redis_url: str) -> None:
    """The group deleted (or Redis back from before it was made): refused as a plain XREADGROUP is, so that the
    reader makes it again (``resp.group_lost``)."""
    client = aioredis.Redis.from_url(redis_url)
    try:
        await client.xadd(POS, {"n": 0})
        with pytest.raises(ResponseError) as refused:
            await read_pending(client, [POS], GROUP, ME, 10, ["0"])
        assert group_lost(refused.value)
    finally:
        await client.aclose()


def test_a_mark_answered_with_the_pending_entries_is_taken_and_one_gone_kept_while_the_reply_holds_one_under_it(
        ) -> None:
    """The mark Redis answers is the reader's (a reader that never held it: the read that delivered its entries had
    its answer lost); none answered, the one held is kept while the reply's lowest entry is at or before it (Redis
    back from older data may hold the entries without it: E8), and let go where the reply holds none up to it."""
    unacked = Unacked()
    unacked.marked({POS: b"5-0"}, {})
    assert unacked.again == {POS: b"5-0"}
    unacked.marked({POS: None}, {POS: b"5-0"})
    assert unacked.again == {POS: b"5-0"}, "let go with an entry at the mark in the reply"
    unacked.marked({POS: None}, {POS: b"6-0"})
    assert unacked.again == {}, "kept with nothing up to it pending or in hand"
