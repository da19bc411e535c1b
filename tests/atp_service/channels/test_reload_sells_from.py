"""A reload that moves a network channel off every location a SKU is held at: C1's sum over no location is 0,
and nothing curates that SKU for the channel again (curation looks at positions), so it is shown 0 at once."""

from __future__ import annotations

import asyncio
from pathlib import Path

from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_service import EmbeddedRedis, ManualClock
from atp_service.channels.curator import unheld
from atp_service.channels.desk import ChannelDesk
from atp_service.channels.estate import Channel
from reservation import ChannelRules, FeedPolicy, PositionStore
from reservation._store import ON_HAND
from tests.atp_service.channel_helpers import ESTATE, fact, latest, stream_updates, write_estate
from tests.atp_service.channels.test_position_made_in_flight import _running, _undone
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
    second.add("c", "store-1", ON_HAND, 4)  # made by a batch in flight: no durable position (C4)
    made = {id(first): set(), id(second): {("c", "store-1"), ("d", "store-9")}}
    assert sorted(unheld(shown, channel, store_of, lambda store: made[id(store)])) == [("a", ""), ("c", ""), ("e", "")]
    assert unheld([("c", "store-1"), ("b", "store-1")], pickup, store_of, lambda store: made[id(store)]) == [
        ("c", "store-1")]


async def test_a_position_made_in_flight_at_a_newly_sold_location_does_not_keep_the_old_number_C4(
        redis_server: EmbeddedRedis, redis_url: str, tmp_path: Path) -> None:
    """Defect: a reload moved market from dc-1 to the stores while a RECEIPT making sku-x's first store
    position was on its way. The reload's pass took that position, in memory only, for one standing
    behind sku-x and kept its 8; curation took it as absent (C4) and offered nothing. The RECEIPT was
    then undone: market showed 8 for good, of a SKU it sells from no location of. Durable state has
    sku-x at none of the stores: shown 0, and once a RECEIPT there is durable, what it holds."""
    async with _running(redis_server, tmp_path) as (proxy, service, desk, client):
        market = desk.feeds["market"]
        await client.record_events([fact("c1", "COUNT", "sku-x", "dc-1", 10, T)])
        await until(lambda: _all_idle(desk) and ("sku-x", "") in market.published, "market's baseline")
        assert market.published[("sku-x", "")].quantity == 8
        proxy.hold(b"new-receipt")
        receipt = asyncio.ensure_future(client.record_events([fact("new-receipt", "RECEIPT", "sku-x", "store-2",
                                                                    100, T + 1)]))
        await until(lambda: len(proxy.held) == 1, "the receipt's append on its way")
        path = tmp_path / "estate.toml"
        path.write_text(ESTATE.replace(MARKET, MARKET.replace('sells_from = ["dc-1"]', 'sells_from = ["stores"]')))
        await client.stub.ReloadEstate(pb.ReloadEstateRequest())
        await until(lambda: _all_idle(desk), "the reload's passes and round done")
        assert latest(await stream_updates(redis_url, "market"))[("sku-x", "")][0] == 0, "C4: no store holds sku-x"

        await _undone(proxy, receipt, service, "sku-x")
        await until(lambda: _all_idle(desk), "re-curated after the undo")
        assert latest(await stream_updates(redis_url, "market"))[("sku-x", "")][0] == 0

        await client.record_events([fact("receipt-2", "RECEIPT", "sku-x", "store-2", 7, T + 2)])  # durable: shown
        await until(lambda: not desk._dirty and market.pending == 1, "the 5 curated")
        assert isinstance(desk.clock, ManualClock)
        desk.clock.advance(1000)  # past the 0's throttle interval
        desk.poke()
        await until(lambda: _all_idle(desk) and market.published[("sku-x", "")].quantity == 5, "7 less the buffer")
