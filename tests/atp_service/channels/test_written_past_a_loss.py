"""Redis back from older data while the service still runs: until its owner check finds the loss (every
``owner_check_s``), the desk may write what falls due — a change that waited for its throttle interval — above
the versions Redis lost. Written on as if nothing were missing, the next start's marker followed that write: a
subscriber that had read the lost versions crossed the restart without a word, and kept their values (C3, C4). The
desk now writes nothing above the loss: it reads every channel again from what Redis holds (``ChannelDesk._relink``)
and its marker follows that, the service serving on."""

from __future__ import annotations

import asyncio
from pathlib import Path

import redis.asyncio as aioredis

from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_service import ManualClock
from atp_service.storage.channel_wire import StartMarker
from tests.atp_service.app.test_redis_lost_tail import restored, saved
from tests.atp_service.channel_helpers import (
    desk_served,
    fact,
    one_dc_market,
    stream_entries,
    wait_for_updates,
    write_estate,
)
from tests.atp_service.channels.test_version_lost_in_doubt import PICKUP, V0, WRITE_SHA
from tests.atp_service.redis_proxy import HoldingProxy, proxy
from tests.conftest import ServiceFactory
from tests.conftest import test_config as make_config
from tests.waiting import until

T = 1_700_000_000_000
Kind = pb.WatchAvailabilityResponse
__all__ = ["proxy"]  # the fixture, used by name


async def _newest_marker(redis_url: str, above: int, channel: str = "market") -> StartMarker:
    """The first start marker of ``channel`` above version ``above``, once written."""
    found: list[StartMarker] = []

    async def written() -> bool:
        found[:] = [e for e in await stream_entries(redis_url, channel)
                    if isinstance(e, StartMarker) and e.version > above]
        return bool(found)
    await until(written, "the marker written")
    return found[0]


async def test_a_subscriber_that_read_versions_redis_lost_is_told_to_resnapshot_though_the_desk_wrote_after_C4(
        start_service: ServiceFactory, tmp_path: Path, clock: ManualClock, redis_url: str) -> None:
    """Defect: sku-0 went 0 -> 5 (a receipt) and a subscriber read it; Redis then came back from before the receipt,
    and before the owner check saw it the desk wrote sku-1's throttled change on top of the restored stream, with no
    link. The service restarted (R7) on the restored data — sku-0 durable at 0, its state hash at 0 too, so nothing
    to publish (E11) — and its start's marker followed the desk's last write: the subscriber went on from there, sku-0
    shown at 5 for good, units that are not there. Now the desk writes nothing above versions Redis lost: it reads the
    channel again, and its marker follows what Redis holds, so the subscriber is told."""
    estate = write_estate(tmp_path, one_dc_market(throttle_ms=1000, rate_limit_per_s=1000.0))
    service, client = await start_service(clock=clock, estate=estate, owner_check_s=3600)  # no owner check yet
    desk = service.channels
    assert desk is not None
    await client.record_events([fact("c0", "COUNT", "sku-0", "dc-1", 0, T), fact("c1", "COUNT", "sku-1", "dc-1", 5, T)])
    kept = (await wait_for_updates(redis_url, "market", 2, desk=desk))[-1].version
    direct = aioredis.Redis.from_url(redis_url)
    try:
        image = await saved(direct)
        clock.advance(1000)  # both keys' throttle intervals over
        await client.record_events([fact("r0", "RECEIPT", "sku-0", "dc-1", 5, T + 1000),
                                    fact("s1", "SALE", "sku-1", "dc-1", 1, T + 1000)])
        seen = (await wait_for_updates(redis_url, "market", 4, desk=desk))[-1].version  # read by the subscriber
        await client.record_events([fact("s2", "SALE", "sku-1", "dc-1", 1, T + 1000)])  # waits for sku-1's interval
        feed = desk.feeds["market"]
        await until(lambda: feed.pending == 1, "sku-1's 3 waiting")
        await restored(direct, image, at_once=True)
        clock.advance(1000)
        desk.poke()
        task = desk.task
        assert task is not None
        marker = await _newest_marker(redis_url, kept)
        assert not task.done() and not service.failed.is_set(), "the service serves on"
    finally:
        await direct.aclose()
    assert marker.follows == kept, "the relink follows a write made above versions Redis lost"
    call = client.stub.WatchAvailability(pb.WatchAvailabilityRequest(channel="market", since_version=seen))
    message = await asyncio.wait_for(call.read(), 30)
    call.cancel()
    assert message.kind == Kind.KIND_RESNAPSHOT_REQUIRED, message


async def test_a_write_in_doubt_settled_below_versions_the_desk_published_reads_the_channel_again_C4(
        proxy: HoldingProxy, redis_url: str, tmp_path: Path) -> None:
    """The same loss found by a settle: Redis back from data saved before sku-b's baseline (published) while the
    desk's next write was in doubt. The settle took the write for not landed and the desk wrote on above a marker
    linked to the restored stream, its memory still holding sku-b at 5 — a snapshot taken then showed it, at a version
    the restart's marker then followed, and the subscriber kept sku-b at 5 for good: the restored data has no sku-b
    (its state hash neither: nothing to withdraw). Now the settle has the desk read the channel again, as the write
    script's refusal does: its marker follows what Redis holds, and sku-b is no longer shown."""
    config = make_config(estate=write_estate(tmp_path, PICKUP), redis_timeout_s=10.0, input_streams=(),
                         owner_check_s=3600)
    clock = ManualClock(T)
    async with (desk_served(config, proxy.url, clock) as (service, desk, client),
                aioredis.Redis.from_url(redis_url) as direct):
        feed = desk.feeds["pickup"]
        await client.record_events([fact("c1", "COUNT", "sku-a", "dc-1", 10, T)])
        await until(lambda: feed.published_version == V0 + 1 and not feed.in_flight, "sku-a's baseline published")
        image = await saved(direct)
        await client.record_events([fact("c2", "COUNT", "sku-b", "dc-1", 5, T)])
        await until(lambda: feed.published_version == V0 + 2 and not feed.in_flight, "sku-b's baseline published")
        proxy.hold(WRITE_SHA)
        await client.record_events([fact("s1", "SALE", "sku-a", "dc-1", 1, T + 1)])
        await until(lambda: any(h.marker == WRITE_SHA for h in proxy.held), "the desk's write of 9 held")
        await restored(direct, image, at_once=True)  # sku-b's baseline lost
        proxy.cut(next(h for h in proxy.held if h.marker == WRITE_SHA))  # in doubt: settled
        proxy.hold()
        proxy.drop()  # it never lands
        task = desk.task
        assert task is not None
        marker = await _newest_marker(redis_url, V0 + 2, "pickup")  # the relink's
        assert not task.done() and not service.failed.is_set(), "the service serves on"
        call = client.stub.WatchAvailability(pb.WatchAvailabilityRequest(channel="pickup", since_version=V0 + 2))
        message = await asyncio.wait_for(call.read(), 30)  # a subscriber that read sku-b's lost baseline
        call.cancel()
    assert marker.follows == V0 + 1, "the relink follows versions written above the loss"
    assert message.kind == Kind.KIND_RESNAPSHOT_REQUIRED, message
