"""The desk's look for keys publishers name (``channels/restamp.py``) goes on past a channel whose ``restamp`` hash it
cannot read: one channel's key of another type, or a field that names no version, must not keep every other
channel's named keys at the lost values their destinations show (C4)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import redis.asyncio as aioredis

from tests.atp_service.channel_helpers import stream_updates, write_estate
from tests.conftest import ServiceFactory
from tests.waiting import until


async def _published_again(redis_url: str) -> bool:
    return any(u.key == ("sku-9", "store-1") and u.quantity == 0 for u in await stream_updates(redis_url, "pickup"))


async def test_a_restamp_key_of_another_type_does_not_stop_the_look_at_other_channels_C4(
        start_service: ServiceFactory, tmp_path: Path, redis_url: str) -> None:
    """Defect: ``market``'s restamp key held a string (WRONGTYPE): each look failed there, logged at DEBUG only,
    before it reached ``pickup``, whose named key was never published again."""
    await start_service(estate=write_estate(tmp_path))
    direct = aioredis.Redis.from_url(redis_url)
    try:
        await direct.set("atp:{avail}:market:restamp", "not a hash")
        await direct.hset("atp:{avail}:pickup:restamp", "sku-9\tstore-1", "5")
        await until(lambda: _published_again(redis_url), "pickup's named key published again (0)", 6)
    finally:
        await direct.aclose()


async def test_a_field_naming_no_version_does_not_end_the_look_C4(
        start_service: ServiceFactory, tmp_path: Path, redis_url: str) -> None:
    """Defect: a field of ``market``'s restamp hash whose value is no version raised ValueError out of the look:
    its task ended (watched by nothing, said by nothing) and no channel's named key was ever published again."""
    await start_service(estate=write_estate(tmp_path))
    direct = aioredis.Redis.from_url(redis_url)
    try:
        await direct.hset("atp:{avail}:market:restamp", "sku-8\tdc-1", "garbage")
        await asyncio.sleep(1.5)  # a look has met it
        await direct.hset("atp:{avail}:pickup:restamp", "sku-9\tstore-1", "5")
        await until(lambda: _published_again(redis_url), "pickup's named key published again (0)", 6)
    finally:
        await direct.aclose()
