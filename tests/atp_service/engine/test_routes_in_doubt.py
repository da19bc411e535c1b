"""Routes kept while their home shard is in doubt (``Routes.forget_if_unheld``) are forgotten once the
doubt is settled, on a real service and Redis: a Reserve refused then made no record, and its route
must not outlive the doubt."""

from __future__ import annotations

import asyncio

import pytest
import redis

from atp_client import Retryable
from tests.atp_service.edge.test_api import receipt
from tests.atp_service.engine.test_expiry_in_doubt import settled
from tests.conftest import ServiceFactory
from tests.waiting import answered, until


async def test_reserves_refused_while_their_shard_is_in_doubt_leave_no_route_once_it_settles(
        start_service: ServiceFactory, redis_url: str) -> None:
    """An append in doubt (Redis holding writes): every Reserve for the shard meanwhile is refused at
    once, and its route was kept (the record might yet be found in the log) — but no entry of it exists,
    so no settle ever told the routes to forget it. One route leaked per refused Reserve, for the life
    of the process (single-process mode never drops a shard's routes), and in leased mode they were
    what a group moving away had to sweep (2882194's sliced drop left them: a process then forwarded
    GetReservation by them to a group's new owner, which answered "not held here", for good)."""
    r = redis.Redis.from_url(redis_url)
    service, client = await start_service(shards=1, redis_timeout_s=0.5, maintenance_interval_ms=3_600_000)
    engine = service.engine
    assert engine is not None
    await answered(lambda: client.record_events([receipt("stock", "A", "S1", 50)]))
    await answered(lambda: client.reserve("kept", [("A", "S1", 1)], ttl_seconds=600))
    actor = engine.actors[0]
    r.execute_command("CLIENT", "PAUSE", 60_000, "WRITE")  # the next append waits, then times out
    try:
        first = asyncio.ensure_future(client.reserve("r-doubt", [("A", "S1", 1)], ttl_seconds=600))
        await until(lambda: actor.in_doubt, "the shard in doubt")
        for n in range(5):  # refused at once: the shard takes no work until the doubt is settled
            with pytest.raises(Retryable):
                await client.reserve(f"r-refused-{n}", [("A", "S1", 1)], ttl_seconds=600)
        with pytest.raises(Retryable):
            await first
    finally:
        r.execute_command("CLIENT", "UNPAUSE")
    await settled(engine, actor)
    recorded = set(actor.ledger.reservations)
    assert "kept" in recorded
    orphans = {rid for rid in engine.routes.homes if rid not in recorded}
    assert not orphans, f"routes to no record outlived the doubt: {sorted(orphans)}"
    assert not engine.routes.attempts
