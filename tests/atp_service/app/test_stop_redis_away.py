"""A stop while Redis does not answer: the final snapshots (only to shorten the next start,
everything acknowledged being in the log) must not each wait out the Redis timeout in turn."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

from atp_service import AtpService
from atp_service.storage.embedded_redis import EmbeddedRedis
from tests.atp_service.edge.test_api import receipt
from tests.conftest import services_on
from tests.waiting import answered, until

SHARDS = 8


async def test_a_stop_with_redis_not_answering_tries_one_final_snapshot_not_one_per_shard(tmp_path: Path) -> None:
    """Each shard's final snapshot was tried in turn, each waiting out ``redis_timeout_s`` for a
    Redis that was not answering: a stop took shards x the timeout (64 shards at the default 2 s:
    past the 65 s bound ``serve`` gives it, so logged ``shutdown_overran`` and cut off). Once one
    final snapshot finds Redis not answering, the others are not tried: the next start replays
    their logs, which hold everything acknowledged (R7)."""
    with EmbeddedRedis(tmp_path / "redis") as server:
        async with services_on(server.url, redis_timeout_s=0.5) as start:
            service, client = await start(shards=SHARDS)
            await answered(lambda: client.record_events([receipt(f"stock-{n}", f"SKU-{n}", "DC", 5)
                                                         for n in range(64)]))
            assert service.engine is not None
            written = [actor for actor in service.engine.actors if actor.seq > 0]
            assert len(written) > 2, "the facts reach several shards, each with a snapshot to write"
            before = _snapshot_failures(service)
            await stopped_with_redis_paused(server, service)
            assert _snapshot_failures(service) - before == 1, "one final snapshot tried, the others left to the log"
        async with services_on(server.url) as start:  # nothing acknowledged lost: the logs replayed
            _, client = await start(shards=SHARDS)
            answers = await client.availability([(f"SKU-{n}", "DC") for n in range(64)])
            assert [a.on_hand for a in answers] == [5] * 64


def _snapshot_failures(service: AtpService) -> float:
    value = service.metrics.registry.get_sample_value("atp_snapshot_failures_total")
    assert value is not None, "the counter is exported from the start"
    return value


async def test_a_stop_with_redis_not_answering_stops_every_shard_at_once(tmp_path: Path) -> None:
    """Each shard drains its writes in flight for up to 2 x ``redis_timeout_s`` before it stops; one
    after another, a Redis that answered nothing made a stop take shards x that (64 shards: minutes,
    cut off past ``serve``'s bound). They stop together: every shard is stopping while the first
    still waits (here 2 x 30 s: the test would wait a minute for the second one otherwise)."""
    with EmbeddedRedis(tmp_path / "redis") as server:
        async with services_on(server.url, redis_timeout_s=30) as start:
            service, client = await start(shards=SHARDS)
            assert service.engine is not None
            actors = service.engine.actors
            skus = _one_sku_per_shard(service, len(actors))
            assert server.process is not None
            os.kill(server.process.pid, signal.SIGSTOP)  # every shard's next append waits on Redis
            calls = [asyncio.ensure_future(client.record_events([receipt(f"r-{n}", sku, "DC", 1)]))
                     for n, sku in enumerate(skus)]
            try:
                await until(lambda group=actors: all(actor._inflight for actor in group), "writes in flight everywhere")
                stopping = asyncio.ensure_future(service.engine.stop(snapshot=False))  # the shards' part of a stop
                await until(lambda group=actors: all(actor._stopping for actor in group), "every shard stopping")
            finally:
                os.kill(server.process.pid, signal.SIGCONT)
            await stopping
            await asyncio.gather(*calls, return_exceptions=True)


def _one_sku_per_shard(service: AtpService, shards: int) -> list[str]:
    assert service.engine is not None
    found: dict[int, str] = {}
    for n in range(10_000):
        found.setdefault(service.engine.place(f"SKU-{n}"), f"SKU-{n}")
        if len(found) == shards:
            return list(found.values())
    raise AssertionError("no SKU for some shard")


async def stopped_with_redis_paused(server: EmbeddedRedis, service: AtpService) -> None:
    """``service`` stopped while ``server`` takes connections and answers nothing (SIGSTOP), then resumed."""
    assert server.process is not None
    os.kill(server.process.pid, signal.SIGSTOP)
    try:
        await service.stop(grace_s=0.1)
    finally:
        os.kill(server.process.pid, signal.SIGCONT)
