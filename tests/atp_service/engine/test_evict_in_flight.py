"""Retention (R5) against a batch in flight (R7): a resolved record is forgotten only once the entry
that resolved it is durable. Real Redis behind a proxy that holds the append, real gRPC service."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import grpc
import pytest

from atp_client import AtpClient
from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_service import AtpService, EmbeddedRedis, ManualClock
from atp_service.engine.messages import InFlight
from atp_service.engine.pipeline import CommitPipeline
from atp_service.metrics import EngineMetrics
from atp_service.storage.scripts import APPEND_SCRIPT
from reservation import Ledger, Limits, Reservation
from reservation._model import State
from tests.atp_service.edge.test_api import T0, receipt
from tests.atp_service.redis_proxy import HoldingProxy
from tests.atp_service.refusals import said
from tests.conftest import test_config as service_config
from tests.waiting import until

APPEND_SHA = hashlib.sha1(APPEND_SCRIPT.encode()).hexdigest().encode()  # a group commit on the wire


@asynccontextmanager
async def _service(redis_server: EmbeddedRedis, clock: ManualClock
                   ) -> AsyncIterator[tuple[HoldingProxy, AtpService, AtpClient]]:
    """One shard, resolved records kept 1 ms (``retention_ms``), writes through a proxy; a held append
    waits for the test's cue (``redis_timeout_s`` far longer than the test)."""
    proxy = HoldingProxy("127.0.0.1", redis_server.port)
    service = AtpService(service_config(shards=1, redis_timeout_s=30.0, limits=Limits(retention_ms=1)),
                         await proxy.start(), clock=clock)
    client: AtpClient | None = None
    try:
        await service.start()
        client = AtpClient(f"127.0.0.1:{service.port}", timeout_s=30)
        yield proxy, service, client
    finally:
        if client is not None:
            await client.close()
        await service.stop(grace_s=0.1)
        await proxy.close()


async def _no_maintenance_due(service: AtpService) -> None:
    """Nothing for a maintenance turn (the first facts make a compaction pass due): one taken while the
    append is held would drain first, holding up the housekeeping turn behind it until the append ends."""
    actor = service.engine.actors[0]  # type: ignore[union-attr]
    await until(lambda: not actor._maintain_queued and not actor._wants_maintenance(), "no maintenance due")


async def _housekept_then_dropped(proxy: HoldingProxy, service: AtpService, clock: ManualClock,
                                  call: asyncio.Future[object],
                                  monkeypatch: pytest.MonkeyPatch) -> grpc.aio.AioRpcError:
    """With ``call``'s append held, the record it resolved past its retention: a housekeeping turn runs
    (the batch after it, while it is in flight); then the append never arrives. Returns the caller's
    refusal once the shard has settled."""
    await until(lambda: len(proxy.held) == 1, "the append held")
    engine = service.engine
    assert engine is not None
    housekept: list[int] = []
    work = engine._housekeeper._expire_work

    def noted(ledger: Ledger, now: int) -> None:
        work(ledger, now)
        housekept.append(now)

    monkeypatch.setattr(engine._housekeeper, "_expire_work", noted)
    clock.advance(2)  # past retention_ms
    await until(lambda: any(now >= T0 + 2 for now in housekept), "a housekeeping turn past the retention")
    assert engine.actors[0]._inflight, "the append is still in flight"
    proxy.hold()
    proxy.drop()
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await asyncio.wait_for(call, 20)
    await until(lambda: not engine.actors[0].in_doubt, "the shard settled")
    return refused.value


