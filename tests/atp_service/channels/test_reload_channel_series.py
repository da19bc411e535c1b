"""What the metrics say of channels a reload (ReloadEstate, SIGHUP) takes out or adds: a channel taken out
exports no gauge of its feed any more (``atp_channel_pending``, ``atp_channel_oldest_wait_seconds``: kept at
their last value, an alert on them — ``ATPChannelChangesOverdue`` — fired for a channel that no longer is, for
as long as the process ran), and a channel added has its update counts exported at 0 from the reload, as a
channel of the start's estate has (an ``increase()`` — ``ATPChannelWithoutPublisher`` — misses a series' first
value)."""

from __future__ import annotations

from pathlib import Path

from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_service import AtpService, ManualClock
from tests.atp_service.channel_helpers import (
    ESTATE,
    raised_while_pickup_throttles,
    write_estate,
)
from tests.conftest import ServiceFactory
from tests.waiting import until

T = 1_700_000_000_000
PICKUP = ESTATE[ESTATE.index('[[channels]]\nname = "pickup"'):ESTATE.index('[[channels]]\nname = "web"')]
OUTLET = '\n[[channels]]\nname = "outlet"\nsells_from = ["dc-1"]\nthrottle_ms = 0\n'


def _value(service: AtpService, name: str, **labels: str) -> float | None:
    return service.metrics.registry.get_sample_value(name, labels)


async def test_a_channel_a_reload_takes_out_exports_no_gauge_of_its_feed(
        start_service: ServiceFactory, tmp_path: Path, clock: ManualClock, redis_url: str) -> None:
    key = ("sku-r", "store-3")
    path = write_estate(tmp_path)
    service, client = await start_service(clock=clock, estate=path)
    desk = service.channels
    assert desk is not None
    await raised_while_pickup_throttles(client, redis_url, key, T)
    await until(lambda: _value(service, "atp_channel_pending", channel="pickup") == 1, "pickup's change waiting")
    # Set as the desk's publishing ends, once the baseline's write was answered: curation counts the change
    # waiting while that write may still be on its way.
    await until(lambda: _value(service, "atp_channel_oldest_wait_seconds", channel="pickup") is not None,
                "pickup's oldest wait exported")
    path.write_text(ESTATE.replace(PICKUP, ""))
    await client.stub.ReloadEstate(pb.ReloadEstateRequest())
    assert "pickup" not in desk.feeds
    assert _value(service, "atp_channel_pending", channel="pickup") is None
    assert _value(service, "atp_channel_oldest_wait_seconds", channel="pickup") is None
    assert _value(service, "atp_channel_pending", channel="market") is not None  # the others' stay


async def test_a_channel_a_reload_adds_has_its_update_counts_exported_at_zero(
        start_service: ServiceFactory, tmp_path: Path, clock: ManualClock) -> None:
    path = write_estate(tmp_path)
    service, client = await start_service(clock=clock, estate=path)
    assert _value(service, "atp_channel_updates_published_total", channel="market", kind="change") == 0
    path.write_text(ESTATE + OUTLET)
    await client.stub.ReloadEstate(pb.ReloadEstateRequest())
    for kind in ("stockout", "baseline", "change"):
        assert _value(service, "atp_channel_updates_published_total", channel="outlet", kind=kind) == 0
