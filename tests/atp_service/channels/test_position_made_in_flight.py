"""C4: a position that only a batch in flight made is in no durable state, not even as 0. A round
that curates its SKU meanwhile offers nothing for it; if the batch is then undone, no channel has
anything of it, and once a batch making it is durable the position is curated as any other."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from atp_client import AtpClient
from atp_service import AtpService, EmbeddedRedis, ManualClock
from atp_service.channels.desk import ChannelDesk
from tests.atp_service.channel_helpers import fact, latest, stream_updates, write_estate
from tests.atp_service.redis_proxy import HoldingProxy
from tests.conftest import test_config as make_config
from tests.waiting import until

T = 1_700_000_000_000
Running = tuple[HoldingProxy, AtpService, ChannelDesk, AtpClient]


def _idle(desk: ChannelDesk) -> bool:
    return not desk._dirty and all(feed.pending == 0 and feed.in_flight == 0 for feed in desk.feeds.values())


@contextlib.asynccontextmanager
async def _running(redis_server: EmbeddedRedis, tmp_path: Path) -> AsyncIterator[Running]:
    """A service writing through a ``HoldingProxy``: a reply may take 20 s (the bound of ``until``), so a
    write held lands on the test's cue; a dropped one fails at once (the proxy closes its connection)."""
    proxy = HoldingProxy("127.0.0.1", redis_server.port)
    service = AtpService(make_config(estate=write_estate(tmp_path), redis_timeout_s=20.0), await proxy.start(),
                         clock=ManualClock(T))
    client: AtpClient | None = None
    try:
        await service.start()
        assert service.channels is not None
        client = AtpClient(f"127.0.0.1:{service.port}")
        yield proxy, service, service.channels, client
    finally:
        if client is not None:
            await client.close()
        await service.stop(grace_s=0.1)
        await proxy.close()


async def _undone(proxy: HoldingProxy, call: asyncio.Future[object], service: AtpService, sku: str) -> None:
    """Let the held append never arrive: the call fails, its shard takes the batch back and settles."""
    await until(lambda: len(proxy.held) == 1, "the append held")
    proxy.hold()
    proxy.drop()
    with pytest.raises(grpc.aio.AioRpcError):
        await call
    engine = service.engine
    assert engine is not None
    await until(lambda: not engine.actors[engine.place(sku)].in_doubt, "the shard settled")


async def test_a_sku_made_by_an_append_in_flight_and_then_undone_is_never_published_C4(
        redis_server: EmbeddedRedis, redis_url: str, tmp_path: Path) -> None:
    """Defect: the first RECEIPT of a new SKU, its append on its way, made the SKU's position in memory;
    a reload's round curated it as present, and every network channel selling from there published the
    SKU at 0 (event time 0) — a key that no durable state stood behind, left in the streams for good
    when the append was then dropped and the RECEIPT undone."""
    async with _running(redis_server, tmp_path) as (proxy, service, desk, client):
        proxy.hold(b"new-receipt")
        receipt = asyncio.ensure_future(client.record_events([fact("new-receipt", "RECEIPT", "sku-new", "dc-1",
                                                                    100, T)]))
        await until(lambda: len(proxy.held) == 1, "the receipt's append on its way")
        await desk.reload(desk.estate)  # every SKU curated now, sku-new's position in memory only
        await until(lambda: _idle(desk), "the reload's round done and published")

        await _undone(proxy, receipt, service, "sku-new")
        await until(lambda: _idle(desk), "re-curated after the undo")
        for channel in ("market", "web"):
            assert [u for u in await stream_updates(redis_url, channel) if u.sku == "sku-new"] == [], channel


async def test_a_store_position_made_in_flight_is_not_offered_when_its_sku_changes_elsewhere_C4(
        redis_server: EmbeddedRedis, redis_url: str, tmp_path: Path) -> None:
    """Defect: a SALE of sku-a at store-1 was durable while a RECEIPT making sku-a's first position at
    store-2 was on its way; the round curating sku-a for the SALE took store-2 as present, and store
    pickup published (sku-a, store-2) = 0, which stayed after the RECEIPT was undone. Once a RECEIPT
    there is durable, store-2 is offered what it holds."""
    made = ("sku-a", "store-2")
    async with _running(redis_server, tmp_path) as (proxy, service, desk, client):
        pickup, market = desk.feeds["pickup"], desk.feeds["market"]
        await client.record_events([fact("c1", "COUNT", "sku-a", "store-1", 5, T)])
        await until(lambda: _idle(desk) and ("sku-a", "store-1") in pickup.published, "store-1 shown")

        proxy.hold(b"{avail}:market")  # the desk's next write waits: no round until the test lets it go on
        await client.record_events([fact("c2", "COUNT", "sku-b", "dc-1", 9, T)])
        await until(lambda: len(proxy.held) == 1, "the desk writing sku-b's number")
        # Both durable, both curated in the desk's next round: sku-c's number says when its offers are made.
        await client.record_events([fact("c3", "COUNT", "sku-c", "dc-1", 9, T),
                                    fact("s1", "SALE", "sku-a", "store-1", 5, T + 1)])
        proxy.hold(b"new-receipt")
        receipt = asyncio.ensure_future(client.record_events([fact("new-receipt", "RECEIPT", *made, 100, T + 2)]))
        await until(lambda: len(proxy.held) == 2, "the receipt's append on its way")
        await proxy.land(proxy.held[0])  # the desk goes on: its round curates sku-a, the receipt in flight
        await until(lambda: _idle(desk) and ("sku-c", "") in market.published, "the round's offers published")
        assert pickup.published[("sku-a", "store-1")].quantity == 0
        assert made not in pickup.published

        await _undone(proxy, receipt, service, "sku-a")
        await until(lambda: _idle(desk), "re-curated after the undo")
        assert [u for u in await stream_updates(redis_url, "pickup") if u.key == made] == []

        await client.record_events([fact("receipt-2", "RECEIPT", *made, 7, T + 3)])  # durable: shown (C1)
        await until(lambda: _idle(desk) and made in pickup.published, "store-2 published")
        assert latest(await stream_updates(redis_url, "pickup"))[made][0] == 6  # 7 less the buffer of 1