async def test_a_refused_reserve_forgotten_while_its_append_is_in_flight_is_taken_back_cleanly_R5_R7(
        redis_url: str, redis_server: EmbeddedRedis, monkeypatch: pytest.MonkeyPatch) -> None:
    """A refused Reserve leaves a record (R5), resolved at once: with a short retention the
    housekeeping turn after it forgot it while its append was still in flight. The append then
    failed, and taking the batch back deleted the record a second time: a KeyError inside the
    shard's revert, which stopped half-way — the caller never answered, the batch neither undone
    nor settled."""
    clock = ManualClock(T0)
    async with _service(redis_server, clock) as (proxy, service, client):
        await client.record_events([receipt("stock", "A", "DC", 1)])
        await _no_maintenance_due(service)
        proxy.hold(APPEND_SHA)
        call = asyncio.ensure_future(client.reserve("refused", [("A", "DC", 5)], ttl_seconds=600))
        refusal = await _housekept_then_dropped(proxy, service, clock, call, monkeypatch)
        assert said(refusal) == (grpc.StatusCode.UNAVAILABLE, "OUTCOME_UNKNOWN")
        actor = service.engine.actors[0]  # type: ignore[union-attr]
        assert actor.failure is None and not actor._inflight
        again = await client.reserve("refused", [("A", "DC", 5)], ttl_seconds=600)  # decided anew: never landed
        assert again.state == pb.RESERVATION_STATE_REJECTED
        held = await client.reserve("fits", [("A", "DC", 1)], ttl_seconds=600)
        assert held.state == pb.RESERVATION_STATE_HELD
        (q,) = await client.availability([("A", "DC")])
        assert (q.on_hand, q.reserved, q.available) == (1, 1, 0)


async def test_a_release_forgotten_while_its_append_is_in_flight_leaves_the_hold_found_R5_R7(
        redis_url: str, redis_server: EmbeddedRedis, monkeypatch: pytest.MonkeyPatch) -> None:
    """A Release whose append failed is taken back: the hold is HELD again, its units reserved. With a
    short retention the housekeeping turn after the Release forgot the released record — and its
    route — while the append was in flight: once taken back, the hold was in memory, its units
    reserved, but Confirm, Release and GetReservation answered NOT_FOUND (until a restart found it)."""
    clock = ManualClock(T0)
    async with _service(redis_server, clock) as (proxy, service, client):
        await client.record_events([receipt("stock", "A", "DC", 3)])
        await client.reserve("hold", [("A", "DC", 2)], ttl_seconds=600)
        await _no_maintenance_due(service)
        proxy.hold(APPEND_SHA)
        call = asyncio.ensure_future(client.release("hold"))
        refusal = await _housekept_then_dropped(proxy, service, clock, call, monkeypatch)
        assert said(refusal) == (grpc.StatusCode.UNAVAILABLE, "OUTCOME_UNKNOWN")
        assert (await client.get_reservation("hold")).state == pb.RESERVATION_STATE_HELD
        (q,) = await client.availability([("A", "DC")])
        assert (q.reserved, q.available) == (2, 1)
        assert (await client.confirm("hold")).state == pb.RESERVATION_STATE_CONFIRMED
        (q,) = await client.availability([("A", "DC")])
        assert (q.reserved, q.committed, q.available) == (0, 2, 1)


async def test_in_flight_since_is_the_oldest_stamp_of_a_record_an_entry_in_flight_saves_R5_R7() -> None:
    """An order's saga stamps its decision with the clock it read, and a later turn saves it: the entry's
    time is after the record's ``updated_at``, and retention must keep the record until the entry lands."""
    ledger = Ledger(0, Limits(retention_ms=10))
    pipeline = CommitPipeline(0, ledger, None, 0, EngineMetrics())  # type: ignore[arg-type]  # nothing appended
    assert pipeline.in_flight_since() is None
    decided = Reservation("order", "", "", 600_000, False, State.RELEASED, (), 1_000, 0, 2_000)
    ledger.save(decided)
    entry, undo, moved = ledger.seal(2_050)
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()  # never settled here
    pipeline._inflight.append(InFlight(1, entry, b"", undo, moved, [], done))
    assert pipeline.in_flight_since() == 2_000
    assert ledger.evict(2_050, unsure_from=pipeline.in_flight_since()) == []
