"""A reload that turns a per-location channel into a network one (``per_location = false``): its
per-location numbers are curated by nothing any more, so they are shown 0 at once (C1)."""

from __future__ import annotations

from pathlib import Path

from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_service import ManualClock
from tests.atp_service.channel_helpers import fact, latest, stream_updates, write_estate
from tests.conftest import ServiceFactory
from tests.waiting import until

T = 1_700_000_000_000


async def test_a_channel_no_longer_per_location_shows_its_old_per_location_numbers_0(
        start_service: ServiceFactory, tmp_path: Path, clock: ManualClock, redis_url: str) -> None:
    """Defect: the reload withdrew dropped locations of per-location channels only. Pickup turned
    network kept showing 4 at store-3 in its snapshot and state hash for good, whatever store-3 then
    sold: a storefront reading the per-location number offered stock that was gone."""
    path = write_estate(tmp_path)
    service, client = await start_service(clock=clock, estate=path)
    desk = service.channels
    assert desk is not None
    await client.record_events([fact("c1", "COUNT", "sku-p", "store-3", 5, T)])
    pickup = desk.feeds["pickup"]
    await until(lambda: ("sku-p", "store-3") in pickup.published and not desk._dirty and pickup.in_flight == 0,
                "pickup's baseline at store-3 published")
    path.write_text(path.read_text().replace("per_location = true\n", ""))
    await client.stub.ReloadEstate(pb.ReloadEstateRequest())
    await until(lambda: ("sku-p", "") in pickup.published and not desk._dirty and pickup.pending == 0
                and pickup.in_flight == 0, "pickup's network baseline published")
    assert pickup.published[("sku-p", "")].quantity == 4  # 5 over the stores, less its buffer of 1
    assert pickup.published[("sku-p", "store-3")].quantity == 0
    assert latest(await stream_updates(redis_url, "pickup"))[("sku-p", "store-3")][0] == 0
