"""A real atp-publisher across a desk write in doubt that landed, was delivered, and that Redis then lost (restored
from data saved before it) while the desk settled it: its value undone by a later fact before the settle ended, so
nothing is due again (E11) and only the marker the settle leaves (``RunFeed.lost_past``) links the stream past the
lost version. The publisher, told there of the loss, names the key it delivered there and the desk publishes its
durable value again: the destination converges (C4), not left showing the lost restock for good."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from atp_client import AtpClient
from atp_service import AtpService, ManualClock
from atp_service.channels.feeds import Feed
from publishers import JsonlAdapter, Publisher, PublisherMetrics
from tests.atp_service.app.test_redis_lost_tail import restored, saved
from tests.atp_service.channel_helpers import desk_served, fact, write_estate
from tests.atp_service.channels.test_version_lost_in_doubt import FENCE_SHA, PICKUP, V0, WRITE_SHA, T
from tests.atp_service.redis_proxy import HoldingProxy, proxy
from tests.conftest import test_config as make_config
from tests.publishers.test_publisher import config
from tests.waiting import until

__all__ = ["proxy"]  # the fixture, used by name


def shown(out: Path) -> tuple[int, int] | None:
    """(quantity, version) of sku-a@dc-1 in the last whole line the destination received."""
    last = None
    if out.exists():
        for line in out.read_text().splitlines(keepends=True):
            if not line.endswith("\n"):
                break
            u = json.loads(line)
            if u["sku"] == "sku-a":
                last = (u["quantity"], u["version"])
    return last


async def test_a_publisher_that_delivered_a_write_lost_in_doubt_is_told_and_its_key_published_again_C4(
        proxy: HoldingProxy, redis_url: str, tmp_path: Path) -> None:
    service_config = make_config(estate=write_estate(tmp_path, PICKUP), redis_timeout_s=10.0, input_streams=())
    async with (desk_served(service_config, proxy.url, ManualClock(T)) as (service, desk, client),
                aioredis.Redis.from_url(redis_url) as direct):  # Redis itself, not through the proxy
        feed = desk.feeds["pickup"]
        out = tmp_path / "feed.jsonl"
        publisher = Publisher(config(channel="pickup", group="jsonl"), direct, JsonlAdapter(out), PublisherMetrics())
        task = asyncio.create_task(publisher.run())
        try:
            await _delivered_lost_and_published_again(proxy, service, client, direct, feed, out)
        finally:
            publisher.stop()
            await asyncio.wait_for(task, 5)


async def _delivered_lost_and_published_again(proxy: HoldingProxy, service: AtpService, client: AtpClient,
                                              direct: Any, feed: Feed, out: Path) -> None:
    """The restock 15 delivered, lost by Redis while its write is settled, undone: the destination back at 10."""
    await client.record_events([fact("c1", "COUNT", "sku-a", "dc-1", 10, T)])
    await until(lambda: shown(out) == (10, V0 + 1), "the baseline 10 delivered")
    proxy.hold(WRITE_SHA, FENCE_SHA)
    await client.record_events([fact("r1", "RECEIPT", "sku-a", "dc-1", 5, T + 1)])
    await until(lambda: any(h.marker == WRITE_SHA for h in proxy.held), "the desk's write of 15 held")
    image = await saved(direct)  # the receipt durable, the channel write not landed
    write = next(h for h in proxy.held if h.marker == WRITE_SHA)
    proxy.cut(write)  # its answer lost: in doubt, the desk settles it
    await until(lambda: any(h.marker == FENCE_SHA for h in proxy.held), "the settle's fence held")
    await proxy.land(write)
    await until(lambda: shown(out) == (15, V0 + 2), "the publisher delivered the restock 15")
    await restored(direct, image, at_once=True)  # ... and Redis loses it
    # The restock undone before the settle ends: 10 is what the channel shows, nothing due again (E11)
    await client.record_events([fact("s1", "SALE", "sku-a", "dc-1", 5, T + 2)])
    proxy.hold()
    await proxy.land(next(h for h in proxy.held if h.marker == FENCE_SHA))
    registry = service.metrics.registry
    await until(lambda: registry.get_sample_value("atp_channel_settles_total", {"outcome": "not_landed"}) == 1
                and not feed.in_flight, "the write settled as not landed")
    # The destination converges to the durable 10 at a version above the lost one (C3, C4)
    await until(lambda: (s := shown(out)) is not None and s[0] == 10 and s[1] > V0 + 2,
                "the destination back at the durable 10, not the lost 15", 30)
    assert feed.published[("sku-a", "dc-1")].quantity == 10
