"""A reader remembers the entries of its dead-letter writes in doubt up to ``fence.DOUBTFUL_KEPT``, to set its fence
anew before any of them is judged again (``Fence.landed``). Past it, an entry forgotten is one of a write in doubt all
the same: read again, it is fenced first. Real redis-server; the fence and the dead letters' script called directly."""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis

from atp_service.intake.dead_letters import Why, write
from atp_service.intake.fence import DOUBTFUL_KEPT, Fence

STREAM, GROUP, DLQ, KEY = "t:in:pos", "g", "t:dead", "t:in:pos:refused:g:fence:c1"
WHY = Why("event_time_ms: in the future", "event_time_ms", "INVALID_FIELD")


async def test_an_entry_of_a_write_in_doubt_forgotten_past_the_bound_is_fenced_before_it_is_judged_again(
        redis_url: str) -> None:
    """Defect: the entries of writes in doubt past ``DOUBTFUL_KEPT`` (writes of many refused entries, a POS clock ahead,
    while Redis was slow) forgot the oldest, and one of those read again was judged with the fence where it was: the
    write in doubt, landing after that read, wrote its letter and acknowledged the entry the reader went on to apply
    (applied and dead-lettered)."""
    client: Any = aioredis.Redis.from_url(redis_url)
    try:
        await client.xgroup_create(STREAM, GROUP, "0", mkstream=True)
        entry = await client.xadd(STREAM, {"n": "0"})
        await client.xreadgroup(GROUP, "c1", {STREAM: ">"})
        fence = Fence(client, KEY, GROUP, "c1")
        token = await fence.raised()  # the token the write in doubt carries
        fence.doubt([(STREAM, entry)])
        fence.doubt((STREAM, f"{entry.decode().split('-')[0]}-{n + 1}".encode()) for n in range(DOUBTFUL_KEPT))
        read = await client.xreadgroup(GROUP, "c1", {STREAM: "0"})  # the reader's pass reads it again
        flat = [one for pair in read[0][1][0][1].items() for one in pair]
        assert await fence.landed([(STREAM, entry, flat)]) == [(STREAM, entry, flat)]  # still pending: judged again
        written = await write(client, [(STREAM, entry, flat, WHY)], DLQ, 1000, GROUP, 1 << 20, consumer="c1",
                              fence=(KEY, token))  # the write in doubt lands now
        assert written.fenced, "the write in doubt landed past the fence: its entry judged again, yet dead-lettered"
        assert not await client.exists(DLQ)
    finally:
        await client.aclose()
