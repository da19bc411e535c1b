"""A reload that moves a network channel off every location a SKU is held at: C1's sum over no location is 0,
and nothing curates that SKU for the channel again (curation looks at positions), so it is shown 0 at once."""

from __future__ import annotations

from pathlib import Path

from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_service import ManualClock
from atp_service.channels.curator import unheld
from atp_service.channels.desk import ChannelDesk
from atp_service.channels.estate import Channel
from reservation import ChannelRules, FeedPolicy, PositionStore
from reservation._store import ON_HAND
from tests.atp_service.channel_helpers import ESTATE, fact, latest, stream_updates, write_estate
from tests.conftest import ServiceFactory
from tests.waiting import until

T = 1_700_000_000_000
MARKET = ESTATE[ESTATE.index('[[channels]]\nname = "market"'):ESTATE.index('[[channels]]\nname = "pickup"')]


def _all_idle(desk: ChannelDesk) -> bool:
    return not desk._dirty and all(f.pending == 0 and f.in_flight == 0 for f in desk.feeds.values())


async def test_a_network_channel_no_longer_selling_from_any_location_of_a_sku_shows_it_0(
        start_service: ServiceFactory, tmp_path: Path, clock: ManualClock, redis_url: str) -> None:
    """Defect: a reload moving market from dc-1 to the stores left sku-x (held at dc-1 only) at 8 for
    good: no position of it at a store, so curation never offered its network number again. A
    restart with the same file showed it 0; the reload did not. sku-y, held at a store too, is
    curated anew."""
    path = write_estate(tmp_path)
    service, client = await start_service(clock=clock, estate=path)
    desk = service.channels
    assert desk is not None
    await client.record_events([fact("c1", "COUNT", "sku-x", "dc-1", 10, T),
                                fact("c2", "COUNT", "sku-y", "dc-1", 10, T),
                                fact("c3", "COUNT", "sku-y", "store-2", 6, T)])
    market = desk.feeds["market"]
    await until(lambda: _all_idle(desk) and ("sku-y", "") in market.published, "market's baselines")
    assert market.published[("sku-x", "")].quantity == market.published[("sku-y", "")].quantity == 8
    assert 'sells_from = ["dc-1"]' in MARKET
    path.write_text(ESTATE.replace(MARKET, MARKET.replace('sells_from = ["dc-1"]', 'sells_from = ["stores"]')))
    await client.stub.ReloadEstate(pb.ReloadEstateRequest())
    clock.advance(1000)  # past market's throttle interval: sku-y's 4 may go
    desk.poke()
    await until(lambda: _all_idle(desk), "the desk idle")
    shown = latest(await stream_updates(redis_url, "market"))
    assert shown[("sku-x", "")][0] == 0, "market shows sku-x, which it sells from no location of"
    assert shown[("sku-y", "")][0] == 4  # 6 at store-2, less the buffer of 2


def test_unheld_network_keys_are_those_of_skus_at_none_of_the_channels_locations() -> None:
    """Across stores (shards), with a SKU never seen and a location never seen; keys in any order."""
    first, second = PositionStore(), PositionStore()
    first.add("a", "dc-1", ON_HAND, 3)
    first.add("b", "store-1", ON_HAND, 0)  # a position, whatever it holds
    second.add("c", "store-9", ON_HAND, 2)  # a location the channel does not sell from
    second.add("d", "store-2", ON_HAND, -1)
    store_of = {"a": first, "b": first, "c": second, "d": second, "e": second}.__getitem__
    channel = Channel("market", ("store-1", "store-2", "store-7"), False, ChannelRules(), FeedPolicy())
    shown = [("d", ""), ("a", ""), ("e", ""), ("b", ""), ("c", "")]
    assert sorted(unheld(shown, channel, store_of)) == [("a", ""), ("c", ""), ("e", "")]
    pickup = Channel("pickup", ("store-1",), True, ChannelRules(), FeedPolicy())
    assert unheld([("b", "store-1"), ("a", "store-1")], pickup, store_of) == [("a", "store-1")]
