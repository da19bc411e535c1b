"""Redis back from older data between a channel's read (``ChannelStore.load``) and the run's first write to it: a
channel a reload adds back reads its stream and state hash, and Redis then loses versions this run published there
(its claim kept: the data saved after the start). The feed's start marker follows the newest version the read saw,
and the write script checked an unlinked entry and a settle's marker against the stream, never a start's: written
above the loss, a subscriber that had read the lost versions sat exactly at ``follows`` and crossed the marker untold,
and the desk's memory (a snapshot) showed values Redis no longer holds (C3, C4). The marker now carries the stream's
last id as read (``StartMarker.reached``) and the script refuses it below that (LOST): the desk reads every channel
again from what Redis holds (``ChannelDesk._relink``), and its marker follows that."""

from __future__ import annotations

import asyncio
from pathlib import Path

import redis.asyncio as aioredis

from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_service import ManualClock
from atp_service.channels.desk import ChannelDesk, ChannelsUnreadable
from atp_service.storage.channel_script import WRITE_SCRIPT
from atp_service.storage.channel_wire import StartMarker
from reservation import ChannelUpdate
from tests.atp_service.app.test_redis_lost_tail import restored, saved
from tests.atp_service.channel_helpers import (
    ESTATE,
    desk_served,
    fact,
    one_dc_market,
    stream_entries,
    wait_for_updates,
    write_estate,
)
from tests.atp_service.redis_proxy import HoldingProxy, proxy
from tests.conftest import ServiceFactory
from tests.conftest import test_config as make_config
from tests.waiting import until

T = 1_700_000_000_000
Kind = pb.WatchAvailabilityResponse
KEY = ("sku-x", "")
MARKET = ESTATE[ESTATE.index('[[channels]]\nname = "market"'):ESTATE.index('[[channels]]\nname = "pickup"')]
__all__ = ["proxy"]  # the fixture, used by name


def _idle(desk: ChannelDesk) -> bool:
    return not desk._dirty and all(f.pending == 0 and f.in_flight == 0 and not getattr(f, "marking", False)
                                   for f in desk.feeds.values())


async def test_a_channel_added_back_is_read_again_where_redis_lost_versions_before_its_marker_was_written_C4(
        proxy: HoldingProxy, redis_url: str, tmp_path: Path) -> None:
    """market published sku-x's 8 (a subscriber read it), a reload removed market and another added it back: its
    read saw the 8, its marker was on its way when Redis came back from data saved before the 8. Before: the marker
    landed, following the lost version, and the desk showed 8 where Redis holds nothing of sku-x. Now it is refused,
    the channel read again, and the subscriber at the lost 8 told to re-snapshot; the service serves on."""
    path = write_estate(tmp_path)
    config = make_config(estate=path, redis_timeout_s=30, input_streams=(), owner_check_s=3600)  # no owner check
    async with (desk_served(config, proxy.url, ManualClock(T)) as (service, desk, client),
                aioredis.Redis.from_url(redis_url) as direct):
        await until(lambda: _idle(desk), "the start markers written")
        image = await saved(direct)  # this run's claim in it: no write of this run is refused FENCED
        kept = max(e.version for e in await stream_entries(redis_url, "market"))
        await client.record_events([fact("c1", "COUNT", *KEY[:1], "dc-1", 10, T)])
        await until(lambda: _idle(desk) and KEY in desk.feeds["market"].published, "market's 8 published")
        seen = desk.feeds["market"].published_version  # read by a subscriber
        path.write_text(ESTATE.replace(MARKET, ""))  # market removed...
        await client.stub.ReloadEstate(pb.ReloadEstateRequest())
        proxy.hold(WRITE_SCRIPT.sha.encode())
        path.write_text(ESTATE)  # ...and back: read from Redis, the 8 at ``seen`` in its stream and state hash
        await client.stub.ReloadEstate(pb.ReloadEstateRequest())
        await until(lambda: len(proxy.held) == 1, "the marker of market added back on its way")
        proxy.hold()
        await restored(direct, image, at_once=True)  # the 8 lost: market's stream ends at ``kept`` again
        reply = await proxy.land(proxy.held[0])
        assert reply.startswith(b"-LOST"), reply
        above: list[ChannelUpdate] = []

        async def marked() -> bool:
            above[:] = [e for e in await stream_entries(redis_url, "market") if e.version > kept]
            return bool(above) or service.failed.is_set()
        await until(marked, "a marker written to market")
        assert isinstance(above[0], StartMarker) and above[0].follows == kept, \
            f"written above versions Redis lost (the stream ends at {kept}, {seen} was read): {above[0]}"
        assert not service.failed.is_set(), "the service stopped for the channel's loss"
        call = client.stub.WatchAvailability(pb.WatchAvailabilityRequest(channel="market", since_version=seen))
        message = await asyncio.wait_for(call.read(), 30)
        call.cancel()
        assert message.kind == Kind.KIND_RESNAPSHOT_REQUIRED, message


