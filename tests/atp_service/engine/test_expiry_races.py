"""Hold expiry (R3) racing Confirm and Release while their writes are in doubt (R7), across shards
too, on a real service and a real redis-server (held with CLIENT PAUSE WRITE, or frozen by SIGSTOP)."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from atp_client import Conflict, Retryable
from atp_service import AtpService, EmbeddedRedis, ManualClock
from reservation import State
from tests.atp_service.edge.test_api import T0, receipt
from tests.atp_service.engine.test_cancellation import _memory_equals_log
from tests.atp_service.engine.test_expiry_in_doubt import settled
from tests.conftest import ServiceFactory
from tests.waiting import answered, until


def _two_shards(service: AtpService) -> tuple[str, str]:
    """Two SKUs on different shards, the first on the lower one."""
    engine = service.engine
    assert engine is not None
    found: dict[int, str] = {}
    for i in range(1000):
        found.setdefault(engine.place(f"SKU-{i}"), f"SKU-{i}")
        if len(found) == 2:
            break
    first, second = (found[s] for s in sorted(found))
    return first, second


async def _started(start_service: ServiceFactory, shards: int,
                   **extra: Any) -> tuple[ManualClock, AtpService, Any, Any]:
    """A service on a manual clock whose housekeeping runs only when a test says: clock, service, client, engine."""
    clock = ManualClock(T0)
    service, client = await start_service(clock=clock, shards=shards, maintenance_interval_ms=3_600_000, **extra)
    assert service.engine is not None
    return clock, service, client, service.engine


async def _spanning_hold(service: AtpService, client: Any) -> tuple[str, str]:
    """5 units of two SKUs on two shards, and hold r1 of 2 and 3 of them (TTL 60 s): the SKUs."""
    a, b = _two_shards(service)
    await answered(lambda: client.record_events([receipt("s-a", a, "S1", 5), receipt("s-b", b, "S1", 5)]))
    await answered(lambda: client.reserve("r1", [(a, "S1", 2), (b, "S1", 3)], order_ref="o", channel="web",
                                          ttl_seconds=60))
    return a, b


@pytest.fixture
def frozen(redis_server: EmbeddedRedis) -> Iterator[Any]:
    """``freeze(on)``: the session's redis-server stopped (SIGSTOP) or let go on (SIGCONT); let go at the end."""
    assert redis_server.process is not None
    pid = redis_server.process.pid

    def freeze(on: bool) -> None:
        os.kill(pid, signal.SIGSTOP if on else signal.SIGCONT)

    try:
        yield freeze
    finally:
        freeze(False)


async def _expired_everywhere(service: AtpService, client: Any, keys: list[tuple[str, str]], stock: int) -> None:
    """Housekeeping passes until nothing is reserved at ``keys`` (within a bound): then each shows its whole stock."""
    engine = service.engine
    assert engine is not None
    for _ in range(100):
        await engine.run_maintenance()
        shown = await client.availability(keys)
        if all(a.reserved == 0 for a in shown):
            break
        await asyncio.sleep(0.01)
    assert [(a.reserved, a.committed, a.available) for a in shown] == [(0, 0, stock)] * len(keys), shown


