"""A channel write that did not land is given back to its feed (C4); a value offered while it was on its
way was judged against the value being written, and is judged again against what is shown (E11, C2)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from atp_service import ManualClock
from atp_service.channels.desk import ChannelDesk
from atp_service.storage.channel_script import WRITE
from tests.atp_service.channel_helpers import desk_served, fact, stream_updates, write_estate
from tests.atp_service.redis_proxy import HoldingProxy, proxy
from tests.conftest import test_config as make_config
from tests.waiting import until

T = 1_700_000_000_000
KEY = ("sku-a", "store-1")
WRITE_SHA = hashlib.sha1(WRITE.encode()).hexdigest().encode()  # the desk's write on the wire (EVALSHA)
__all__ = ["proxy"]  # the fixture, used by name


def _idle(desk: ChannelDesk) -> bool:
    return not desk._dirty and all(feed.pending == 0 and feed.in_flight == 0 for feed in desk.feeds.values())


def _settles(desk: ChannelDesk, outcome: str) -> float:
    (family,) = desk.metrics.settles.collect()
    return sum(s.value for s in family.samples if s.name.endswith("_total") and s.labels["outcome"] == outcome)


async def test_a_stock_out_offered_while_the_restock_was_written_publishes_nothing_when_that_write_is_lost_E11(
        proxy: HoldingProxy, redis_url: str, tmp_path: Path) -> None:
    """Pickup shows 0; a RECEIPT's 4 is being written when a SALE takes it back to 0 (a stock-out against
    the 4). The write is lost: the feed still shows 0, and the pending 0 is no change. It was taken as a
    stock-out still, and 0 was published over 0 (a fact that changes nothing publishes nothing, E11)."""
    clock = ManualClock(T)
    # A Redis timeout far above what the steps take: the write's failure comes when the test cuts it.
    config = make_config(estate=write_estate(tmp_path), redis_timeout_s=10.0)
    async with desk_served(config, proxy.url, clock) as (_, desk, client):
        pickup = desk.feeds["pickup"]
        await client.record_events([fact("c1", "COUNT", *KEY, 0, T)])
        await until(lambda: _idle(desk) and KEY in pickup.published, "the baseline 0 published")
        before = [u for u in await stream_updates(redis_url, "pickup") if u.key == KEY]

        clock.advance(1000)  # pickup's throttle interval since the baseline: the restock goes out at once
        proxy.hold(WRITE_SHA)
        await client.record_events([fact("r1", "RECEIPT", *KEY, 5, T + 1)])  # pickup store-1 -> 4
        await until(lambda: len(proxy.held) == 1 and pickup.in_flight == 1, "the 4 on its way to Redis")
        await client.record_events([fact("s1", "SALE", *KEY, 5, T + 2)])  # back to 0: offered at once (C2)
        await until(lambda: pickup.stockouts_pending == 1, "the 0 offered while the 4 is written")
        assert pickup.in_flight == 1, "the write of the 4 ended before the test cut it"

        not_landed = _settles(desk, "not_landed")
        proxy.cut(proxy.held[0])  # its answer lost: in doubt, settled by a fence and a read
        proxy.hold()
        proxy.drop()  # it never lands
        await until(lambda: _settles(desk, "not_landed") > not_landed and _idle(desk), "settled, the desk idle")

        assert pickup.published[KEY].quantity == 0
        after = [u for u in await stream_updates(redis_url, "pickup") if u.key == KEY]
        assert [(u.quantity, u.previous) for u in after] == [(u.quantity, u.previous) for u in before] == [(0, None)]
