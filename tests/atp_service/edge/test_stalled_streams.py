"""Streams whose callers stop reading, against the real gRPC server and Redis: after ``stream_stall_s``
without a reply written the stream ends with a status naming the limit, its place is freed, the stall
is counted, and what a ReserveStream had decided is durable and whole (R7, R8)."""

from __future__ import annotations

import asyncio
import contextlib

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2_grpc
from prometheus_client import CollectorRegistry, Counter

from atp_client import AtpClient, Retryable, typed
from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_client.pb.atp.v1 import atp_pb2_grpc as pb_grpc
from atp_service.app.service import AtpService
from atp_service.edge import stalls
from atp_service.edge.stalls import StallLimit
from tests.atp_service.edge.test_api import receipt
from tests.conftest import ServiceFactory
from tests.waiting import until

STALL_S = 1.0
END_WAIT_S = 1.0
"""``stalls.END_WAIT_S`` (5 s) for a caller that reads nothing until the stalled stream's place is freed: its
status can never be queued behind the replies, so the stall's end waits it out every time, then cancels the
call's task. 1 s ends the stream the same way, 4 s sooner; either end the caller then reads (the status, or
grpc.aio's INTERNAL) is checked as before."""
BATCH = 100
STOCK = 1_000_000  # max_quantity: more than the batches the buffers hold


def _batch(n: int) -> pb.ReserveStreamRequest:
    return pb.ReserveStreamRequest(reservations=[pb.ReserveRequest(
        reservation_id=_rid(n, i), lines=[pb.Line(sku="A", location="S1", quantity=1)]) for i in range(BATCH)])


def _rid(batch: int, item: int) -> str:
    return f"stall-{batch}-{item}"


def _stalled(service: AtpService, method: str) -> float:
    return service.metrics.edge.streams_stalled.labels(method).value


async def _found(client: AtpClient, rid: str) -> bool:
    try:
        await client.get_reservation(rid)
    except grpc.aio.AioRpcError as exc:
        assert exc.code() == grpc.StatusCode.NOT_FOUND, exc
        return False
    return True


async def test_a_reserve_stream_not_read_ends_and_keeps_what_it_decided(
        start_service: ServiceFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stalls, "END_WAIT_S", END_WAIT_S)
    service, client = await start_service(max_reserve_streams=1, stream_stall_s=STALL_S)
    assert (await client.record_events([receipt("seed", "A", "S1", STOCK)]))[0].outcome == pb.FACT_OUTCOME_APPLIED
    # A caller that writes batches and never reads their answers (no BDP probing: its window stays small).
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{service.port}", options=[("grpc.http2.bdp_probe", 0)])
    call = pb_grpc.AvailabilityServiceStub(channel).ReserveStream()  # type: ignore[no-untyped-call]
    written = 0

    async def write_until_refused() -> None:
        nonlocal written
        with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError):
            while True:
                await call.write(_batch(written))
                written += 1

    writer = asyncio.ensure_future(write_until_refused())  # not cancelled: that would cancel the call
    await until(lambda: _stalled(service, "ReserveStream") == 1, "the unread stream ended as stalled", 60)
    await until(lambda: service._servicer.reserve_streams == 0, "the stalled stream's place freed", 60)
    answered = 0
    with pytest.raises(grpc.aio.AioRpcError) as ended:
        while True:
            answer = await call.read()
            assert answer is not grpc.aio.EOF, "the stalled stream ended OK"  # type: ignore[attr-defined]
            assert all(outcome.HasField("response") for outcome in answer.outcomes)
            answered += 1
    refusal = typed(ended.value)
    assert isinstance(refusal, Retryable), refusal  # in doubt: the caller retries with the same ids (R5)
    if ended.value.code() == grpc.StatusCode.UNAVAILABLE:  # else grpc.aio's INTERNAL: its pending write failed
        assert refusal.reason == "OUTCOME_UNKNOWN" and refusal.refusal.metadata == {"limit": "stream_stall_s"}
    await asyncio.wait_for(writer, 60)  # its last write refused once the call has ended
    await channel.close(None)
    # Every batch the service read was decided whole (R8) and durably (R7): the held units are
    # whole batches, from the first one written on, the answered ones among them.
    held = (await client.availability([("A", "S1")]))[0].reserved
    decided, part = divmod(held, BATCH)
    assert part == 0 and answered <= decided <= written, (held, answered, written)
    assert await _found(client, _rid(decided - 1, 0)) and await _found(client, _rid(decided - 1, BATCH - 1))
    assert not await _found(client, _rid(decided, 0)) and not await _found(client, _rid(decided, BATCH - 1))
    # The place is free: a new stream is taken and answered.
    async for result in client.reserve_stream([[pb.ReserveRequest(reservation_id="after", lines=[
            pb.Line(sku="A", location="S1", quantity=1)])]]):
        assert result.outcomes[0].HasField("response")


