"""A channel write in doubt that landed and that Redis then lost (a crash under ``appendfsync everysec``, a restore
of data saved before it) while the desk settled it: the settle reads the stream without it and takes the write for
one that never landed. A reader (an ``atp-publisher`` of the channel) may have read it in between, and delivered its
value at its version. Written again at the same versions, a version names another value: a publisher skips a version
it delivered (``duplicate``), so a stock-out written again at the version of the value lost is never delivered and
the destination keeps selling what is gone (C3: a version names one value for good; C4)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import redis.asyncio as aioredis

from atp_service import ManualClock
from atp_service.channels.feeds import VERSIONS_PER_MS
from atp_service.storage.channel_script import WRITE
from atp_service.storage.channel_store import _FENCE
from tests.atp_service.app.test_redis_lost_tail import restored, saved
from tests.atp_service.channel_helpers import desk_served, fact, stream_entries, stream_updates, write_estate
from tests.atp_service.redis_proxy import HoldingProxy, proxy
from tests.conftest import test_config as make_config
from tests.waiting import until

T = 1_700_000_000_000
V0 = T * VERSIONS_PER_MS  # the start marker's version: the run's updates follow on from it
WRITE_SHA = hashlib.sha1(WRITE.encode()).hexdigest().encode()
FENCE_SHA = hashlib.sha1(_FENCE.encode()).hexdigest().encode()
PICKUP = ('[[locations]]\nid = "dc-1"\ntype = "dc"\n\n[[channels]]\nname = "pickup"\nsells_from = ["dc-1"]\n'
          "per_location = true\nthrottle_ms = 0\nrate_limit_per_s = 1000.0\n")
__all__ = ["proxy"]  # the fixture, used by name


async def test_a_version_a_lost_write_landed_at_is_never_written_again_with_another_value_C3(
        proxy: HoldingProxy, redis_url: str, tmp_path: Path) -> None:
    config = make_config(estate=write_estate(tmp_path, PICKUP), redis_timeout_s=10.0, input_streams=())
    async with (desk_served(config, proxy.url, ManualClock(T)) as (_, desk, client),
                aioredis.Redis.from_url(redis_url) as direct):  # Redis itself, not through the proxy
        feed = desk.feeds["pickup"]
        await client.record_events([fact("c1", "COUNT", "sku-a", "dc-1", 10, T)])
        await until(lambda: feed.published_version == V0 + 1 and not feed.in_flight, "the baseline published")
        proxy.hold(WRITE_SHA, FENCE_SHA)
        await client.record_events([fact("s1", "SALE", "sku-a", "dc-1", 1, T + 1)])
        await until(lambda: any(h.marker == WRITE_SHA for h in proxy.held), "the desk's write of 9 held")
        image = await saved(direct)  # Redis's state with the sale durable, before the channel write lands
        write = next(h for h in proxy.held if h.marker == WRITE_SHA)
        proxy.cut(write)  # its answer lost: in doubt, the desk settles it
        await until(lambda: any(h.marker == FENCE_SHA for h in proxy.held), "the settle's fence held")
        await proxy.land(write)  # it lands: a publisher reading the stream now delivers 9 at V0 + 2
        first = {(u.version, u.sku, u.location): u.quantity for u in await stream_updates(redis_url, "pickup")}
        assert first[(V0 + 2, "sku-a", "dc-1")] == 9
        await restored(direct, image, at_once=True)  # ... and Redis loses it (restarted from data saved before it)
        await client.record_events([fact("s2", "SALE", "sku-a", "dc-1", 9, T + 2)])  # sold out: 0, at once (C2)
        await until(lambda: feed.stockouts_pending == 1, "the stock-out offered while the write is settled")
        proxy.hold()
        await proxy.land(next(h for h in proxy.held if h.marker == FENCE_SHA))
        await until(lambda: feed.published[("sku-a", "dc-1")].quantity == 0 and not feed.in_flight, "0 published")
        for u in await stream_updates(redis_url, "pickup"):
            was = first.get((u.version, u.sku, u.location))
            assert was is None or was == u.quantity, (
                f"version {u.version} of {u.sku}@{u.location} read as {was}, written again as {u.quantity}: a "
                "publisher that delivered the first skips it as a duplicate (C3, C4)")
        links = [(e.version, e.follows) for e in await stream_entries(redis_url, "pickup") if e.follows is not None]
        # The versions handed out to the write are passed over, and the stream says where its versions go on from:
        # a reader that read the lost entry (at V0 + 2) is past the link, told it read versions Redis lost, and a
        # publisher names what it delivered there for the service to publish again (C4).
        assert links == [(V0, 0), (V0 + 3, V0 + 1)]
