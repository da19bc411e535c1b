"""The channel desk's relink (``ChannelDesk._relink``): Redis lost versions the desk published, and the desk alone
reads every channel again from what Redis holds. Counted (``atp_channel_relinks_total``: it replaced a service
restart, which an operator saw as one), and the feeds' memory, which holds the lost values, is never shown in a
snapshot unless the read completed: a relink Redis refuses for good ends the desk (``ChannelsUnreadable``) and the
service stops, but snapshots were served again from the lost values until it stopped serving (C4). A channel Redis
holds nothing of is a loss too, and a loss found again before any round went through is read again after a wait."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_service import ManualClock
from atp_service.channels.desk import ChannelDesk, ChannelsUnreadable
from atp_service.storage.channel_script import WRITE_SCRIPT
from reservation import Unavailable
from tests.atp_service.channel_helpers import (
    desk_served,
    fact,
    one_dc_market,
    wait_for_updates,
    write_estate,
)
from tests.atp_service.redis_proxy import HoldingProxy, proxy
from tests.conftest import ServiceFactory
from tests.conftest import test_config as make_config
from tests.waiting import until

T = 1_700_000_000_000
STREAM = "atp:{avail}:market"
KEY = ("sku-x", "")
Kind = pb.WatchAvailabilityResponse
__all__ = ["proxy"]  # the fixture, used by name


def _relinks(desk: ChannelDesk) -> float:
    (family,) = desk.metrics.relinks.collect()
    return sum(s.value for s in family.samples if s.name.endswith("_total"))


async def _lose_the_newest(redis_url: str, version: int, web_state: str | None = None) -> None:
    """market's newest entry gone as if never written (Redis back from data saved before it); ``web_state``: web's
    state hash key overwritten with a string (something else than the service wrote it)."""
    async with aioredis.Redis.from_url(redis_url) as direct:
        await direct.xdel(STREAM, f"{version}-0")
        await direct.execute_command("XSETID", STREAM, f"{version - 1}-0")  # its id never handed out
        await direct.hdel(f"{STREAM}:state", "sku-x\t")  # nor its value: sku-x's first
        if web_state is not None:
            await direct.set("atp:{avail}:web:state", web_state)


async def test_a_relink_is_counted_and_the_desk_then_shows_what_redis_holds(
        start_service: ServiceFactory, tmp_path: Path, redis_url: str) -> None:
    service, client = await start_service(estate=write_estate(tmp_path), input_streams=())
    desk = service.channels
    assert desk is not None
    assert _relinks(desk) == 0
    await client.record_events([fact("c1", "COUNT", "sku-x", "dc-1", 10, T)])
    lost = (await wait_for_updates(redis_url, "market", 1, desk=desk))[-1].version
    await _lose_the_newest(redis_url, lost)
    await client.record_events([fact("s1", "SALE", "sku-x", "dc-1", 1, T + 1)])
    await until(lambda: _relinks(desk) == 1 and not desk._relinking, "the desk read every channel again")
    _, shown = desk.snapshot("market")
    assert all(p.version != lost for _, p in shown), f"the value of the lost version {lost} shown: {shown}"
    assert not service.failed.is_set()


async def test_a_relink_redis_refuses_for_good_shows_no_snapshot_of_the_lost_values_C4(
        start_service: ServiceFactory, tmp_path: Path, redis_url: str) -> None:
    """web's state hash key holds a string: the relink's read is refused WRONGTYPE, the desk ends. Before, its flag
    was cleared on the way out, and a snapshot of market showed the lost version and its value until the service
    stopped serving (an embedded service: for as long as it ran)."""
    service, client = await start_service(estate=write_estate(tmp_path), input_streams=())
    desk = service.channels
    assert desk is not None
    await client.record_events([fact("c1", "COUNT", "sku-x", "dc-1", 10, T)])
    lost = (await wait_for_updates(redis_url, "market", 1, desk=desk))[-1].version
    await _lose_the_newest(redis_url, lost, web_state="not a hash")
    await client.record_events([fact("s1", "SALE", "sku-x", "dc-1", 1, T + 1)])
    task = desk.task
    assert task is not None
    await until(task.done, "the desk ended")
    assert isinstance(task.exception(), ChannelsUnreadable), task.exception()
    assert _relinks(desk) == 1
    with pytest.raises(Unavailable):
        shown = desk.snapshot("market")
        pytest.fail(f"a snapshot of the feeds' memory, the lost version {lost} in it: {shown[0]}")


async def test_a_channel_redis_holds_nothing_of_is_read_again_and_its_subscriber_told_C3(
        start_service: ServiceFactory, tmp_path: Path, redis_url: str) -> None:
    """Redis back from data saved before market's first entry (its claim kept): neither market's stream nor its state
    hash is there. The write script checked an entry following on only against a stream holding one, so the desk's
    next change was written as the stream's first entry, and a subscriber at the lost version read it as the one
    after its own: across the loss untold, the values it had read lost for good (C3, C4). Refused LOST now: the desk
    reads the channels again, and the subscriber is told to re-snapshot."""
    service, client = await start_service(estate=write_estate(tmp_path, one_dc_market(0, 1000.0)), input_streams=())
    desk = service.channels
    assert desk is not None
    await client.record_events([fact("c1", "COUNT", "sku-x", "dc-1", 10, T)])
    seen = (await wait_for_updates(redis_url, "market", 1, desk=desk))[-1].version  # a subscriber read it
    async with aioredis.Redis.from_url(redis_url) as direct:
        await direct.delete(STREAM, f"{STREAM}:state")
    await client.record_events([fact("s1", "SALE", "sku-x", "dc-1", 1, T + 1)])
    await until(lambda: KEY in desk.feeds["market"].published and desk.feeds["market"].published[KEY].version > seen
                and all(f.in_flight == 0 for f in desk.feeds.values()), "the sale's value published")
    call = client.stub.WatchAvailability(pb.WatchAvailabilityRequest(channel="market", since_version=seen))
    message = await asyncio.wait_for(call.read(), 30)
    call.cancel()
    assert message.kind == Kind.KIND_RESNAPSHOT_REQUIRED, message
    assert _relinks(desk) == 1


async def test_a_loss_found_again_before_any_round_went_through_is_read_again_after_a_wait(
        proxy: HoldingProxy, redis_url: str, tmp_path: Path, caplog: Any) -> None:
    """Redis loses market's newest version, the desk reads every channel again; its next write is on its way when
    Redis loses the version that read saw too (two data sets taking turns): refused LOST, the desk reads everything
    again. Each read is of every channel, and every SKU is curated again: the second waits (``RELINK_AGAIN``), the
    first did not. Before, a desk refused on every write read every channel again at once, round after round."""
    config = make_config(estate=write_estate(tmp_path, one_dc_market(0, 1000.0)), redis_timeout_s=30,
                         input_streams=(), owner_check_s=3600)  # no owner check
    with caplog.at_level(logging.ERROR, logger="atp_service.channels.desk"):
        async with desk_served(config, proxy.url, ManualClock(T)) as (_, desk, client):
            await client.record_events([fact("a1", "COUNT", "sku-a", "dc-1", 10, T)])
            kept = (await wait_for_updates(redis_url, "market", 1, desk=desk))[-1].version
            await client.record_events([fact("b1", "COUNT", "sku-b", "dc-1", 10, T)])
            lost = (await wait_for_updates(redis_url, "market", 2, desk=desk))[-1].version
            await _lose(redis_url, lost, "sku-b")
            proxy.hold(WRITE_SCRIPT.sha.encode())
            await client.record_events([fact("a2", "SALE", "sku-a", "dc-1", 1, T + 1)])
            await until(lambda: len(proxy.held) == 1, "the sale's write on its way")
            assert (await proxy.land(proxy.held[0])).startswith(b"-LOST")
            await until(lambda: _relinks(desk) == 1 and len(proxy.held) == 1, "the desk's next write on its way")
            proxy.hold()
            await _lose(redis_url, kept, "sku-a")  # what the relink read is lost too
            assert (await proxy.land(proxy.held[0])).startswith(b"-LOST")
            await until(lambda: _relinks(desk) == 2, "the desk reading every channel again")
    waits = [getattr(r, "retry_s", 0) for r in caplog.records if getattr(r, "event", "") == "channel_feeds_relinked"]
    assert waits[0] == 0 and waits[1] > 0, waits


async def _lose(redis_url: str, version: int, sku: str) -> None:
    """market's entry ``version`` (its newest) and ``sku``'s value gone, as if never written."""
    async with aioredis.Redis.from_url(redis_url) as direct:
        await direct.xdel(STREAM, f"{version}-0")
        await direct.execute_command("XSETID", STREAM, f"{version - 1}-0")
        await direct.hdel(f"{STREAM}:state", f"{sku}\t")
