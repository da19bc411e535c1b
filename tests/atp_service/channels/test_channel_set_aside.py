"""A channel whose key in Redis holds another type (set by something other than the service) is set
aside: the other channels go on publishing — its own updates wait, and go out once the key is removed."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from atp_service import ManualClock
from atp_service.channels.aside import RECHECK_MS
from tests.atp_service.channel_helpers import fact, stream_updates, wait_for_updates, write_estate
from tests.conftest import ServiceFactory
from tests.waiting import until

T = 1_700_000_000_000


async def test_a_channel_whose_stream_key_holds_a_string_is_set_aside_and_the_others_publish(
        start_service: ServiceFactory, tmp_path: Path, clock: ManualClock, redis_url: str, caplog: Any) -> None:
    raw = aioredis.Redis.from_url(redis_url)
    service, client = await start_service(clock=clock, estate=write_estate(tmp_path), input_streams=())
    await raw.set("atp:{avail}:market", "not the service's")  # market's stream key (at start: refused, named)
    desk = service.channels
    assert desk is not None
    try:
        with caplog.at_level(logging.INFO):
            await client.record_events([fact("c1", "COUNT", "sku-a", "dc-1", 40, T)])
            web = await wait_for_updates(redis_url, "web", 1)  # published, though market's write is refused
            await until(lambda: any(getattr(r, "event", "") == "channel_set_aside" for r in caplog.records),
                        "market set aside")
        assert [(u.sku, u.location, u.quantity) for u in web] == [("sku-a", "", 36)]
        await client.record_events([fact("s1", "SALE", "sku-a", "dc-1", 10, T + 1)])
        await wait_for_updates(redis_url, "web", 2)  # still: market kept aside, not refusing every write
        assert await raw.get("atp:{avail}:market") == b"not the service's"
        await raw.delete("atp:{avail}:market")
        clock.advance(RECHECK_MS)
        desk.poke()
        market = await wait_for_updates(redis_url, "market", 1)
        assert [(u.sku, u.quantity) for u in market][-1] == ("sku-a", 28)  # 30 on hand less its 2 buffer units
        await asyncio.sleep(0)
        assert len(await stream_updates(redis_url, "web")) == 2
    finally:
        await raw.aclose()
