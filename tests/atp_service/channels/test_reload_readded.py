"""A channel a reload removes and a later reload adds back (same name) while a write of its numbers
is still on its way: the channel that comes back knows what that write published, so it converges
to the curated value under its new rules (C1, C4) and never shows a number of the old ones for good."""

from __future__ import annotations

import gc
import weakref
from pathlib import Path

from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_service import EmbeddedRedis, ManualClock
from atp_service.channels.desk import ChannelDesk
from atp_service.storage.channel_script import WRITE_SCRIPT
from tests.atp_service.channel_helpers import ESTATE, fact, latest, stream_updates, write_estate
from tests.atp_service.channels.test_reload_dropped import behind_a_proxy
from tests.waiting import until

T = 1_700_000_000_000
KEY = ("sku-x", "")
MARKET = ESTATE[ESTATE.index('[[channels]]\nname = "market"'):ESTATE.index('[[channels]]\nname = "pickup"')]


def _all_idle(desk: ChannelDesk) -> bool:
    return not desk._dirty and all(f.pending == 0 and f.in_flight == 0 for f in desk.feeds.values())


async def test_a_channel_added_back_while_its_write_was_on_its_way_shows_the_new_rules_number(
        redis_server: EmbeddedRedis, redis_url: str, tmp_path: Path) -> None:
    """Defect: the channel added back read its published numbers from Redis while the write of the
    removed one was still on its way; the write then landed (13, curated under the old buffer of 2),
    and the feed, believing 8 shown, took the new rules' 8 for no change (E11): 13 shown for good."""
    assert "buffer_units = 2\n" in MARKET
    path = write_estate(tmp_path)
    clock = ManualClock(T)
    async with behind_a_proxy(redis_server, path, clock) as (_, desk, client, proxy):
        await client.record_events([fact("c1", "COUNT", *KEY[:1], "dc-1", 10, T)])
        await until(lambda: _all_idle(desk) and KEY in desk.feeds["market"].published, "market's baseline")
        assert desk.feeds["market"].published[KEY].quantity == 8  # 10 less its buffer of 2
        clock.advance(1000)  # past market's throttle interval
        proxy.hold(WRITE_SCRIPT.sha.encode())
        await client.record_events([fact("r1", "RECEIPT", *KEY[:1], "dc-1", 5, T + 1000)])  # 15 - 2 = 13
        await until(lambda: len(proxy.held) == 1 and desk.feeds["market"].in_flight == 1, "the 13 on its way")
        proxy.hold()
        path.write_text(ESTATE.replace(MARKET, ""))  # market removed...
        await client.stub.ReloadEstate(pb.ReloadEstateRequest())
        back = MARKET.replace("buffer_units = 2\n", "buffer_units = 7\n")  # ...and back: 15 - 7 = 8
        path.write_text(ESTATE.replace(MARKET, back))
        await client.stub.ReloadEstate(pb.ReloadEstateRequest())
        await proxy.land(proxy.held[0])  # the 13 lands, and its reply reaches the desk
        await until(lambda: not desk._dirty and desk.feeds["market"].in_flight == 0, "the 13 confirmed, all curated")
        clock.advance(1000)  # past the 13's throttle interval
        desk.poke()
        await until(lambda: _all_idle(desk), "the desk idle")
        shown = latest(await stream_updates(redis_url, "market"))[KEY]
        assert shown[0] == 8, f"market shows {shown[0]}, curated under the buffer it no longer has"
        assert desk.feeds["market"].published[KEY].quantity == 8


async def test_a_removed_channels_feed_is_let_go_once_its_write_is_settled(
        redis_server: EmbeddedRedis, redis_url: str, tmp_path: Path) -> None:
    """Defect: a reload removed market while a write of its numbers was on its way; the write landed, and
    the feed set aside for it - every key the channel ever published, millions for a per-location one -
    stayed in memory until some later reload, which may never come."""
    path = write_estate(tmp_path)
    clock = ManualClock(T)
    async with behind_a_proxy(redis_server, path, clock) as (_, desk, client, proxy):
        await client.record_events([fact("c1", "COUNT", *KEY[:1], "dc-1", 10, T)])
        await until(lambda: _all_idle(desk) and KEY in desk.feeds["market"].published, "market's baseline")
        clock.advance(1000)
        proxy.hold(WRITE_SCRIPT.sha.encode())
        await client.record_events([fact("r1", "RECEIPT", *KEY[:1], "dc-1", 5, T + 1000)])
        await until(lambda: len(proxy.held) == 1 and desk.feeds["market"].in_flight == 1, "the 13 on its way")
        proxy.hold()
        feed = weakref.ref(desk.feeds["market"])
        path.write_text(ESTATE.replace(MARKET, ""))  # market removed
        await client.stub.ReloadEstate(pb.ReloadEstateRequest())
        await proxy.land(proxy.held[0])
        await until(lambda: (f := feed()) is None or f.in_flight == 0, "the 13 confirmed")
        await until(lambda: _all_idle(desk), "the desk idle")
        gc.collect()
        assert feed() is None, "the removed channel's feed is still held"
        assert latest(await stream_updates(redis_url, "market"))[KEY][0] == 13  # the write did land
