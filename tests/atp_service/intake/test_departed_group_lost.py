"""A consumer that owes a count of entries trimmed unread (its read crossed a gap, the read's answer lost: kept owed in
its hash, ``unread.trimmed_unread_key``) whose process then leaves for good, and the group deleted meanwhile (an
operator's XGROUP DESTROY, a Redis restored without it) and made again: the consumer is in no group any more, so the
sweep of departed consumers (``intake/departed.py``), which took its candidates from the groups' consumers alone,
never found it — its count never told (E6: facts lost, nothing said), its hash kept for good. Real redis-server.
Found by the simulator: ``--input-streams --processes 3 --partition --suspends --new-addresses --seed 238``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.exceptions import TimeoutError as RedisTimeoutError

from atp_service.intake import unread
from atp_service.intake.departed import DepartedConsumers
from atp_service.intake.unread import GroupReader, trimmed_unread_key
from tests.atp_service.intake.departed_helpers import Counter

STREAMS = ["atp:in:pos", "atp:in:wms"]
GROUP = "atp"
GONE = "atp-1@10.0.0.3:1"  # its process gone for good
TELLER = "atp-1@10.0.1.1:1"


class _ReadAnswerLost:
    """The client of a reader whose read script ran in Redis and whose answer was lost (a timeout)."""

    def __init__(self, client: Any) -> None:
        self._client = client

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def register_script(self, source: str) -> Callable[..., Any]:
        script = self._client.register_script(source)

        async def run(keys: list[str], args: list[Any]) -> Any:
            got = await script(keys=keys, args=args)
            if source == unread._READ:
                raise RedisTimeoutError("Timeout reading from socket")
            return got

        return run


async def told_once_after_the_group_made_again(r: Any, owing: str, owed: str) -> None:
    """The group of every stream deleted (an operator's XGROUP DESTROY, a Redis restored without it) and made again by
    a live reader; then ``TELLER``'s sweep must find ``owing``, a consumer gone for good whose hash ``owed`` holds 2
    entries of the first stream trimmed unread, and ``TELLER``'s reads tell the 2 once and forget the hash."""
    pos = STREAMS[0]
    for stream in STREAMS:
        await r.xgroup_destroy(stream, GROUP)
        await r.xgroup_create(stream, GROUP, id="$", mkstream=True)
    sweep = DepartedConsumers(r, STREAMS, GROUP, TELLER, lambda: {"10.0.1.1:1"}, 0, quarantine="atp:quarantine")
    assert await sweep.sweep() == [owing]
    told = Counter()
    await GroupReader(r, STREAMS, GROUP, TELLER, told).read(10, None)
    assert told.counts == {pos: 2}
    assert not await r.exists(owed), "its hash forgotten"
    assert await sweep.sweep() == [], "swept once"
    await GroupReader(r, STREAMS, GROUP, TELLER, told).read(10, None)
    assert told.counts == {pos: 2}, "told once"


async def test_a_departed_consumer_lost_with_its_group_is_swept_and_its_count_told_once(redis_url: str) -> None:
    """Defect: after the group was deleted and made again, the sweep found no candidate (``[]``): the 2 entries the
    gone consumer owed were never told, its hash kept for good."""
    r = aioredis.Redis.from_url(redis_url)
    pos = STREAMS[0]
    try:
        for stream in STREAMS:
            await r.xgroup_create(stream, GROUP, id="0", mkstream=True)
        for n in range(3):
            await r.xadd(pos, {"n": n})
        await r.xtrim(pos, maxlen=1, approximate=False)  # two trimmed before the group read them
        with pytest.raises(RedisTimeoutError):
            await GroupReader(_ReadAnswerLost(r), STREAMS, GROUP, GONE, Counter()).read(10, None)
        owed = trimmed_unread_key(pos, GROUP, GONE)
        assert await r.hget(owed, pos) == b"2", "owed: the read's answer lost"
        await told_once_after_the_group_made_again(r, GONE, owed)  # the group deleted, and made again by a live reader
    finally:
        await r.aclose()
