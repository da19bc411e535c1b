"""A sweeper's own hash holding counts it moved from a departed consumer (``intake/departed.py``), its process then
gone before a read of its told them, and the group deleted meanwhile (an operator's XGROUP DESTROY, a Redis restored
without it) and made again: the sweeper is in no group any more, and only a read that counts a gap named its consumer
in the set the sweep lists too (``unread.owing_key``) — the sweep that moved counts into its hash did not, so no sweep
found it: the counts never told (E6: facts lost, nothing said), its hash kept for good. Real redis-server."""

from __future__ import annotations

import redis.asyncio as aioredis

from atp_service.intake.departed import DepartedConsumers
from atp_service.intake.unread import trimmed_unread_key
from tests.atp_service.intake.test_departed_group_lost import GROUP, STREAMS, told_once_after_the_group_made_again

GONE = "atp-1@10.0.0.3:1"  # its process gone for good, owing
SWEEPER = "atp-1@10.0.0.4:1"  # moved GONE's count, then gone for good too before its next read


async def test_counts_a_departed_sweeper_moved_into_its_hash_are_told_once_its_group_is_lost(redis_url: str) -> None:
    """Defect: after the group was deleted and made again, no sweep found the sweeper (``[]``): the 2 entries it owed
    as moved were never told, its hash kept for good."""
    r = aioredis.Redis.from_url(redis_url)
    pos = STREAMS[0]
    try:
        for stream in STREAMS:
            await r.xgroup_create(stream, GROUP, id="0", mkstream=True)
        await r.xgroup_createconsumer(pos, GROUP, GONE)  # nothing pending
        await r.hset(trimmed_unread_key(pos, GROUP, GONE), mapping={pos: 2, pos + "\n": "0-0"})  # two trimmed unread
        assert await DepartedConsumers(r, STREAMS, GROUP, SWEEPER, lambda: {"10.0.0.4:1"}, 0,
                                       quarantine="atp:quarantine").sweep() == [GONE]
        owed = trimmed_unread_key(pos, GROUP, SWEEPER)
        assert await r.hget(owed, pos) == b"2", "moved into the sweeper's hash"
        # the sweeper gone before its next read; the group deleted, made again by a live reader
        await told_once_after_the_group_made_again(r, SWEEPER, owed)
    finally:
        await r.aclose()
