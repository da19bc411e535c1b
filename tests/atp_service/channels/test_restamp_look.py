"""The desk's look for keys publishers name (``channels/restamp.py``) goes on past a channel whose ``restamp`` hash it
cannot read: one channel's key of another type, or a field that names no version, must not keep every other
channel's named keys at the lost values their destinations show (C4)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from prometheus_client import Counter

from atp_service.channels import restamp
from atp_service.storage.channel_store import ChannelStore
from reservation import Key
from tests.atp_service.channel_helpers import stream_updates, write_estate
from tests.conftest import ServiceFactory
from tests.waiting import until


async def _published_again(redis_url: str) -> bool:
    return any(u.key == ("sku-9", "store-1") and u.quantity == 0 for u in await stream_updates(redis_url, "pickup"))


async def test_a_restamp_key_of_another_type_does_not_stop_the_look_at_other_channels_C4(
        start_service: ServiceFactory, tmp_path: Path, redis_url: str, caplog: pytest.LogCaptureFixture) -> None:
    """Defect: ``market``'s restamp key held a string (WRONGTYPE): each look failed there, logged at DEBUG only,
    before it reached ``pickup``, whose named key was never published again. Each channel's refusals and keys
    published again are counted and logged by channel."""
    service, _ = await start_service(estate=write_estate(tmp_path))
    direct = aioredis.Redis.from_url(redis_url)
    try:
        await direct.set("atp:{avail}:market:restamp", "not a hash")
        await direct.hset("atp:{avail}:pickup:restamp", "sku-9\tstore-1", "5")
        with caplog.at_level(logging.WARNING, logger="atp_service.channels.restamp"):
            await until(lambda: _published_again(redis_url), "pickup's named key published again (0)")
    finally:
        await direct.aclose()
    metrics = service.metrics.channels
    assert _counted(metrics.published_again, "pickup") == 1 and _counted(metrics.published_again, "market") == 0
    assert _counted(metrics.restamps_unread, "market") >= 1 and _counted(metrics.restamps_unread, "pickup") == 0
    events = {(r.event, r.channel) for r in caplog.records if hasattr(r, "event")}  # type: ignore[attr-defined]
    assert {("channel_restamps_unread", "market"), ("channel_keys_published_again", "pickup")} <= events, events


def _counted(counter: Counter, channel: str) -> float:
    return sum(s.value for m in counter.collect() for s in m.samples
               if s.name.endswith("_total") and s.labels.get("channel") == channel)


async def test_a_field_naming_no_version_does_not_end_the_look_C4(
        start_service: ServiceFactory, tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Defect: a field of ``market``'s restamp hash whose value is no version raised ValueError out of the look:
    its task ended (watched by nothing, said by nothing) and no channel's named key was ever published again.
    ``pickup``'s key is named only once a look has read ``market``'s hash holding that field, whatever the order
    the look takes the channels in."""
    monkeypatch.setattr(restamp, "POLL_S", 0.05)
    service, _ = await start_service(estate=write_estate(tmp_path))
    desk = service.channels
    assert desk is not None
    looks = LooksAt(desk.store, monkeypatch)
    direct = aioredis.Redis.from_url(redis_url)
    try:
        await direct.hset("atp:{avail}:market:restamp", "sku-8\tdc-1", "garbage")
        looks.armed = True
        await until(lambda: "market" in looks.read, "a look read market's hash holding the field")
        assert desk.restamps_task is not None and not desk.restamps_task.done()
        await direct.hset("atp:{avail}:pickup:restamp", "sku-9\tstore-1", "5")
        await until(lambda: _published_again(redis_url), "pickup's named key published again (0)")
    finally:
        await direct.aclose()


class LooksAt:
    """The channels whose ``restamp`` hash a look read (``ChannelStore.restamps``, answered or raised), each listed
    once its read ended, of the reads begun once ``armed``."""

    def __init__(self, store: ChannelStore, monkeypatch: pytest.MonkeyPatch) -> None:
        self.armed = False
        self.read: list[str] = []
        restamps = store.restamps

        async def read(channel: str) -> list[tuple[Key, int, Any, Any]]:
            armed = self.armed
            try:
                return await restamps(channel)
            finally:
                if armed:
                    self.read.append(channel)

        monkeypatch.setattr(store, "restamps", read)


async def test_a_field_not_utf8_does_not_end_the_look_C4(
        start_service: ServiceFactory, tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Defect: a field of ``market``'s restamp hash that is not UTF-8 (no publisher's: a hand-made or damaged key)
    raised UnicodeDecodeError out of the look, as a value naming no version once did: its task ended, and no
    channel's named key was published again (or, its task watched, the service stopped at every start)."""
    monkeypatch.setattr(restamp, "POLL_S", 0.05)
    service, _ = await start_service(estate=write_estate(tmp_path))
    desk = service.channels
    assert desk is not None
    direct = aioredis.Redis.from_url(redis_url)
    try:
        await direct.hset("atp:{avail}:market:restamp", b"sku-\xff\tdc-1", "5")
        await direct.hset("atp:{avail}:pickup:restamp", "sku-9\tstore-1", "5")
        await until(lambda: _published_again(redis_url), "pickup's named key published again (0)", 6)
    finally:
        await direct.aclose()
    assert desk.restamps_task is not None and not desk.restamps_task.done() and not service.failed.is_set()