async def test_a_composite_hold_whose_confirm_did_not_land_while_its_ttl_passed_expires_on_every_shard_R3_R7(
        start_service: ServiceFactory, redis_url: str) -> None:
    """A hold spanning two shards; its Confirm's coordinated append held by Redis while the TTL passes and
    a housekeeping pass runs (its expiry turn finds the hold CONFIRMED in memory). The Confirm does not
    land: the hold is HELD again on its home shard, and it expires, giving back its units on both shards."""
    r = redis.Redis.from_url(redis_url)
    clock, service, client, engine = await _started(start_service, 2, redis_timeout_s=0.5)
    a, b = await _spanning_hold(service, client)
    home = engine.actors[engine.home_of("r1")]
    r.execute_command("CLIENT", "PAUSE", 60_000, "WRITE")
    try:
        confirm = asyncio.ensure_future(client.confirm("r1"))
        await until(lambda: bool(home._inflight), "the Confirm in flight")
        clock.advance(60_000)
        pass_ = asyncio.ensure_future(engine.run_maintenance())
        await until(lambda: not home.ledger.housekeeping_due(clock.now_ms()), "the hold's expiry entry taken")
        await pass_
        with pytest.raises(Retryable):
            await confirm
    finally:
        r.execute_command("CLIENT", "UNPAUSE")
    for actor in engine.actors:
        await settled(engine, actor)
    assert home.ledger.reservations["r1"].state == State.HELD
    await _expired_everywhere(service, client, [(a, "S1"), (b, "S1")], 5)
    assert home.ledger.reservations["r1"].state == State.EXPIRED
    with pytest.raises(Conflict):
        await client.confirm("r1")
    await _memory_equals_log(service, redis_url)


async def test_an_expiry_in_flight_when_redis_freezes_and_a_confirm_arrives_resolves_the_hold_once_R3_R7(
        start_service: ServiceFactory, redis_url: str, frozen: Any) -> None:
    """Redis frozen (SIGSTOP) with a hold's expiry in flight; a Confirm arrives meanwhile, decided on the
    expired hold. The expiry's append times out (it may land when Redis goes on): whatever landed, the hold
    is resolved once — EXPIRED, never CONFIRMED — its units given back once, and memory equals the log."""
    clock, service, client, engine = await _started(start_service, 1, redis_timeout_s=0.3)
    await answered(lambda: client.record_events([receipt("stock", "A", "S1", 5)]))
    await answered(lambda: client.reserve("r1", [("A", "S1", 2)], order_ref="o", channel="web", ttl_seconds=60))
    actor = engine.actors[0]
    clock.advance(60_000)
    frozen(True)
    try:
        pass_ = asyncio.ensure_future(engine.run_maintenance())
        await until(lambda: bool(actor._inflight), "the expiry in flight")
        confirm = asyncio.ensure_future(client.confirm("r1"))
        await until(lambda: actor.in_doubt, "the expiry's append in doubt")
        with pytest.raises((Retryable, Conflict)):
            await confirm
    finally:
        frozen(False)
    await pass_
    await settled(engine, actor)
    await _expired_everywhere(service, client, [("A", "S1")], 5)
    assert actor.ledger.reservations["r1"].state == State.EXPIRED
    with pytest.raises(Conflict):
        await client.confirm("r1")
    await _memory_equals_log(service, redis_url)


async def test_a_composite_expiry_in_flight_when_redis_freezes_lands_or_not_on_every_shard_alike_R3_R7(
        start_service: ServiceFactory, redis_url: str, frozen: Any) -> None:
    """A hold spanning two shards expires by a coordinated change; Redis freezes with it in flight and a
    Confirm of the hold arrives. Both shards settle to the same outcome (their parts land together or not at
    all), the hold is resolved once (EXPIRED), its units given back once on each shard."""
    clock, service, client, engine = await _started(start_service, 2, redis_timeout_s=0.3)
    a, b = await _spanning_hold(service, client)
    clock.advance(60_000)
    frozen(True)
    try:
        await engine.run_maintenance()  # spawns the coordinated expiry
        await until(lambda: all(actor._inflight for actor in engine.actors), "the expiry in flight on both")
        confirm = asyncio.ensure_future(client.confirm("r1"))
        await until(lambda: all(actor.in_doubt for actor in engine.actors), "the expiry in doubt on both")
        with pytest.raises((Retryable, Conflict)):
            await confirm
    finally:
        frozen(False)
    for actor in engine.actors:
        await settled(engine, actor)
    await _expired_everywhere(service, client, [(a, "S1"), (b, "S1")], 5)
    home = engine.actors[engine.home_of("r1")]
    assert home.ledger.reservations["r1"].state == State.EXPIRED
    with pytest.raises(Conflict):
        await client.confirm("r1")
    await _memory_equals_log(service, redis_url)


