"""A reload that drops a location from a per-location channel: the channel shows 0 there at once
(C1), whatever that location's number was doing at the time — published, waiting for its throttle
interval, or being written. Nothing curates that location again, so nothing would correct it later."""

from __future__ import annotations

from pathlib import Path

from atp_client import AtpClient
from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_service import AtpService, EmbeddedRedis, ManualClock
from atp_service.channels.desk import ChannelDesk
from tests.atp_service.channel_helpers import fact, latest, stream_updates, wait_for_updates, write_estate
from tests.atp_service.redis_proxy import HoldingProxy, until
from tests.conftest import ServiceFactory
from tests.conftest import test_config as make_config

T = 1_700_000_000_000


def _drop_store_3(path: Path) -> None:
    path.write_text(path.read_text().replace('sells_from = ["stores"]', 'sells_from = ["store-1", "store-2"]'))


def _idle(desk: ChannelDesk) -> bool:
    pickup = desk.feeds["pickup"]
    return not desk._dirty and pickup.pending == 0 and pickup.in_flight == 0


async def test_a_change_waiting_for_its_throttle_interval_at_a_dropped_location_is_never_published(
        start_service: ServiceFactory, tmp_path: Path, clock: ManualClock, redis_url: str) -> None:
    key = ("sku-r", "store-3")
    path = write_estate(tmp_path)
    service, client = await start_service(clock=clock, estate=path)
    desk = service.channels
    assert desk is not None
    await client.record_events([fact("c1", "COUNT", *key, 1, T)])  # 1 - buffer 1: shown 0 (baseline)
    await wait_for_updates(redis_url, "pickup", 1)
    await client.record_events([fact("r1", "RECEIPT", *key, 4, T + 1)])  # 5 - 1 = 4: waits for its interval
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
    proxy = HoldingProxy("127.0.0.1", redis_server.port)
    url = await proxy.start()
    path = write_estate(tmp_path)
    service = AtpService(make_config(estate=path, redis_timeout_s=30), url, clock=ManualClock(T))
    client = None
    try:
        await service.start()
        desk = service.channels
        assert desk is not None
        client = AtpClient(f"127.0.0.1:{service.port}")
        proxy.hold(desk.store._write_script.sha.encode())  # the desk's next write waits at the proxy
        await client.record_events([fact("c1", "COUNT", *key, 5, T)])  # baseline 4 at store-3
        await until(lambda: len(proxy.held) == 1 and desk.feeds["pickup"].in_flight == 1, "the baseline on its way")
        proxy.hold()
        _drop_store_3(path)
        await client.stub.ReloadEstate(pb.ReloadEstateRequest())
        await proxy.land(proxy.held[0])  # the write lands in time: its reply reaches the desk
        await until(lambda: _idle(desk), "the desk idle")
        assert latest(await stream_updates(redis_url, "pickup"))[key][0] == 0
    finally:
        if client is not None:
            await client.close()
        await service.stop(grace_s=0.1)
        await proxy.close()
