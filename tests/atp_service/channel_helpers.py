"""A small estate for channel tests, and helpers to read what a channel published."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

import redis.asyncio as aioredis

from atp_client import AtpClient, timestamp
from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_service import AtpService, Clock, ServiceConfig
from atp_service.channels.desk import ChannelDesk
from atp_service.storage.channel_wire import from_fields, values_of
from reservation import ChannelUpdate
from tests.waiting import until

ESTATE = """
[[locations]]
id = "dc-1"
type = "dc"

[[locations]]
ids = ["store-1", "store-2", "store-3"]
type = "store"
region = "north"

[groups]
stores = { type = "store" }
north-first = ["store-2", "store-1", "store-3"]

[[channels]]
name = "market"
sells_from = ["dc-1"]
buffer_units = 2
low_stock_threshold = 1
throttle_ms = 1000
rate_limit_per_s = 1000.0

[[channels]]
name = "pickup"
sells_from = ["stores"]
per_location = true
buffer_units = 1
throttle_ms = 1000
rate_limit_per_s = 1000.0
strategy = "most_available"

[[channels]]
name = "web"
sells_from = ["north-first", "dc-1"]
buffer_percent = 10.0
max_shown = 50
throttle_ms = 0
rate_limit_per_s = 1000.0
strategy = "priority"
"""


def one_dc_market(throttle_ms: int, rate_limit_per_s: float, burst: int | None = None) -> str:
    """An estate of one DC and one channel, ``market``, selling from it, throttled as given."""
    return (f'[[locations]]\nid = "dc-1"\ntype = "dc"\n\n[[channels]]\nname = "market"\nsells_from = ["dc-1"]\n'
            f"throttle_ms = {throttle_ms}\nrate_limit_per_s = {rate_limit_per_s!r}\n"
            + ("" if burst is None else f"burst = {burst}\n"))


def write_estate(tmp_path: Path, text: str = ESTATE) -> Path:
    path = tmp_path / "estate.toml"
    path.write_text(text)
    return path


@contextlib.asynccontextmanager
async def desk_served(config: ServiceConfig, redis_url: str, clock: Clock
                      ) -> AsyncIterator[tuple[AtpService, ChannelDesk, AtpClient]]:
    """``async with desk_served(config, url, clock) as (service, desk, client)``: the service started with ``config``
    on the Redis at ``redis_url`` (a ``HoldingProxy``'s, for one) and its clock ``clock``, its channel desk, and a
    client of it; however the block ends (a start that failed included), the client closed and the service stopped."""
    service = AtpService(config, redis_url, clock=clock)
    client: AtpClient | None = None
    try:
        await service.start()
        desk = service.channels
        assert desk is not None
        client = AtpClient(f"127.0.0.1:{service.port}")
        yield service, desk, client
    finally:
        if client is not None:
            await client.close()
        await service.stop(grace_s=0.1)


def fact(event_id: str, kind: str, sku: str, location: str, quantity: int, t: int) -> pb.Fact:
    return pb.Fact(event_id=event_id, source="pos", kind=pb.FactKind.Value(f"FACT_KIND_{kind}"), sku=sku,
                   location=location, quantity=quantity, event_time=timestamp(t))


async def stream_entries(redis_url: str, channel: str) -> list[ChannelUpdate]:
    """Every entry of the channel's stream: its updates and each start's marker (``StartMarker``)."""
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        entries = await client.xrange(f"atp:{{avail}}:{channel}")
    finally:
        await client.aclose()
    return [from_fields(fields) for _, fields in entries]


async def stream_updates(redis_url: str, channel: str) -> list[ChannelUpdate]:
    """The updates of the channel's stream, the starts' markers left out (they carry none)."""
    return values_of(await stream_entries(redis_url, channel))


async def wait_for_updates(redis_url: str, channel: str, count: int, timeout_s: float = 10.0,
                           desk: ChannelDesk | None = None) -> list[ChannelUpdate]:
    """The channel stream's updates once it holds at least ``count`` (fails after ``timeout_s``). ``desk``: and once
    that desk confirmed them (``published``: what a watch's snapshot and the feed's metrics show), which it does when
    its write's answer is read — after Redis shows them, by a turn of its loop or more."""
    deadline = time.monotonic() + timeout_s
    while True:
        updates = await stream_updates(redis_url, channel)
        if len(updates) >= count:
            if desk is not None:
                await confirmed(desk, channel, max(u.version for u in updates), timeout_s)
            return updates
        if time.monotonic() > deadline:
            raise AssertionError(f"{channel}: {len(updates)} updates after {timeout_s}s, expected {count}: {updates}")
        await asyncio.sleep(0.02)


async def confirmed(desk: ChannelDesk, channel: str, version: int, timeout_s: float = 10.0) -> None:
    """Until ``desk`` confirmed ``channel``'s writes up to ``version``: its write's answer read, the values published
    in its memory (``Feed.confirm``) — a turn or more after Redis shows them in the channel's stream."""
    await until(lambda: desk.feeds[channel].published_version >= version, f"{channel} confirmed up to {version}",
                timeout_s)


def latest(updates: list[ChannelUpdate]) -> dict[tuple[str, str], tuple[int, int]]:
    """Fold a channel's updates: key -> (quantity, version) of the newest."""
    out: dict[tuple[str, str], tuple[int, int]] = {}
    for u in updates:
        out[(u.sku, u.location)] = (u.quantity, u.version)
    return out


async def raised_while_pickup_throttles(client: AtpClient, redis_url: str, key: tuple[str, str], t: int) -> None:
    """``key`` counted 1 (pickup shows 1 - its buffer of 1: a baseline 0, published), then a receipt of 4
    (5 - 1 = 4), which waits for pickup's throttle interval: a change of a per-location channel left pending."""
    await client.record_events([fact("c1", "COUNT", *key, 1, t)])
    await wait_for_updates(redis_url, "pickup", 1)
    await client.record_events([fact("r1", "RECEIPT", *key, 4, t + 1)])


class DeskRounds:
    """A desk's rounds counted as each begins and ends (its ``run_round`` wrapped; the desk's loop calls it
    anew each round). ``one_more`` is what a test waits for before it asserts that nothing more was
    published: a whole round of the desk — curate, offer, publish what is due — run after that point.
    A sleep only hoped one had run: on a slow host it passed where throttling was broken (C2)."""

    def __init__(self, desk: ChannelDesk) -> None:
        self.desk, self.begun, self.ended = desk, 0, 0
        run_round = desk.run_round

        async def counted() -> None:
            self.begun += 1
            index = self.begun
            await run_round()
            self.ended = max(self.ended, index)

        desk.run_round = counted  # type: ignore[method-assign]

    async def one_more(self) -> None:
        """Until a round begun after this call has ended (the desk woken for it)."""
        after = self.begun + 1
        self.desk.poke()
        await until(lambda: self.ended >= after, "a round of the desk begun after the changes ended")
