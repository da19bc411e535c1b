"""Redis back from older data while the service still runs: until its owner check finds the loss (every
``owner_check_s``), the desk may write what falls due — a change that waited for its throttle interval — above
the versions Redis lost. Written on as if nothing were missing, the next start's marker followed that write: a
subscriber that had read the lost versions crossed the restart without a word, and kept their values (C3, C4)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import redis.asyncio as aioredis

from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_service import ManualClock
from atp_service.storage.channel_wire import StartMarker
from tests.atp_service.app.test_redis_lost_tail import restored, saved
from tests.atp_service.channel_helpers import fact, one_dc_market, stream_entries, wait_for_updates, write_estate
from tests.conftest import ServiceFactory
from tests.waiting import until

T = 1_700_000_000_000
Kind = pb.WatchAvailabilityResponse


async def _newest_marker(redis_url: str, above: int) -> StartMarker:
    """The first start marker of ``market`` above version ``above``, once written."""
    found: list[StartMarker] = []

    async def written() -> bool:
        found[:] = [e for e in await stream_entries(redis_url, "market")
                    if isinstance(e, StartMarker) and e.version > above]
        return bool(found)
    await until(written, "the restart's marker written")
    return found[0]


async def test_a_subscriber_that_read_versions_redis_lost_is_told_to_resnapshot_though_the_desk_wrote_after_C4(
        start_service: ServiceFactory, tmp_path: Path, clock: ManualClock, redis_url: str) -> None:
    """Defect: sku-0 went 0 -> 5 (a receipt) and a subscriber read it; Redis then came back from before the receipt,
    and before the owner check saw it the desk wrote sku-1's throttled change on top of the restored stream, with no
    link. The service restarted (R7) on the restored data — sku-0 durable at 0, its state hash at 0 too, so nothing
    to publish (E11) — and its start's marker followed the desk's last write: the subscriber went on from there, sku-0
    shown at 5 for good, units that are not there. Now the desk writes nothing above versions Redis lost: the service
    stops to be restarted, and its start's marker follows what Redis holds, so the subscriber is told."""
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
        await until(lambda: task.done() or not (feed.pending or feed.in_flight), "sku-1's 3 written or refused")
        assert [e.version for e in await stream_entries(redis_url, "market") if e.version > kept] == []
        assert service.failed.is_set(), "the service stops to be restarted (R7)"
    finally:
        await direct.aclose()
    await service.stop(grace_s=0.1)  # restarted on the restored data, as the owner check would have it (R7)
    _again, client = await start_service(clock=clock, estate=estate)
    marker = await _newest_marker(redis_url, seen)
    assert marker.follows == kept, "the restart follows a write made above versions Redis lost"
    call = client.stub.WatchAvailability(pb.WatchAvailabilityRequest(channel="market", since_version=seen))
    message = await asyncio.wait_for(call.read(), 30)
    call.cancel()
    assert message.kind == Kind.KIND_RESNAPSHOT_REQUIRED, message