async def test_the_open_services_streams_are_bounded_in_number(start_service: ServiceFactory) -> None:
    """Health.Watch and reflection streams need no token: at ``max_open_service_streams`` more are
    refused CAPACITY_REACHED naming the limit (counted), and a place frees as one ends."""
    service, client = await start_service(max_open_service_streams=2)
    health = health_pb2_grpc.HealthStub(client.channel)
    watches = [health.Watch(health_pb2.HealthCheckRequest()) for _ in range(2)]
    for watch in watches:
        assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING
    # The reflection stream opened with no requests: a request written races the refusal, and one
    # written after it ended is told INTERNAL "Internal error from Core" by grpcio (grpc/grpc#36066).
    refused = [health.Watch(health_pb2.HealthCheckRequest()),
               reflection_pb2_grpc.ServerReflectionStub(client.channel).ServerReflectionInfo(iter(()))]
    for call in refused:
        with pytest.raises(grpc.aio.AioRpcError) as ended:
            await call.read()
        refusal = typed(ended.value)
        assert (ended.value.code(), refusal.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "CAPACITY_REACHED")
        assert refusal.refusal.metadata == {"limit": "max_open_service_streams"}, refusal
    assert service.metrics.edge.capacity_refusals.labels("max_open_service_streams").value == 2
    watches[0].cancel()

    async def one_more_is_taken() -> bool:
        call = health.Watch(health_pb2.HealthCheckRequest())
        try:
            await call.read()
        except grpc.aio.AioRpcError as exc:
            assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, exc
            return False
        call.cancel()
        return True

    for _ in range(2000):  # polled: the cancelled watch frees its place once its task has ended
        if await one_more_is_taken():
            break
        await asyncio.sleep(0.01)
    else:
        raise AssertionError("no place freed by the cancelled watch")
    watches[1].cancel()


async def test_a_write_that_ends_in_the_loop_turn_its_stall_timer_fired_goes_on() -> None:
    """The timer and the write's end can fall in one turn of the loop, the timer first: the stream
    was ended (a spurious OUTCOME_UNKNOWN) though its reply had been written. Pure logic, no gRPC."""
    stalled = Counter("stalled", "test", ["method"], registry=CollectorRegistry())
    limit, call = StallLimit(30.0, stalled), asyncio.current_task()
    with limit.writing("ReserveStream", None):  # type: ignore[arg-type]  # the context: never touched
        scheduled = asyncio.get_running_loop()._scheduled  # type: ignore[attr-defined]
        (handle,) = [h for h in scheduled if getattr(h._callback, "__self__", None) is limit and not h.cancelled()]
        handle._run()  # the timer fires...
    for _ in range(3):  # ...then the write ends, in the same turn; the loop runs on
        await asyncio.sleep(0)
    assert stalled.labels("ReserveStream")._value.get() == 0
    assert call is not None and not call.cancelling()
