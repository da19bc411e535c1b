"""Hold expiry (R3) while a write naming the hold is in doubt (R7), on a real service and Redis."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis

from atp_client import Retryable
from atp_service import ManualClock
from reservation import State
from tests.atp_service.edge.test_api import T0, receipt
from tests.atp_service.storage.test_redis_full import full_able
from tests.conftest import ServiceFactory
from tests.waiting import answered, until

__all__ = ["full_able"]  # the fixture, shared with test_redis_full



async def test_a_hold_whose_confirm_did_not_land_while_its_ttl_passed_still_expires_R3_R7(
        start_service: ServiceFactory, redis_url: str) -> None:
    """A Confirm's append in doubt (Redis holding writes) while the hold's TTL passes: the housekeeping
    turn that ran meanwhile found the hold CONFIRMED in memory and dropped its expiry entry. The
    Confirm did not land (Redis drops a paused write whose connection timed out) and was taken back:
    the hold was HELD again with no entry left to expire it, so its units stayed reserved, without any
    request, until a restart (which expires it: live and restored disagreed, E10). It expires.
    Housekeeping passes are run by the test (the timer's is an hour): the pass's expiry turn is
    queued before its maintenance turn, whose drain would otherwise wait for the append first."""
    r = redis.Redis.from_url(redis_url)
    clock = ManualClock(T0)
    service, client = await start_service(clock=clock, shards=1, redis_timeout_s=0.5,
                                          maintenance_interval_ms=3_600_000)
    engine = service.engine
    assert engine is not None
    await answered(lambda: client.record_events([receipt("stock", "A", "S1", 5)]))
    await answered(lambda: client.reserve("r1", [("A", "S1", 2)], order_ref="o", channel="web", ttl_seconds=60))
    actor = engine.actors[engine.place("A")]
    r.execute_command("CLIENT", "PAUSE", 60_000, "WRITE")  # the Confirm's append waits, then times out
    try:
        confirm = asyncio.ensure_future(client.confirm("r1"))
        await until(lambda: bool(actor._inflight), "the Confirm in flight")
        clock.advance(60_000)  # the TTL passes while the Confirm is in flight
        pass_ = asyncio.ensure_future(engine.run_maintenance())  # its expiry turn: behind the Confirm
        await until(lambda: not actor.ledger.housekeeping_due(clock.now_ms()), "the hold's expiry entry taken")
        await pass_  # (its turn's answer waits for the Confirm's append, and fails with it)
        with pytest.raises(Retryable):  # OUTCOME_UNKNOWN
            await confirm
    finally:
        r.execute_command("CLIENT", "UNPAUSE")
    await settled(engine, actor)
    assert actor.ledger.reservations["r1"].state == State.HELD  # the Confirm did not land

    for _ in range(50):  # housekeeping passes, each free to expire it
        await engine.run_maintenance()
        (a,) = await client.availability([("A", "S1")])
        if a.reserved == 0:
            break
    assert a.reserved == 0, "the hold's units still reserved 50 passes after its TTL passed (R3)"
    assert a.available == 5 and actor.ledger.reservations["r1"].state == State.EXPIRED


async def test_expiry_turns_refused_while_redis_is_full_leave_one_entry_per_hold_R3(
        full_able: tuple[ServiceFactory, redis.Redis]) -> None:
    """Every housekeeping pass while Redis refuses writes (full: OOM) expires a due hold and takes it
    back. Each taking back pushed the hold's expiry entry twice (``due``'s requeue and ``held_again``)
    and the next pass popped both and requeued both again, plus one: the heap grew by an entry per
    due hold per pass for as long as Redis stayed full (the sweep keeps twins: each names a live hold),
    and each turn's ``EXPIRE_PER_TURN`` was spent on twins. The entries per hold stay bounded, and the
    hold expires once Redis has room."""
    start, admin = full_able
    clock = ManualClock(T0)
    service, client = await start(clock=clock, shards=1, maintenance_interval_ms=3_600_000)
    engine = service.engine
    assert engine is not None
    await client.record_events([receipt("stock", "A", "S1", 5)])
    await client.reserve("r1", [("A", "S1", 2)], order_ref="o", channel="web", ttl_seconds=60)
    actor = engine.actors[engine.place("A")]
    clock.advance(60_000)
    admin.config_set("maxmemory", 1)  # full: each expiry turn's append is refused, its change taken back
    try:
        for _ in range(20):
            await engine.run_maintenance()
        entries = [rid for _, rid in actor.ledger._expiry if rid == "r1"]
        assert len(entries) <= 2, f"{len(entries)} expiry entries for one hold after 20 refused passes"
    finally:
        admin.config_set("maxmemory", 0)
    for _ in range(50):
        await engine.run_maintenance()
        (a,) = await client.availability([("A", "S1")])
        if a.reserved == 0:
            break
    assert a.reserved == 0 and actor.ledger.reservations["r1"].state == State.EXPIRED


async def settled(engine: Any, actor: Any) -> None:
    """Maintenance turns until ``actor``'s doubt is settled (Redis answering again): within a bound."""
    for _ in range(200):
        if not actor.in_doubt and not actor._inflight:
            break
        await engine.run_maintenance()
        await asyncio.sleep(0.05)
    assert not actor.in_doubt