async def test_an_operator_s_xdel_of_the_newest_entry_leaves_the_desk_publishing_and_tells_who_missed_it(
        start_service: ServiceFactory, tmp_path: Path, redis_url: str) -> None:
    """The newest entry of market's stream deleted by hand (``XDEL``): the desk's next change follows on from it, which
    the write script refused LOST — the desk stopped and the whole service restarted once, though Redis lost nothing
    (its id handed out, its value in the state hash). Written now; a subscriber that read it goes on, one before it
    meets the hole and is told to re-snapshot (C3)."""
    service, client = await start_service(estate=write_estate(tmp_path, one_dc_market(0, 1000.0)))
    desk = service.channels
    assert desk is not None
    await client.record_events([fact("c1", "COUNT", *KEY[:1], "dc-1", 10, T)])
    deleted = (await wait_for_updates(redis_url, "market", 1, desk=desk))[-1].version
    async with aioredis.Redis.from_url(redis_url) as direct:
        await direct.xdel("atp:{avail}:market", f"{deleted}-0")
    await client.record_events([fact("s1", "SALE", *KEY[:1], "dc-1", 1, T + 1)])
    await until(lambda: desk.feeds["market"].published_version > deleted or service.failed.is_set(),
                "the sale's 9 published, or the service stopping")
    assert not service.failed.is_set(), "the service stopped for an entry deleted by hand"
    for since, kind in ((deleted, Kind.KIND_CHANGES), (deleted - 1, Kind.KIND_RESNAPSHOT_REQUIRED)):
        call = client.stub.WatchAvailability(pb.WatchAvailabilityRequest(channel="market", since_version=since))
        message = await asyncio.wait_for(call.read(), 30)
        call.cancel()
        assert message.kind == kind, (since, message)


async def test_a_relink_that_redis_refuses_for_good_stops_the_service_naming_why(
        start_service: ServiceFactory, tmp_path: Path, redis_url: str) -> None:
    """Redis lost market's newest entry, and web's state hash key holds a string (written by something else): the
    relink's read of web is refused WRONGTYPE, which no wait cures. Waited out, no channel published again and nothing
    said why; the desk ends on it (``ChannelsUnreadable``) and the service stops to be restarted, its start failing
    on the key by name."""
    service, client = await start_service(estate=write_estate(tmp_path), input_streams=())
    desk = service.channels
    assert desk is not None
    await client.record_events([fact("c1", "COUNT", *KEY[:1], "dc-1", 10, T)])
    published = (await wait_for_updates(redis_url, "market", 1, desk=desk))[-1].version
    async with aioredis.Redis.from_url(redis_url) as direct:
        await direct.xdel("atp:{avail}:market", f"{published}-0")
        await direct.execute_command("XSETID", "atp:{avail}:market", f"{published - 1}-0")  # never got it
        await direct.set("atp:{avail}:web:state", "not a hash")
    await client.record_events([fact("s1", "SALE", *KEY[:1], "dc-1", 1, T + 1)])
    task = desk.task
    assert task is not None
    await until(task.done, "the desk ended")
    assert isinstance(task.exception(), ChannelsUnreadable), task.exception()
    assert "WRONGTYPE" in str(task.exception())
    await until(service.failed.is_set, "the service stopping to be restarted")
