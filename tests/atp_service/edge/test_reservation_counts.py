"""``atp_reservations_total`` against the real gRPC server and a real Redis: a retried Confirm, Release or Fulfil
(answered from the record, nothing changed: R5) is counted ``replayed`` as a retried Reserve is, not as a second
resolution; a refused unary Reserve is counted ``error`` as a refused ReserveStream item is."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import grpc
import pytest
import redis

from atp_client._client import reserve_request
from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_service import AtpService, ManualClock
from reservation import Reason, State, Unavailable
from tests.atp_service.edge.test_api import T0, stocked
from tests.conftest import ServiceFactory
from tests.waiting import until

OUTCOMES = ("held", "rejected", "confirmed", "released", "fulfilled", "replayed", "error")


def counted(service: AtpService) -> dict[str, float]:
    """``atp_reservations_total`` by outcome, those above 0."""
    registry = service.metrics.registry
    values = {outcome: registry.get_sample_value("atp_reservations_total", {"outcome": outcome}) or 0.0
              for outcome in OUTCOMES}
    return {outcome: value for outcome, value in values.items() if value}


async def _caller_gone_while_writes_wait(redis_url: str, service: AtpService, method: str, call: Callable[[], Any],
                                        decided: Callable[[], Any], what: str) -> None:
    """``call`` (a ``method`` call) made while Redis takes no write, cancelled once ``decided`` (``what``): its change
    decided, waiting to be durable; Redis's writes go on once the service saw its caller go (``CANCELLED``)."""
    registry = service.metrics.registry
    pause = redis.Redis.from_url(redis_url)
    pause.execute_command("CLIENT", "PAUSE", 30_000, "WRITE")  # the change decided, waiting to be durable
    try:
        made = call()
        await until(decided, what, 20)
        made.cancel()
        await until(lambda: registry.get_sample_value("atp_rpc_duration_seconds_count",
                                                      {"method": method, "code": "CANCELLED"}),
                    "the service saw its caller go", 20)
    finally:
        pause.execute_command("CLIENT", "UNPAUSE")
        pause.close()


async def test_retried_resolutions_are_counted_replayed_not_again(start_service: ServiceFactory) -> None:
    service, client = await stocked(start_service, ManualClock(T0))
    await client.reserve("r1", [("A", "S1", 3)])
    await client.reserve("r1", [("A", "S1", 3)])  # a retried Reserve: replayed
    await client.confirm("r1")
    await client.confirm("r1")  # retried: the record answers, nothing changes
    await client.fulfill("r1", [("A", "S1", 1)], operation_id="ship-1")
    await client.fulfill("r1", [("A", "S1", 1)], operation_id="ship-1")
    await client.release("r1")
    rec = await client.release("r1")
    assert (rec.state, rec.lines[0].fulfilled, rec.lines[0].released) == (pb.RESERVATION_STATE_FULFILLED, 1, 2)
    await client.reserve("r2", [("B", "S1", 1)])
    await client.confirm("r2")
    await client.fulfill("r2")
    await client.fulfill("r2")
    assert service.engine is not None and service.engine.place("A") != service.engine.place("D")
    await client.reserve("r3", [("A", "S1", 1), ("D", "DC", 1)])  # changed across its shards (the coordinator)
    await client.confirm("r3")
    await client.confirm("r3")
    assert counted(service) == {"held": 3, "confirmed": 3, "fulfilled": 2, "released": 1, "replayed": 6}


async def test_a_confirm_whose_caller_went_away_is_counted_once_made(start_service: ServiceFactory,
                                                                      redis_url: str) -> None:
    """Its caller gone while the change waited to be durable, a Confirm goes on to its end (R8): before, it was
    counted in the caller's task after the answer, so a change made was never counted (and its retry, answered
    from the record, is ``replayed``: counted nowhere as a confirmation)."""
    service, client = await stocked(start_service, ManualClock(T0))
    await client.reserve("r1", [("A", "S1", 3)])
    assert service.engine is not None
    ledger = service.engine.actors[service.engine.place("A")].ledger
    await _caller_gone_while_writes_wait(
        redis_url, service, "Confirm", lambda: client.stub.Confirm(pb.ConfirmRequest(reservation_id="r1")),
        lambda: (rec := ledger.reservation("r1")) is not None and rec.state == State.CONFIRMED,
        "the confirmation decided")
    await until(lambda: counted(service).get("confirmed") == 1, "the confirmation counted once durable", 20)
    await client.confirm("r1")  # the caller's retry: answered from the record
    assert counted(service) == {"held": 1, "confirmed": 1, "replayed": 1}


