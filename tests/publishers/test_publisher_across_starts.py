"""atp-publisher across starts of the real service: each start's versions jump (C3: they begin at the start's
clock floor), and the start's first entry in the channel stream says which version it follows. A plain
restart is no gap: nothing trimmed, nothing lost, no warning and no look over the state hash. A Redis that went
back to older data under a publisher that had read past it is a real loss: warned, and owed as a gap is."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from atp_client import AtpClient
from atp_service import AtpService, ManualClock
from atp_service.storage.channel_wire import StartMarker
from publishers import JsonlAdapter, Publisher, PublisherMetrics
from reservation import ChannelUpdate
from tests.atp_service.app.test_redis_lost_tail import restored, saved
from tests.atp_service.channel_helpers import fact, stream_entries, wait_for_updates, write_estate
from tests.conftest import ServiceFactory
from tests.publishers.test_publisher import config
from tests.publishers.test_publisher_trimmed import delivered
from tests.waiting import until

T = 1_700_000_000_000
STREAM, STATE = "atp:{avail}:market", "atp:{avail}:market:state"
Commands = Callable[[], Awaitable[list[list[str]]]]


@contextlib.asynccontextmanager
async def monitored(redis_url: str) -> AsyncIterator[Commands]:
    """Every command Redis runs from here (MONITOR: its words, those of scripts' calls too), read up to the moment
    it is asked for them."""
    client, other = aioredis.Redis.from_url(redis_url), aioredis.Redis.from_url(redis_url)
    try:
        async with client.monitor() as monitor:
            async def so_far() -> list[list[str]]:
                await other.echo("monitor-so-far")
                seen: list[list[str]] = []
                while (words := (await monitor.next_command())["command"].split()) != ["ECHO", "monitor-so-far"]:
                    seen.append(words)
                return seen
            yield so_far
    finally:
        await client.aclose()
        await other.aclose()


def sweeps(commands: list[list[str]]) -> list[list[str]]:
    """The commands of a gap owed: the state hash swept (HSCAN), the resync of every key owed (its mark raised)."""
    return [c for c in commands if len(c) > 1 and ((c[0].lower() == "hscan" and c[1] == STATE)
                                                   or (c[0].lower() == "incr" and "redeliver-all" in c[1]))]


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name.startswith("publishers") and r.levelno >= logging.WARNING]


async def _delivered(out: Path, sku: str, version: int) -> None:
    await until(lambda: delivered(out).get(sku, (0, 0, ""))[1] == version, f"{sku} at {version} delivered", 20)


async def _acknowledged(direct: aioredis.Redis) -> None:
    async def none_pending() -> bool:
        info: Any = await direct.xpending(STREAM, "jsonl")
        return int(info["pending"]) == 0
    await until(none_pending, "every entry read acknowledged", 20)



async def newest_start(redis_url: str) -> StartMarker:
    """The marker the service's newest start wrote to ``market``: its first entry, no update."""
    return [e for e in await stream_entries(redis_url, "market") if isinstance(e, StartMarker)][-1]


async def three_counted(start_service: ServiceFactory, tmp_path: Path, clock: ManualClock, redis_url: str
                        ) -> tuple[Path, Path, AtpService, AtpClient, list[ChannelUpdate]]:
    """The service started on the ``market`` estate, sku-0..2 counted (5, 6, 7) and published: the estate, the
    publisher's output file, the service, its client and the channel's updates."""
    estate, out = write_estate(tmp_path), tmp_path / "feed.jsonl"
    service, client = await start_service(clock=clock, estate=estate)
    await client.record_events([fact(f"c{n}", "COUNT", f"sku-{n}", "dc-1", 5 + n, T) for n in range(3)])
    return estate, out, service, client, await wait_for_updates(redis_url, "market", 3)

@contextlib.asynccontextmanager
async def publishing(redis_url: str, out: Path, metrics: PublisherMetrics | None = None,
                     **settings: Any) -> AsyncIterator[aioredis.Redis]:
    """A publisher of ``market`` (group ``jsonl``) to ``out`` running meanwhile (``settings``: its config's others);
    yields a Redis client of the test's."""
    publisher = Publisher(config(channel="market", group="jsonl", **settings), aioredis.Redis.from_url(redis_url),
                          JsonlAdapter(out), metrics or PublisherMetrics())
    task = asyncio.create_task(publisher.run())
    direct = aioredis.Redis.from_url(redis_url)
    try:
        yield direct
    finally:
        publisher.stop()
        await asyncio.wait_for(task, 10)
        await direct.aclose()


async def test_a_plain_restart_of_the_service_is_no_gap_no_warning_and_no_sweep_of_the_state_hash_C3(
        start_service: ServiceFactory, tmp_path: Path, clock: ManualClock, redis_url: str,
        caplog: pytest.LogCaptureFixture) -> None:
    """Defect: every start's jump of the versions read as versions trimmed unread: at every ordinary deploy each
    publisher warned "versions N+1 to F-1 trimmed ... before group ... delivered them" and swept the channel's
    whole state hash (millions of keys), though nothing was lost. The start's first entry now says it follows
    the newest version Redis held: from exactly there, no gap."""
    caplog.set_level(logging.WARNING, logger="publishers")
    estate, out, service, client, before = await three_counted(start_service, tmp_path, clock, redis_url)
    async with publishing(redis_url, out) as direct:
        await _delivered(out, before[-1].sku, before[-1].version)
        await service.stop(grace_s=0.1)
        clock.advance(1000)  # the deploy takes a second
        service, client = await start_service(clock=clock, estate=estate)
        async with monitored(redis_url) as so_far:
            await client.record_events([fact("s1", "SALE", "sku-1", "dc-1", 6, T + 1)])  # a stock-out
            new = (await wait_for_updates(redis_url, "market", 4))[-1]
            await _delivered(out, "sku-1", new.version)
            await _acknowledged(direct)
            commands = await so_far()
    marker = await newest_start(redis_url)
    assert marker.follows == before[-1].version and new.version == marker.version + 1  # the start's jump, linked
    assert marker.version > before[-1].version + 1
    assert delivered(out)["sku-1"] == (0, new.version, "OUT_OF_STOCK")
    assert warnings(caplog) == []
    assert sweeps(commands) == []


async def test_a_publisher_that_read_versions_redis_then_lost_still_owes_them_and_warns_C3(
        start_service: ServiceFactory, tmp_path: Path, clock: ManualClock, redis_url: str,
        caplog: pytest.LogCaptureFixture) -> None:
    """Redis back from older data (its group's position and the stream before the publisher's own) and the service
    started again on it: the start's first entry follows the newest version Redis held, below what this publisher
    read. That is a real loss, not an ordinary restart: warned, and swept for as a gap is."""
    caplog.set_level(logging.WARNING, logger="publishers")
    estate, out, service, client, counted = await three_counted(start_service, tmp_path, clock, redis_url)
    last = counted[-1]
    kept = last.version
    async with publishing(redis_url, out) as direct:
        await _delivered(out, last.sku, kept)
        await _acknowledged(direct)
        image = await saved(direct)
        await client.record_events([fact("s0", "SALE", "sku-0", "dc-1", 5, T + 1)])
        lost = (await wait_for_updates(redis_url, "market", 4))[-1].version
        await _delivered(out, "sku-0", lost)  # the publisher read it: its position is past what Redis keeps
        await _acknowledged(direct)
        await service.stop(grace_s=0.1)
        await restored(direct, image, at_once=True)
        clock.advance(1000)
        service, client = await start_service(clock=clock, estate=estate)
        async with monitored(redis_url) as so_far:
            await client.record_events([fact("t1", "SALE", "sku-1", "dc-1", 6, T + 2)])
            new = (await wait_for_updates(redis_url, "market", 4))[-1]
            await _delivered(out, "sku-1", new.version)
            await until(lambda: warnings(caplog), "the loss warned", 20)
            await _acknowledged(direct)
            commands = await so_far()
    assert (await newest_start(redis_url)).follows == kept
    assert [w for w in warnings(caplog) if f"versions {kept + 1} to {lost} that group jsonl read" in w
            and "Redis lost them" in w], warnings(caplog)
    assert any(c[0].lower() == "hscan" for c in sweeps(commands))
