"""A Reserve whose turn expired a hold past its TTL (R2, R3), its append refused (Redis full) or in doubt and
not landed: nothing of it stays (R7) — the hold HELD again, its units reserved, its expiry still queued — and
the next Reserve, once Redis takes writes, expires it and takes its units; memory is what a replay of the log
gives (E10)."""

from __future__ import annotations

import asyncio

import grpc
import pytest
import redis

from atp_client import Retryable
from atp_service import ManualClock
from reservation import State
from tests.atp_service.edge.test_api import T0, receipt
from tests.atp_service.engine.test_cancellation import _memory_equals_log
from tests.atp_service.engine.test_expiry_in_doubt import settled
from tests.atp_service.refusals import told
from tests.atp_service.storage.test_redis_full import full_able
from tests.conftest import ServiceFactory
from tests.waiting import answered, until

__all__ = ["full_able"]  # the fixture, shared with test_redis_full

HOUR_MS = 3_600_000


async def test_a_reserve_refused_for_memory_takes_back_the_expiries_of_its_turn_R7(
        full_able: tuple[ServiceFactory, redis.Redis]) -> None:
    start, admin = full_able
    clock = ManualClock(T0)
    service, client = await start(clock=clock, shards=1, maintenance_interval_ms=HOUR_MS)
    engine = service.engine
    assert engine is not None
    ledger = engine.actors[0].ledger
    await client.record_events([receipt("s1", "A", "S1", 10)])
    await client.reserve("r1", [("A", "S1", 10)], ttl_seconds=30)
    clock.advance(30_000)
    admin.config_set("maxmemory", 1)  # full: the Reserve's append is refused, nothing of it applied
    try:
        assert (await told(client.reserve("r2", [("A", "S1", 10)])))[0] == grpc.StatusCode.UNAVAILABLE
        assert ledger.reservations["r1"].state == State.HELD and "r2" not in ledger.reservations
        assert ledger.expiry_due(clock.now_ms())  # still queued: it expires later (R3)
        (a,) = await client.availability([("A", "S1")])
        assert (a.reserved, a.available) == (10, 0)
    finally:
        admin.config_set("maxmemory", 0)
    r3 = await client.reserve("r3", [("A", "S1", 10)])
    assert r3.lines[0].granted == 10, r3
    assert ledger.reservations["r1"].state == State.EXPIRED


async def test_a_reserve_in_doubt_that_did_not_land_takes_back_the_expiries_of_its_turn_R7_E10(
        start_service: ServiceFactory, redis_url: str) -> None:
    """The Reserve's append in doubt (Redis holding writes until its connection times out, then dropping it):
    settled, nothing of it landed — the hold HELD again and due, memory what the log replays (E10) — and the
    next Reserve expires it and takes its units."""
    r = redis.Redis.from_url(redis_url)
    clock = ManualClock(T0)
    service, client = await start_service(clock=clock, shards=1, redis_timeout_s=0.5, maintenance_interval_ms=HOUR_MS)
    engine = service.engine
    assert engine is not None
    actor = engine.actors[0]
    await answered(lambda: client.record_events([receipt("s1", "A", "S1", 10)]))
    await answered(lambda: client.reserve("r1", [("A", "S1", 10)], ttl_seconds=30))
    clock.advance(30_000)
    r.execute_command("CLIENT", "PAUSE", 60_000, "WRITE")
    try:
        reserve = asyncio.ensure_future(client.reserve("r2", [("A", "S1", 10)]))
        await until(lambda: bool(actor._inflight), "the Reserve in flight")
        with pytest.raises(Retryable):  # OUTCOME_UNKNOWN
            await reserve
    finally:
        r.execute_command("CLIENT", "UNPAUSE")
    await settled(engine, actor)
    ledger = actor.ledger
    assert ledger.reservations["r1"].state == State.HELD and "r2" not in ledger.reservations
    assert ledger.expiry_due(clock.now_ms())
    await _memory_equals_log(service, redis_url)
    r3 = await answered(lambda: client.reserve("r3", [("A", "S1", 10)]))  # Redis back: a doubt is retried (R5)
    assert r3.lines[0].granted == 10, r3
    await _memory_equals_log(service, redis_url)