@pytest.mark.parametrize("lines", [[("A", "S1", 3)], [("A", "S1", 1), ("D", "DC", 1)]], ids=["one_shard", "across"])
async def test_a_reserve_whose_caller_went_away_is_counted_once_decided(
        start_service: ServiceFactory, redis_url: str, lines: list[tuple[str, str, int]]) -> None:
    """Its caller gone while the hold waited to be durable, a Reserve is decided all the same (R8) and counted
    ``held`` once durable, as a ReserveStream item and a Confirm are: before, a unary Reserve was counted in its
    caller's task after the answer, so a hold made was counted nowhere (its retry, answered from the record:
    ``replayed``)."""
    service, client = await stocked(start_service, ManualClock(T0))
    engine = service.engine
    assert engine is not None and engine.place("A") != engine.place("D")
    await _caller_gone_while_writes_wait(
        redis_url, service, "Reserve", lambda: client.stub.Reserve(reserve_request("r1", lines, ttl_seconds=60)),
        lambda: any(actor.ledger.reservation("r1") for actor in engine.actors), "the hold decided")
    await until(lambda: counted(service).get("held") == 1, "the hold counted once durable", 20)
    assert (await client.reserve("r1", lines, ttl_seconds=60)).state == pb.RESERVATION_STATE_HELD  # from the record
    assert counted(service) == {"held": 1, "replayed": 1}


async def test_a_refused_unary_reserve_is_counted_error_as_a_stream_item_is(start_service: ServiceFactory) -> None:
    service, client = await stocked(start_service, ManualClock(T0))
    await client.reserve("r1", [("A", "S1", 3)])
    with pytest.raises(grpc.aio.AioRpcError) as refused:  # the id claimed by another body
        await client.reserve("r1", [("A", "S1", 4)])
    assert refused.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert service.engine is not None and service.engine.place("A") != service.engine.place("D")
    await client.reserve("x1", [("A", "S1", 1), ("D", "DC", 1)])  # spanning shards: decided by ``reserve``
    answers = [answer async for answer in client.reserve_stream([[
        pb.ReserveRequest(reservation_id="r1", lines=[pb.Line(sku="A", location="S1", quantity=4)]),
        pb.ReserveRequest(reservation_id="x1", lines=[pb.Line(sku="A", location="S1", quantity=2),
                                                     pb.Line(sku="D", location="DC", quantity=1)])]])]
    assert [outcome.WhichOneof("result") for outcome in answers[0].outcomes] == ["error", "error"]
    assert counted(service) == {"held": 2, "error": 3}


def changes_in_flight() -> list[asyncio.Task[object]]:
    """The tasks of Confirm/Release/Fulfil changes (``RecordChanges._resolve``'s) not ended."""
    return [task for task in asyncio.all_tasks()
            if not task.done() and getattr(task.get_coro(), "__qualname__", "") == "RecordChanges.run_on_record"]


async def test_changes_whose_callers_left_before_they_began_do_not_pile_up(start_service: ServiceFactory) -> None:
    """A change across shards whose caller left before its shards were paused for it (the lowest one paused by
    another change, its mailbox full) is given up, as before: nothing of it decided (R8: applied whole or not at
    all). Left running, each caller's retry left one more task waiting for room in that mailbox (``pause`` waits;
    it does not shed), without bound, none of them ended by the engine's stop."""
    service, client = await stocked(start_service, ManualClock(T0), mailbox_size=1)
    engine = service.engine
    assert engine is not None and engine.place("A") != engine.place("D")
    await client.reserve("x1", [("A", "S1", 1), ("D", "DC", 1)])
    lowest = engine.actors[min(engine.place("A"), engine.place("D"))]
    resume = await lowest.pause()  # another change's turn there, going on while the callers come and go
    try:
        callers = [asyncio.ensure_future(engine.confirm("x1")) for _ in range(5)]
        await until(lambda: len(changes_in_flight()) == 5 and len(lowest._mailbox) == 1, "the changes waiting", 20)
        for caller in callers:
            caller.cancel()
        await asyncio.gather(*callers, return_exceptions=True)
        await until(lambda: not changes_in_flight(), "no change left waiting for its caller gone", 20)
    finally:
        resume.set_result(None)
    assert (await client.get_reservation("x1")).state == pb.RESERVATION_STATE_HELD  # none of them decided
    assert (await client.confirm("x1")).state == pb.RESERVATION_STATE_CONFIRMED
    assert counted(service) == {"held": 1, "confirmed": 1}


