"""A reload that drops a location from a per-location channel: the channel shows 0 there at once
(C1), whatever that location's number was doing at the time — published, waiting for its throttle
interval, or being written. Nothing curates that location again, so nothing would correct it later."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from atp_client import AtpClient
from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_service import AtpService, EmbeddedRedis, ManualClock
from atp_service.channels.desk import ChannelDesk
from atp_service.storage.channel_script import WRITE_SCRIPT
from tests.atp_service.channel_helpers import (
    fact,
    latest,
    raised_while_pickup_throttles,
    stream_updates,
    write_estate,
)
from tests.atp_service.redis_proxy import HoldingProxy
from tests.conftest import ServiceFactory
from tests.conftest import test_config as make_config
from tests.waiting import until

T = 1_700_000_000_000


@asynccontextmanager
async def behind_a_proxy(redis_server: EmbeddedRedis, path: Path, clock: ManualClock
                         ) -> AsyncIterator[tuple[AtpService, ChannelDesk, AtpClient, HoldingProxy]]:
    """A service with channels (``path``'s estate) whose Redis is reached through a ``HoldingProxy``,
    with a Redis timeout long enough for a held write to land in time, its start markers written."""
    proxy = HoldingProxy("127.0.0.1", redis_server.port)
    service = AtpService(make_config(estate=path, redis_timeout_s=30), await proxy.start(), clock=clock)
    try:
        await service.start()
        desk = service.channels
        assert desk is not None
        # The start's markers written first: a test holding "the desk's next write" means a write of its own.
        await until(lambda: not any(f.marking for f in desk.feeds.values()) and _all_idle(desk),
                    "the start markers written")
        async with AtpClient(f"127.0.0.1:{service.port}") as client:
            yield service, desk, client, proxy
    finally:
        await service.stop(grace_s=0.1)
        await proxy.close()


def _drop_store_3(path: Path) -> None:
    path.write_text(path.read_text().replace('sells_from = ["stores"]', 'sells_from = ["store-1", "store-2"]'))


def _idle(desk: ChannelDesk) -> bool:
    pickup = desk.feeds["pickup"]
    return not desk._dirty and pickup.pending == 0 and pickup.in_flight == 0


def _all_idle(desk: ChannelDesk) -> bool:
    return not desk._dirty and all(f.pending == 0 and f.in_flight == 0 for f in desk.feeds.values())


async def test_a_change_waiting_for_its_throttle_interval_at_a_dropped_location_is_never_published(
        start_service: ServiceFactory, tmp_path: Path, clock: ManualClock, redis_url: str) -> None:
    key = ("sku-r", "store-3")
    path = write_estate(tmp_path)
    service, client = await start_service(clock=clock, estate=path)
    desk = service.channels
    assert desk is not None
    await raised_while_pickup_throttles(client, redis_url, key, T)
    pickup = desk.feeds["pickup"]
    await until(lambda: key in pickup._pending and not desk._dirty, "the 4 waiting for its throttle interval")
    _drop_store_3(path)
    await client.stub.ReloadEstate(pb.ReloadEstateRequest())
    clock.advance(1000)  # past the throttle interval
    desk.poke()
    await until(lambda: _idle(desk), "the desk idle")
    assert latest(await stream_updates(redis_url, "pickup"))[key][0] == 0


async def test_a_first_number_being_written_at_a_dropped_location_is_withdrawn(
        redis_server: EmbeddedRedis, redis_url: str, tmp_path: Path) -> None:
    key = ("sku-b", "store-3")
    path = write_estate(tmp_path)
    async with behind_a_proxy(redis_server, path, ManualClock(T)) as (_, desk, client, proxy):
        proxy.hold(WRITE_SCRIPT.sha.encode())  # the desk's next write waits at the proxy
        await client.record_events([fact("c1", "COUNT", *key, 5, T)])  # baseline 4 at store-3
        await until(lambda: len(proxy.held) == 1 and desk.feeds["pickup"].in_flight == 1, "the baseline on its way")
        proxy.hold()
        _drop_store_3(path)
        await client.stub.ReloadEstate(pb.ReloadEstateRequest())
        await proxy.land(proxy.held[0])  # the write lands in time: its reply reaches the desk
        await until(lambda: _idle(desk), "the desk idle")
        assert latest(await stream_updates(redis_url, "pickup"))[key][0] == 0


async def test_offers_curated_before_a_reload_do_not_republish_a_dropped_location(
        redis_server: EmbeddedRedis, redis_url: str, tmp_path: Path) -> None:
    """A round keeps its curated offers aside while its stock-outs are written; a reload landing in
    that write dropped store-3, then the round offered the 6 it had curated there under the old estate."""
    key = ("sku-r", "store-3")
    path = write_estate(tmp_path)
    clock = ManualClock(T)
    async with behind_a_proxy(redis_server, path, clock) as (service, desk, client, proxy):
        await client.record_events([fact("c1", "COUNT", *key, 5, T)])
        await until(lambda: _all_idle(desk) and key in desk.feeds["pickup"].published, "the baselines published")
        assert desk.feeds["pickup"].published[key].quantity == 4
        clock.advance(1000)  # past pickup's throttle interval

        assert service.engine is not None
        place = service.engine.place
        other = next(f"sku-m{n}" for n in range(2, 500) if place(f"sku-m{n}") == place("sku-r"))
        await client.record_events([fact("c3", "COUNT", other, "dc-1", 10, T)])
        await until(lambda: _all_idle(desk) and (other, "") in desk.feeds["market"].published, "its baseline published")
        proxy.hold(WRITE_SCRIPT.sha.encode())
        # One call, one shard: a change at store-3 (pickup 6, not urgent) and a market stock-out (urgent).
        await client.record_events([fact("r1", "RECEIPT", *key, 2, T + 1000),
                                    fact("s2", "SALE", other, "dc-1", 10, T + 1000)])
        # Next round: curated (store-3's 6 kept aside in ``rest``), its stock-outs being written first.
        await until(lambda: len(proxy.held) == 1, "the next round's urgent write held")
        assert key not in desk.feeds["pickup"]._pending  # curated, not offered yet
        _drop_store_3(path)
        await client.stub.ReloadEstate(pb.ReloadEstateRequest())
        proxy.hold()
        await proxy.land(proxy.held[0])
        await until(lambda: _all_idle(desk), "the desk idle")
        clock.advance(2000)
        desk.poke()
        await until(lambda: _all_idle(desk), "the desk idle again")
        shown = latest(await stream_updates(redis_url, "pickup"))[key]
        assert shown[0] == 0, f"pickup shows {shown[0]} at store-3, a location it no longer sells from"
