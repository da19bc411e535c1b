"""C4: channels follow durable state only. A change applied in memory whose append is still on its
way — and may yet be undone — is never curated, let alone published."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest
import redis.asyncio as aioredis

from atp_client import AtpClient
from atp_service import AtpService, ManualClock
from atp_service.channels.desk import ChannelDesk
from tests.atp_service.app.test_redis_lost_tail import saved
from tests.atp_service.channel_helpers import desk_served, fact, latest, stream_updates, write_estate
from tests.atp_service.redis_proxy import HoldingProxy, proxy
from tests.atp_service.refusals import said
from tests.conftest import ServiceFactory
from tests.conftest import test_config as make_config
from tests.waiting import answered, until

T = 1_700_000_000_000
KEY = ("sku-a", "store-1")
__all__ = ["proxy"]  # the fixture, used by name


def _idle(desk: ChannelDesk) -> bool:
    return not desk._dirty and all(feed.pending == 0 and feed.in_flight == 0 for feed in desk.feeds.values())


async def test_a_receipt_whose_append_is_in_flight_and_then_undone_is_never_published(
        proxy: HoldingProxy, redis_url: str, tmp_path: Path) -> None:
    """Defect: the desk curated memory, which holds batches in flight; a RECEIPT of +100 whose append
    then failed showed 99 on the channel while the ledger said 0, until the SKU changed again."""
    config = make_config(estate=write_estate(tmp_path), redis_timeout_s=0.5)
    async with desk_served(config, proxy.url, ManualClock(T)) as (service, desk, client):
        stock_out = [fact("c1", "COUNT", *KEY, 5, T), fact("s1", "SALE", *KEY, 5, T + 1)]
        await answered(lambda: client.record_events(stock_out))
        await until(lambda: _idle(desk) and desk.feeds["pickup"].published[KEY].quantity == 0, "a stock-out shown")

        proxy.hold(b"big-receipt")  # this append reaches Redis only if the test lets it
        receipt = asyncio.ensure_future(client.record_events([fact("big-receipt", "RECEIPT", *KEY, 100, T + 2)]))
        await until(lambda: len(proxy.held) == 1, "the receipt's append on its way")
        assert service.engine is not None and service.engine.availability([KEY])[0].on_hand == 100  # in memory
        await desk.reload(desk.estate)  # re-curates every SKU now, while the receipt is in flight
        await until(lambda: not desk._dirty, "the desk's round done")
        pickup = desk.feeds["pickup"]
        assert (pickup.published[KEY].quantity, pickup.pending) == (0, 0)  # nothing to publish, now or later

        proxy.hold()
        proxy.drop()  # never lands: the append times out, the shard takes the receipt back and settles
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await receipt
        assert said(failed.value) == (grpc.StatusCode.UNAVAILABLE, "OUTCOME_UNKNOWN")
        await until(lambda: not service.engine.actors[service.engine.place("sku-a")].in_doubt, "settled")  # type: ignore[union-attr]
        await until(lambda: _idle(desk), "re-curated after the undo")
        assert service.engine.availability([KEY])[0].on_hand == 0
        shown = [u.quantity for u in await stream_updates(redis_url, "pickup") if (u.sku, u.location) == KEY]
        assert shown[-1] == 0 and max(shown[shown.index(0):]) == 0  # from the stock-out on, never more


async def test_a_settle_that_cannot_fence_keeps_counting_write_failures(redis_url: str, tmp_path: Path) -> None:
    """After a failed publish the desk fences and reads before anything else, for as long as it
    takes. Each failed try was silent: ``atp_channel_write_failures_total`` rose once, so
    ``ATPChannelWriteFailures`` (a rate above 0 for 2 minutes) never fired while no channel
    published anything. Each failed try of the settle now counts."""
    import redis.asyncio as aredis

    service = AtpService(make_config(estate=write_estate(tmp_path), redis_timeout_s=0.5), redis_url,
                         clock=ManualClock(T))
    r = aredis.Redis.from_url(redis_url)
    fence = "atp:{avail}:fence"
    try:
        await service.start()
        assert service.channels is not None
        kept = await r.get(fence)
        await r.delete(fence)
        await r.hset(fence, "not", "a counter")  # every fence and publish refused WRONGTYPE
        async with AtpClient(f"127.0.0.1:{service.port}") as client:
            await answered(lambda: client.record_events([fact("c1", "COUNT", *KEY, 5, T)]))

            def failures() -> float:
                # WRONGTYPE: refused by Redis, as its reason says
                sample = service.metrics.registry.get_sample_value("atp_channel_write_failures_total",
                                                                   {"reason": "refused"})
                return sample or 0.0

            await until(lambda: failures() >= 3, "every failed try of the settle counted")
        await r.delete(fence)
        if kept is not None:
            await r.set(fence, kept)
    finally:
        await service.stop(grace_s=0.1)
        await r.aclose()


async def test_a_key_whose_position_redis_lost_is_shown_0_after_the_restart(
        start_service: ServiceFactory, redis_url: str, tmp_path: Path) -> None:
    """Defect: Redis came back from older data that lacked the facts making a position, while the
    channel keys kept what the instance had published from them before it noticed (as the simulation's
    ``--lose-tail`` seed 19 found). The restart curated only the positions it recovered, so the channel
    went on offering the lost position's units — units that do not exist — until that SKU changed."""
    estate = write_estate(tmp_path)
    service, client = await start_service(estate=estate)
    direct = aioredis.Redis.from_url(redis_url)
    try:
        image = await saved(direct)  # before the facts: the older data Redis comes back with
        await client.record_events([fact("c1", "COUNT", "sku-lost", "dc-1", 10, T),
                                    fact("c2", "COUNT", "sku-lost", "store-1", 5, T)])
        await until_shown(redis_url, "market", ("sku-lost", ""), 8)
        await until_shown(redis_url, "pickup", ("sku-lost", "store-1"), 4)
        await client.close()
        await service.stop(grace_s=0.1)
        for key in await direct.keys("*"):  # all but the channel keys goes back to the older data
            if b"{avail}" not in key:
                await direct.delete(key)
        for key, (dump, ttl) in image.items():
            if b"{avail}" not in key:
                await direct.restore(key, ttl, dump, replace=True)
    finally:
        await direct.aclose()
    _, again = await start_service(estate=estate)
    (position,) = await again.availability([("sku-lost", "dc-1")])
    assert position.on_hand == 0  # what Redis holds
    await until_shown(redis_url, "market", ("sku-lost", ""), 0)
    await until_shown(redis_url, "pickup", ("sku-lost", "store-1"), 0)


async def until_shown(redis_url: str, channel: str, key: tuple[str, str], quantity: int) -> None:
    """Wait until the newest value ``channel`` published for ``key`` is ``quantity`` (a bound of 20 s)."""
    deadline = asyncio.get_running_loop().time() + 20
    while (shown := latest(await stream_updates(redis_url, channel)).get(key, (None, 0))[0]) != quantity:
        assert asyncio.get_running_loop().time() < deadline, f"{channel} shows {shown} for {key}, not {quantity}"
        await asyncio.sleep(0.02)