async def test_a_retried_release_finding_its_hold_past_its_ttl_is_replayed(start_service: ServiceFactory) -> None:
    """A partial Release retried (its ``operation_id`` applied) once its hold's TTL passed: the retry expires the hold
    on the way (R3) and answers it, the release itself done before (R5). It was counted ``released`` again: the
    record it answered is the expired copy, not the one it found (``answer is before``)."""
    clock = ManualClock(T0)
    service, client = await stocked(start_service, clock, maintenance_interval_ms=3_600_000)  # no sweep meanwhile
    assert service.engine is not None and service.engine.place("A") != service.engine.place("D")
    await client.reserve("r1", [("A", "S1", 3)], ttl_seconds=60)
    await client.reserve("x1", [("A", "S1", 1), ("D", "DC", 2)], ttl_seconds=60)  # changed by the coordinator
    await client.release("r1", [("A", "S1", 1)], operation_id="p1")
    await client.release("x1", [("D", "DC", 1)], operation_id="p1")
    clock.advance(61_000)
    for rid in ("r1", "x1"):
        assert (await client.release(rid, [("A", "S1", 1)] if rid == "r1" else [("D", "DC", 1)],
                                     operation_id="p1")).state == pb.RESERVATION_STATE_EXPIRED
    assert counted(service) == {"held": 2, "released": 2, "replayed": 2}


async def test_the_engine_s_stop_answers_the_changes_still_waiting_for_a_shard(start_service: ServiceFactory) -> None:
    """Changes across shards waiting for room in a shard's mailbox (``pause`` waits) when the service stops: the
    shard's stop wakes as many as it refused messages, the rest waited for ever, their callers with them, past the
    engine's stop. Each is answered UNAVAILABLE (shutting down) by the stop, nothing of it decided (R8)."""
    service, client = await stocked(start_service, ManualClock(T0), mailbox_size=1, redis_timeout_s=0.5)
    engine = service.engine
    assert engine is not None and engine.place("A") != engine.place("D")
    await client.reserve("x1", [("A", "S1", 1), ("D", "DC", 1)])
    lowest = engine.actors[min(engine.place("A"), engine.place("D"))]
    await lowest.pause()  # held: the shard's stop gives it up (after its drain's bound)
    callers = [asyncio.ensure_future(engine.confirm("x1")) for _ in range(5)]
    await until(lambda: len(changes_in_flight()) == 5 and len(lowest._mailbox) == 1, "the changes waiting", 20)
    await engine.stop(snapshot=False)
    await until(lambda: all(caller.done() for caller in callers), "every caller answered by the stop", 20)
    answers = await asyncio.gather(*callers, return_exceptions=True)
    assert all(isinstance(answer, Unavailable) and answer.reason == Reason.SHUTTING_DOWN for answer in answers), answers
    assert not changes_in_flight()
    home = engine.home_of("x1")
    assert home is not None and engine.actors[home].ledger.reservation("x1").state == State.HELD  # type: ignore[union-attr]


async def test_a_shard_vacated_answers_the_changes_still_waiting_for_it(start_service: ServiceFactory) -> None:
    """Changes across shards waiting for room in a shard's mailbox (``pause`` waits) when that shard alone is vacated
    (its group handed over or lost, the process going on): its stop wakes as many as it refused messages, the rest
    waited for ever, their callers with them (an engine caller without a deadline for good), the engine's stop far
    off. Each is answered by the vacating, nothing of it decided (R8)."""
    service, client = await stocked(start_service, ManualClock(T0), mailbox_size=1, redis_timeout_s=0.5)
    engine = service.engine
    assert engine is not None and engine.place("A") != engine.place("D")
    await client.reserve("x1", [("A", "S1", 1), ("D", "DC", 1)])
    shard = min(engine.place("A"), engine.place("D"))
    lowest = engine.actors[shard]
    await lowest.pause()  # held: the shard's stop gives it up (after its drain's bound)
    callers = [asyncio.ensure_future(engine.confirm("x1")) for _ in range(5)]
    await until(lambda: len(changes_in_flight()) == 5 and len(lowest._mailbox) == 1, "the changes waiting", 20)
    await engine.vacate(shard, snapshot=False)
    await until(lambda: all(caller.done() for caller in callers), "every caller answered by the vacating", 20)
    answers = await asyncio.gather(*callers, return_exceptions=True)
    assert all(isinstance(answer, Unavailable) for answer in answers), answers
    assert not changes_in_flight()
    assert lowest.ledger.reservation("x1").state == State.HELD  # type: ignore[union-attr]
