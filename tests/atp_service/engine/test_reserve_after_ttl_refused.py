"""A Reserve whose turn expired a hold past its TTL (R2, R3), its append refused (Redis full): nothing of it
stays (R7) — the hold HELD again, its units reserved, its expiry still queued — and the next Reserve, once
Redis has room, expires it and takes its units; memory is what a replay of the log gives (E10)."""

from __future__ import annotations

import grpc
import redis

from atp_service import ManualClock
from reservation import State
from tests.atp_service.edge.test_api import T0, receipt
from tests.atp_service.refusals import told
from tests.atp_service.storage.test_redis_full import full_able
from tests.conftest import ServiceFactory

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
