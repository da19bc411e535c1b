"""A channel whose key in Redis holds another type (set by something other than the service) is set
aside: the other channels go on publishing — its own updates wait, and go out once the key is removed."""

from __future__ import annotations

import asyncio
import hashlib
import logging
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from atp_client import AtpClient
from atp_service import AtpService, EmbeddedRedis, ManualClock
from atp_service.channels.aside import RECHECK_MS
from atp_service.storage.channel_script import WRITE
from atp_service.tasks import cancel_and_wait
from tests.atp_service.channel_helpers import fact, stream_updates, wait_for_updates, write_estate
from tests.atp_service.redis_proxy import HoldingProxy
from tests.conftest import ServiceFactory
from tests.conftest import test_config as make_config
from tests.waiting import until

T = 1_700_000_000_000
WRITE_SHA = hashlib.sha1(WRITE.encode()).hexdigest().encode()  # the desk's write on the wire (EVALSHA)


async def test_a_channel_whose_stream_key_holds_a_string_is_set_aside_and_the_others_publish(
        start_service: ServiceFactory, tmp_path: Path, clock: ManualClock, redis_url: str, caplog: Any) -> None:
    raw = aioredis.Redis.from_url(redis_url)
    service, client = await start_service(clock=clock, estate=write_estate(tmp_path), input_streams=())
    await raw.set("atp:{avail}:market", "not the service's")  # market's stream key (at start: refused, named)
    desk = service.channels
    assert desk is not None
    try:
        with caplog.at_level(logging.INFO):
            await client.record_events([fact("c1", "COUNT", "sku-a", "dc-1", 40, T)])
            web = await wait_for_updates(redis_url, "web", 1)  # published, though market's write is refused
            await until(lambda: any(getattr(r, "event", "") == "channel_set_aside" for r in caplog.records),
                        "market set aside")
        assert [(u.sku, u.location, u.quantity) for u in web] == [("sku-a", "", 36)]
        await client.record_events([fact("s1", "SALE", "sku-a", "dc-1", 10, T + 1)])
        await wait_for_updates(redis_url, "web", 2)  # still: market kept aside, not refusing every write
        assert await raw.get("atp:{avail}:market") == b"not the service's"
        await raw.delete("atp:{avail}:market")
        clock.advance(RECHECK_MS)
        desk.poke()
        market = await wait_for_updates(redis_url, "market", 1)
        assert [(u.sku, u.quantity) for u in market][-1] == ("sku-a", 28)  # 30 on hand less its 2 buffer units
        await asyncio.sleep(0)
        assert len(await stream_updates(redis_url, "web")) == 2
    finally:
        await raw.aclose()


async def test_a_channel_whose_stream_key_turned_another_type_while_its_write_was_in_doubt_is_set_aside(
        redis_server: EmbeddedRedis, redis_url: str, tmp_path: Path) -> None:
    """The write's answer is lost (in doubt, R7) while something else overwrites market's stream key with a
    string: the settle reads each stream's newest version, and market's read failed WRONGTYPE on every try,
    the settle waiting for ever and no channel publishing. Market is set aside; web goes on publishing."""
    proxy = HoldingProxy("127.0.0.1", redis_server.port)
    clock = ManualClock(T)
    # A Redis timeout far above what the steps take: the write's failure comes when the test cuts it.
    service = AtpService(make_config(estate=write_estate(tmp_path), redis_timeout_s=10.0, input_streams=()),
                         await proxy.start(), clock=clock)
    raw = aioredis.Redis.from_url(redis_url)
    client: AtpClient | None = None
    try:
        await service.start()
        client = AtpClient(f"127.0.0.1:{service.port}")
        await client.record_events([fact("c1", "COUNT", "sku-a", "dc-1", 40, T)])
        await wait_for_updates(redis_url, "market", 1)
        await wait_for_updates(redis_url, "web", 1)
        clock.advance(1000)  # market's throttle interval: both channels' changes go out in one write
        proxy.hold(WRITE_SHA)
        await client.record_events([fact("s1", "SALE", "sku-a", "dc-1", 10, T + 1)])
        await until(lambda: len(proxy.held) == 1, "the write of both channels on its way")
        await raw.delete("atp:{avail}:market")
        await raw.set("atp:{avail}:market", "not the service's")
        proxy.cut(proxy.held[0])  # its answer lost: in doubt, settled by a fence and a read of each stream
        proxy.hold()
        proxy.drop()  # it never lands
        web = await wait_for_updates(redis_url, "web", 2, timeout_s=20)  # given back, and written again
        assert [u.quantity for u in web] == [36, 27]
        await raw.delete("atp:{avail}:market")
        clock.advance(RECHECK_MS)
        desk = service.channels
        assert desk is not None
        desk.poke()
        market = await wait_for_updates(redis_url, "market", 1)
        assert [(u.sku, u.quantity) for u in market][-1] == ("sku-a", 28)
    finally:
        await raw.aclose()
        if client is not None:
            await client.close()
        await service.stop(grace_s=0.1)
        await proxy.close()


async def test_a_channel_set_aside_starts_no_write_between_a_rounds_slices(
        start_service: ServiceFactory, tmp_path: Path, clock: ManualClock, redis_url: str, caplog: Any) -> None:
    """Its updates are due for good and none is written: counted as due between slices, each started a write
    taking nothing for it, spending the round's budget (``PUBLISH_WRITES_PER_ROUND``) on nothing, and the other
    channels' changes due mid-round waited for the round's end."""
    raw = aioredis.Redis.from_url(redis_url)
    service, client = await start_service(clock=clock, estate=write_estate(tmp_path), input_streams=())
    desk = service.channels
    assert desk is not None
    try:
        await raw.set("atp:{avail}:market", "not the service's")
        with caplog.at_level(logging.INFO):
            await client.record_events([fact("c1", "COUNT", "sku-a", "dc-1", 40, T)])
            await wait_for_updates(redis_url, "web", 1)
            await until(lambda: any(getattr(r, "event", "") == "channel_set_aside" for r in caplog.records),
                        "market set aside")
        assert desk.feeds["market"].pending and desk.feeds["market"].stockouts_pending == 0
        await until(lambda: not desk.feeds["web"].pending, "web's update written")
        assert desk.task is not None
        await cancel_and_wait(desk.task)  # its loop still: the round below is the test's alone
        desk._urgent.begin_round(4)
        desk._due_between_slices()
        assert desk._urgent._task is None  # nothing due but market's: no write started
    finally:
        await raw.aclose()
