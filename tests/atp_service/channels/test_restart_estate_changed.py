"""An estate changed while the service was down (a ConfigMap edited, then a rolling restart — the
common way to change it, not ReloadEstate): a key a channel curated before and no longer curates is
shown 0 at the start, as a reload shows it (C1). The channel keys keep what the old estate published,
and curation never looks at such a key again, so nothing else would correct its number."""

from __future__ import annotations

from pathlib import Path

from tests.atp_service.channel_helpers import fact, latest, stream_updates, write_estate
from tests.atp_service.channels.test_channels_durable import until_shown
from tests.conftest import ServiceFactory

T = 1_700_000_000_000


async def _published_then_stopped(start_service: ServiceFactory, path: Path, redis_url: str) -> None:
    """The old estate's pickup number 4 at store-3 (5 less its buffer of 1) published, the service stopped."""
    service, client = await start_service(estate=path)
    await client.record_events([fact("c1", "COUNT", "sku-p", "store-3", 5, T)])
    await until_shown(redis_url, "pickup", ("sku-p", "store-3"), 4)
    await client.close()
    await service.stop(grace_s=0.1)


async def test_a_location_dropped_while_the_service_was_down_is_shown_0_at_the_start(
        start_service: ServiceFactory, tmp_path: Path, redis_url: str) -> None:
    """Defect: only a reload withdrew a dropped location; the start withdrew keys no position stands
    behind, and store-3's position stands: pickup kept showing 4 at store-3 for good, whatever
    store-3 then sold - a customer sent to pick up stock that was gone."""
    path = write_estate(tmp_path)
    await _published_then_stopped(start_service, path, redis_url)
    path.write_text(path.read_text().replace('sells_from = ["stores"]', 'sells_from = ["store-1", "store-2"]'))
    await start_service(estate=path)
    await until_shown(redis_url, "pickup", ("sku-p", "store-3"), 0)


async def test_a_channel_turned_network_while_the_service_was_down_shows_its_old_per_location_numbers_0(
        start_service: ServiceFactory, tmp_path: Path, redis_url: str) -> None:
    """Defect: pickup turned network by a restart kept showing 4 at store-3 (its feed, state hash and
    snapshots) for good, while its network number (sku-p, "") moved with the stores' stock."""
    path = write_estate(tmp_path)
    await _published_then_stopped(start_service, path, redis_url)
    path.write_text(path.read_text().replace("per_location = true\n", ""))
    await start_service(estate=path)
    await until_shown(redis_url, "pickup", ("sku-p", ""), 4)
    await until_shown(redis_url, "pickup", ("sku-p", "store-3"), 0)
    assert latest(await stream_updates(redis_url, "pickup"))[("sku-p", "store-3")][0] == 0