async def test_a_release_retried_after_a_freeze_whose_first_try_landed_answers_it_and_frees_units_once_R5_R7(
        start_service: ServiceFactory, redis_url: str, frozen: Any) -> None:
    """A partial Release in flight when Redis freezes (its answer lost: OUTCOME_UNKNOWN), the TTL passing
    meanwhile; retried after: answered as applied (or applied now), and the rest of the hold expires. Units are
    given back once whatever landed: nothing released twice."""
    clock, service, client, engine = await _started(start_service, 1, redis_timeout_s=0.3)
    await answered(lambda: client.record_events([receipt("stock", "A", "S1", 5)]))
    await answered(lambda: client.reserve("r1", [("A", "S1", 3)], order_ref="o", channel="web", ttl_seconds=60))
    actor = engine.actors[0]
    frozen(True)
    try:
        release = asyncio.ensure_future(client.release("r1", [("A", "S1", 1)], operation_id="op1"))
        await until(lambda: actor.in_doubt, "the Release in doubt")
        with pytest.raises(Retryable):
            await release
        clock.advance(60_000)
    finally:
        frozen(False)
    await settled(engine, actor)
    try:
        rec = await answered(lambda: client.release("r1", [("A", "S1", 1)], operation_id="op1"))
        assert rec.state in (State.EXPIRED, State.HELD)
    except Conflict:  # the first try did not land: the hold had expired by the retry
        assert actor.ledger.reservations["r1"].ops == {}
    await _expired_everywhere(service, client, [("A", "S1")], 5)
    assert actor.ledger.reservations["r1"].state == State.EXPIRED
    await _memory_equals_log(service, redis_url)


async def test_holds_expired_while_the_service_was_down_are_released_once_across_two_restarts_R3_E10(
        start_service: ServiceFactory) -> None:
    """Holds (one shard, and across shards) whose TTL passed while the service was down expire after the
    restart; a second restart replays that expiry: units given back once, the records as the first restart
    left them."""
    clock = ManualClock(T0)
    service, client = await start_service(clock=clock, shards=2, maintenance_interval_ms=3_600_000)
    a, b = _two_shards(service)
    await client.record_events([receipt("s-a", a, "S1", 5), receipt("s-b", b, "S1", 5)])
    await client.reserve("r1", [(a, "S1", 2), (b, "S1", 3)], ttl_seconds=60)
    await client.reserve("r2", [(a, "S1", 1)], ttl_seconds=60)
    await client.reserve("r3", [(b, "S1", 1)], ttl_seconds=600)
    await client.confirm("r3")
    await service.stop(grace_s=0.1)
    clock.advance(120_000)
    service, client = await start_service(clock=clock, shards=2, maintenance_interval_ms=3_600_000)
    engine = service.engine
    assert engine is not None
    for _ in range(50):
        await engine.run_maintenance()
        shown = await client.availability([(a, "S1"), (b, "S1")])
        if shown[0].reserved == 0 and shown[1].reserved == 0:
            break
        await asyncio.sleep(0.01)
    before = {rid: engine.actors[engine.home_of(rid)].ledger.reservations[rid]  # type: ignore[index]
              for rid in ("r1", "r2", "r3")}
    assert [before[rid].state for rid in ("r1", "r2", "r3")] == [State.EXPIRED, State.EXPIRED, State.CONFIRMED]
    await service.stop(grace_s=0.1)
    service, client = await start_service(clock=clock, shards=2, maintenance_interval_ms=3_600_000)
    engine = service.engine
    assert engine is not None
    await engine.run_maintenance()
    after = {rid: engine.actors[engine.home_of(rid)].ledger.reservations[rid]  # type: ignore[index]
             for rid in ("r1", "r2", "r3")}
    assert after == before
    shown = await client.availability([(a, "S1"), (b, "S1")])
    assert [(x.reserved, x.committed, x.available) for x in shown] == [(0, 0, 5), (0, 1, 4)]
