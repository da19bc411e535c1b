"""A ReserveStream whose caller cuts it at each point (before its batches are taken, while their
appends wait on Redis, after half-closing, between batches) against the real gRPC server and Redis:
every reservation (lines on several shards) is decided whole or not at all, a retry with the same
ids answers what was decided (R5, R8), nothing is left running, and a restart reads the same."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from atp_client import AtpClient, Retryable, typed
from atp_client._errors import CORE_LOST_CALL
from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_client.pb.atp.v1 import atp_pb2_grpc as pb_grpc
from atp_service.edge import stalls
from tests.atp_service.app.test_redis_stalls import _outcome_said
from tests.atp_service.edge.test_abandoned_streams import writes_paused
from tests.atp_service.edge.test_api import receipt
from tests.atp_service.edge.test_servicer import stream_tasks
from tests.atp_service.edge.test_stalled_streams import END_WAIT_S
from tests.conftest import ServiceFactory
from tests.waiting import until

PLACES = [("A", "L1"), ("B", "L2"), ("C", "L3"), ("D", "L4"), ("E", "L5")]


def _order(rid: str) -> pb.ReserveRequest:
    return pb.ReserveRequest(reservation_id=rid, lines=[pb.Line(sku=s, location=loc, quantity=1) for s, loc in PLACES])


def _batches(tag: str, n: int = 4) -> list[pb.ReserveStreamRequest]:
    return [pb.ReserveStreamRequest(reservations=[_order(f"{tag}{k}-{i}") for i in range(3)]) for k in range(n)]


async def _reserved(client: AtpClient) -> list[int]:
    got = await client.stub.GetAvailability(pb.GetAvailabilityRequest(
        keys=[pb.PositionKey(sku=s, location=loc) for s, loc in PLACES]))
    return [p.reserved for p in got.positions]


async def _found(client: AtpClient, rids: list[str]) -> list[str]:
    """The ids held, each checked whole (every line of its order there)."""
    held = []
    for rid in rids:
        try:
            got = await client.stub.GetReservation(pb.GetReservationRequest(reservation_id=rid))
        except grpc.aio.AioRpcError as exc:
            assert exc.code() == grpc.StatusCode.NOT_FOUND, exc
            continue
        assert sorted((ln.sku, ln.location) for ln in got.reservation.lines) == PLACES, got
        held.append(rid)
    return held


async def _cut(client: AtpClient, redis_url: str, how: str, batches: list[pb.ReserveStreamRequest]) -> None:
    call: Any = client.stub.ReserveStream()
    if how == "at_once":
        for b in batches:
            await call.write(b)
        call.cancel()
    elif how == "between_batches":
        await call.write(batches[0])
        await call.read()
        await call.write(batches[1])
        call.cancel()
    else:
        with writes_paused(redis_url):
            for b in batches:
                await call.write(b)
            if how == "half_closed_in_flight":
                await call.done_writing()
            await until(lambda: len(stream_tasks()) >= 2, "the stream's batches being decided", 20)
            call.cancel()
    with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
        await call.code()


@pytest.mark.parametrize("how", ["at_once", "between_batches", "in_flight", "half_closed_in_flight"])
async def test_a_cut_stream_decides_each_reservation_whole_or_not_and_a_retry_answers_it_R8(
        start_service: ServiceFactory, redis_url: str, how: str) -> None:
    service, client = await start_service(max_stream_inflight=2)
    await client.record_events([receipt(f"seed-{s}", s, loc, 1000) for s, loc in PLACES])
    batches = _batches("x")
    rids = [r.reservation_id for b in batches for r in b.reservations]
    await _cut(client, redis_url, how, batches)
    await until(lambda: service._servicer.reserve_streams == 0 and not stream_tasks(), "the cut stream settled", 20)
    held = await _found(client, rids)
    assert await _reserved(client) == [len(held)] * len(PLACES)  # no line held without its order, none twice
    retry = client.stub.ReserveStream()
    for b in batches:
        await retry.write(b)
        answer = await retry.read()
        for o in answer.outcomes:
            assert not o.HasField("error"), o
            assert o.response.replayed == (o.reservation_id in held), o
    await retry.done_writing()
    assert await retry.code() == grpc.StatusCode.OK
    assert await _reserved(client) == [len(rids)] * len(PLACES)
    await service.stop(grace_s=1)
    _restarted, client2 = await start_service()
    assert await _found(client2, rids) == rids
    assert await _reserved(client2) == [len(rids)] * len(PLACES)


STREAMS = 3


async def test_a_stop_with_streams_sending_answers_or_refuses_each_batch_and_loses_nothing_R7(
        start_service: ServiceFactory) -> None:
    """A graceful stop while several ReserveStreams (the client's ``reserve_stream``) keep sending orders
    over every shard: the stop ends, each stream ends ``Retryable`` UNAVAILABLE SHUTTING_DOWN after the
    answers to the batches it took, every order answered is held whole after a restart on the same
    Redis, and no order is held in part. The streams load the host to its limit: a commit Redis answers
    past ``redis_timeout_s`` is told in doubt (R7; seen on a fresh clone), never as anything else."""
    service, client = await start_service(max_stream_inflight=2)
    await client.record_events([receipt(f"seed-{s}", s, loc, 100_000) for s, loc in PLACES])
    written: list[str] = []
    answered: list[str] = []
    ends: list[Exception] = []

    async def batches(n: int) -> AsyncIterator[list[pb.ReserveRequest]]:
        for k in range(100_000):
            batch = [_order(f"s{n}-{k}-{i}") for i in range(2)]
            written.extend(r.reservation_id for r in batch)
            yield batch

    async def stream(n: int) -> None:
        try:
            async for answer in client.reserve_stream(batches(n)):
                for o in answer.outcomes:
                    if o.HasField("error"):  # its commit past redis_timeout_s on a loaded host: in doubt, said so (R7)
                        assert _outcome_said(o.error) == (grpc.StatusCode.UNAVAILABLE, "OUTCOME_UNKNOWN"), o
                        continue  # held whole or not at all: checked with the others written, below
                    answered.append(o.reservation_id)
        except Retryable as exc:
            ends.append(exc)

    streams = [asyncio.ensure_future(stream(n)) for n in range(STREAMS)]
    await until(lambda: len(answered) >= 20 * STREAMS, "the streams answered", 30)
    await asyncio.wait_for(service.stop(grace_s=5), 30)
    await asyncio.wait_for(asyncio.gather(*streams), 30)
    assert len(ends) == STREAMS, ends
    for end in ends:  # grpc.aio's own INTERNAL where a write of the caller's was waiting (grpc/grpc#36066), or
        # core's UNAVAILABLE "Stream removed" where its sendmsg met the connection the server closed: the
        # transport's word on the same race, no status of the service's (the orders are checked below)
        assert isinstance(end, Retryable), end
        removed = end.code() == grpc.StatusCode.UNAVAILABLE and (end.details() or "").startswith("Stream removed")
        assert end.reason == "SHUTTING_DOWN" or end.details() == CORE_LOST_CALL or removed, end
    _restarted, client2 = await start_service()
    assert await _found(client2, answered) == answered  # every order answered is there, whole
    held = await _found(client2, written)
    assert await _reserved(client2) == [len(held)] * len(PLACES)  # none held in part, none twice


INFLIGHT = 2


async def test_a_caller_that_sends_and_never_reads_is_held_to_max_stream_inflight_and_ended(
        start_service: ServiceFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """A caller writing batches as fast as it can and reading none: the service reads no further than
    ``max_stream_inflight`` batches ahead of what it could write back (at no moment more of the
    stream's tasks than its reader, those batches, one being queued and one being answered), and the
    stream ends ``stream_stall_s`` (UNAVAILABLE OUTCOME_UNKNOWN) instead of growing; its place is freed."""
    monkeypatch.setattr(stalls, "END_WAIT_S", END_WAIT_S)  # the status is never queued: waited out, then cancelled
    service, client = await start_service(max_stream_inflight=INFLIGHT, max_reserve_streams=1, stream_stall_s=1.0)
    await client.record_events([receipt(f"seed-{s}", s, loc, 1_000_000) for s, loc in PLACES])
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{service.port}", options=[("grpc.http2.bdp_probe", 0)])
    call: Any = pb_grpc.AvailabilityServiceStub(channel).ReserveStream()  # type: ignore[no-untyped-call]
    most = 0

    async def write_until_refused() -> None:
        nonlocal most
        with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError):
            for k in range(1_000_000):
                await call.write(pb.ReserveStreamRequest(reservations=[_order(f"f{k}-{i}") for i in range(20)]))
                most = max(most, len(stream_tasks()))

    def seen() -> bool:
        nonlocal most
        most = max(most, len(stream_tasks()))
        return service.metrics.edge.streams_stalled.labels("ReserveStream").value == 1

    writer = asyncio.ensure_future(write_until_refused())
    await until(seen, "the unread stream ended as stalled", 60)
    await until(lambda: service._servicer.reserve_streams == 0 and not stream_tasks(), "its place freed", 60)
    assert most <= INFLIGHT + 3, most
    with pytest.raises(grpc.aio.AioRpcError) as ended:
        while True:
            assert await call.read() is not grpc.aio.EOF  # type: ignore[attr-defined]
    refusal = typed(ended.value)
    assert isinstance(refusal, Retryable), refusal
    if ended.value.code() == grpc.StatusCode.UNAVAILABLE:  # else grpc.aio's INTERNAL: its pending write failed
        assert refusal.reason == "OUTCOME_UNKNOWN" and refusal.refusal.metadata == {"limit": "stream_stall_s"}
    await asyncio.wait_for(writer, 60)
    await channel.close(None)
    # The refusal's traceback holds this frame, and with it ``call``: in that cycle the call outlived the test's
    # loop, and its collection in a later test (its pending operations ended then) sent events to this closed loop,
    # logged "Exception in callback PollerCompletionQueue._handle_events" at ERROR there (test_bad_requests.py).
    del ended
