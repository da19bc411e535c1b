"""A reload that changes a channel's ``low_stock_level`` while a key's number stays as it is: the key's status
was published with its number, at its version (C3). A watch's snapshot shows that status at that version, as the
stream's entry holds it, and the status the new level gives reaches the stream (and so the channel's publishers)
as a change at a new version. Real service, real redis-server."""

from __future__ import annotations

from pathlib import Path

from atp_client import AtpClient
from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_service import ManualClock
from tests.atp_service.channel_helpers import fact, one_dc_market, stream_updates, write_estate
from tests.conftest import ServiceFactory
from tests.waiting import until

T = 1_700_000_000_000
KEY = ("sku-a", "")
Kind = pb.WatchAvailabilityResponse
Shown = dict[tuple[str, str], tuple[str, int]]
"""key -> (status name, version)."""


async def _snapshot(client: AtpClient) -> Shown:
    """A watch's snapshot of ``market``: each key's status and version."""
    call = client.stub.WatchAvailability(pb.WatchAvailabilityRequest(channel="market", snapshot=True))
    shown: Shown = {}
    try:
        while (message := await call.read()).kind != Kind.KIND_SNAPSHOT_END:
            assert message.kind == Kind.KIND_SNAPSHOT, message
            shown.update(((u.sku, u.location), (pb.StockStatus.Name(u.status), u.version)) for u in message.updates)
        return shown
    finally:
        call.cancel()


async def _in_stream(redis_url: str, shown: Shown) -> Shown:
    """What the channel's stream holds at the versions ``shown`` names: each key's status at that version."""
    at = {(u.sku, u.location, u.version): u.status.value for u in await stream_updates(redis_url, "market")}
    return {key: (f"STOCK_STATUS_{at.get((*key, version), 'none')}", version) for key, (_, version) in shown.items()}


async def _newest_status(redis_url: str) -> str:
    return [u.status.value for u in await stream_updates(redis_url, "market") if u.key == KEY][-1]


async def _newest_in_stock(redis_url: str) -> bool:
    return await _newest_status(redis_url) == "IN_STOCK"


async def test_a_reloaded_low_stock_level_leaves_the_snapshot_as_the_stream_and_publishes_the_new_status_C3(
        start_service: ServiceFactory, tmp_path: Path, redis_url: str) -> None:
    """Defect: the snapshot classed each key's number by the reloaded policy while the stream's entry at the same
    version held the status published (E11 compares numbers only, so nothing was published again): a subscriber
    that re-snapshotted saw 8 IN_STOCK at version V, one following the stream (and every publisher's destination)
    8 LOW_STOCK at V, for good."""
    path = write_estate(tmp_path, one_dc_market(1000, 1000.0) + "low_stock_level = 10\n")
    clock = ManualClock(T)
    service, client = await start_service(clock=clock, estate=path)
    desk = service.channels
    assert desk is not None
    feed = desk.feeds["market"]
    await client.record_events([fact("c1", "COUNT", "sku-a", "dc-1", 8, T)])
    await until(lambda: KEY in feed.published and not feed.in_flight, "market's baseline")
    assert await _newest_status(redis_url) == "LOW_STOCK"  # 8: at or below 10

    path.write_text(path.read_text().replace("low_stock_level = 10\n", "low_stock_level = 5\n"))
    await client.stub.ReloadEstate(pb.ReloadEstateRequest())
    shown = await _snapshot(client)
    assert shown == await _in_stream(redis_url, shown), "the snapshot shows at a version what the stream holds there"

    clock.advance(1000)  # past the key's throttle interval (C2): its new status is a change like any
    desk.poke()
    await until(lambda: _newest_in_stock(redis_url), "the new level's status published")
    await until(lambda: not feed.in_flight and not feed.pending, "the desk idle")
    shown = await _snapshot(client)
    assert shown[KEY][0] == "STOCK_STATUS_IN_STOCK" and shown == await _in_stream(redis_url, shown)
