"""Streams their callers abandon (cancelled, deadline passed, connection dropped) against the real gRPC
server and Redis: no slot of ``max_reserve_streams`` or ``max_watchers`` is kept by them, and what a
cancelled ReserveStream had sent is decided durably, once (R8, R5)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis

from atp_client import AtpClient
from atp_client.pb.atp.v1 import atp_pb2 as pb
from tests.atp_service.channel_helpers import write_estate
from tests.atp_service.edge.test_api import receipt
from tests.atp_service.edge.test_servicer import refusal, stream_tasks
from tests.conftest import ServiceFactory
from tests.waiting import until

LIMIT = 3
DEADLINE_S = 4.0
"""The deadline of the streams abandoned so: opened and answered once within it, on a loaded machine too."""


def _batch(*rids: str) -> pb.ReserveStreamRequest:
    return pb.ReserveStreamRequest(reservations=[pb.ReserveRequest(
        reservation_id=rid, lines=[pb.Line(sku="A", location="S1", quantity=1)]) for rid in rids])


async def _abandon_streams(port: int, open_one: Any, free: Any) -> None:
    """``LIMIT`` streams opened and abandoned each way: cancelled, deadline passed, connection dropped."""
    for way in ("cancel", "deadline", "drop"):
        client = AtpClient(f"127.0.0.1:{port}")
        calls = [await open_one(client, DEADLINE_S if way == "deadline" else None) for _ in range(LIMIT)]
        if way == "cancel":
            for call in calls:
                call.cancel()
        elif way == "deadline":
            for call in calls:
                with pytest.raises(grpc.aio.AioRpcError) as ended:
                    while True:
                        await call.read()
                assert ended.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        await client.close() if way != "drop" else await client.channel.close(None)
        await until(free, f"every stream abandoned ({way}) has freed its place", 20)


async def test_abandoned_reserve_streams_free_their_places(start_service: ServiceFactory) -> None:
    service, client = await start_service(max_reserve_streams=LIMIT)
    await client.record_events([receipt("seed", "A", "S1", 1000)])
    n = iter(range(1000))

    async def open_one(caller: AtpClient, deadline_s: float | None) -> Any:
        call = caller.stub.ReserveStream(timeout=deadline_s)
        await call.write(_batch(f"r{next(n)}"))
        assert len((await call.read()).outcomes) == 1
        return call

    await _abandon_streams(service.port, open_one, lambda: service._servicer.reserve_streams == 0)
    calls = [await open_one(client, None) for _ in range(LIMIT)]
    refused = await refusal(client.stub.ReserveStream(iter(())))
    assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    for call in calls:
        await call.done_writing()


async def test_abandoned_watches_free_their_places(start_service: ServiceFactory, tmp_path: Path) -> None:
    service, client = await start_service(max_watchers=LIMIT, estate=write_estate(tmp_path))

    async def open_one(caller: AtpClient, deadline_s: float | None) -> Any:
        call = caller.stub.WatchAvailability(pb.WatchAvailabilityRequest(channel="pickup", snapshot=True),
                                             timeout=deadline_s)
        while (await call.read()).kind != pb.WatchAvailabilityResponse.KIND_SNAPSHOT_END:
            pass
        return call

    watchers = service._servicer._watchers
    await _abandon_streams(service.port, open_one, lambda: watchers.open == 0)
    calls = [await open_one(client, None) for _ in range(LIMIT)]
    refused = client.stub.WatchAvailability(pb.WatchAvailabilityRequest(channel="pickup"))
    with pytest.raises(grpc.aio.AioRpcError) as ended:
        await refused.read()
    assert ended.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    for call in calls:
        call.cancel()


async def test_a_cancelled_streams_batches_settle_durably_and_a_retry_is_answered_the_same_R8(
        start_service: ServiceFactory, redis_url: str) -> None:
    """Batches sent, then the stream cancelled while their writes wait on Redis: they are decided and
    durable all the same, a retry with the same ids is answered as replays of the same holds, and a
    service restarted on the same Redis knows them."""
    service, client = await start_service(max_stream_inflight=2)
    await client.record_events([receipt("seed", "A", "S1", 100)])
    with writes_paused(redis_url):
        await cancelled_while_deciding(client, [_batch(f"c{k}-0", f"c{k}-1") for k in range(4)])
    await until(lambda: service._servicer.reserve_streams == 0, "the cancelled stream ended", 20)
    retry = client.stub.ReserveStream()
    answers = []
    for k in range(4):
        await retry.write(_batch(f"c{k}-0", f"c{k}-1"))
        answers.append(await retry.read())
    await retry.done_writing()
    outcomes = [o for a in answers for o in a.outcomes]
    assert all(not o.HasField("error") for o in outcomes), outcomes
    assert sum(o.response.replayed for o in outcomes) >= 2  # those taken before the cancel were decided
    again = client.stub.ReserveStream()
    for k in range(4):
        await again.write(_batch(f"c{k}-0", f"c{k}-1"))
        assert [o.response.replayed for o in (await again.read()).outcomes] == [True, True]
    await again.done_writing()
    availability = await client.stub.GetAvailability(pb.GetAvailabilityRequest(
        keys=[pb.PositionKey(sku="A", location="S1")]))
    assert availability.positions[0].reserved == 8  # each held once
    await service.stop(grace_s=0.1)
    _restarted, client2 = await start_service()
    for k in range(4):
        for i in range(2):
            got = await client2.stub.GetReservation(pb.GetReservationRequest(reservation_id=f"c{k}-{i}"))
            assert got.reservation.reservation_id == f"c{k}-{i}"


async def test_a_stop_with_batches_in_flight_answers_them_and_loses_none_R8(
        start_service: ServiceFactory, redis_url: str) -> None:
    """A graceful stop while a ReserveStream's batches wait on Redis: the batches taken are answered,
    then the stream ends UNAVAILABLE SHUTTING_DOWN, and every hold answered is there after a restart.
    Redis holds writes until the stop is seen waiting with all three batches still being decided: a
    pause of a fixed time could end before the stop began, and the test then pass with none in flight."""
    service, client = await start_service(max_stream_inflight=4, redis_timeout_s=60)  # held, never timed out
    await client.record_events([receipt("seed", "A", "S1", 100)])
    call = client.stub.ReserveStream()
    with writes_paused(redis_url):
        for k in range(3):
            await call.write(_batch(f"g{k}"))
        await until(lambda: len(_deciding()) == 3, "the stream's three batches waiting on Redis", 20)
        batches = _deciding()
        stopping = asyncio.ensure_future(service.stop(grace_s=60))
        await until(lambda: service._calls.settling, "the stop waiting for the calls in progress", 20)
        assert not any(b.done() for b in batches)  # in flight as the stop waits: the premise of the test
        assert not stopping.done()
    answered: list[str] = []
    with pytest.raises(grpc.aio.AioRpcError) as ended:
        while True:
            answered.extend(o.reservation_id for o in (await call.read()).outcomes if not o.HasField("error"))
    assert ended.value.code() == grpc.StatusCode.UNAVAILABLE, ended.value.details()
    assert "shutting down" in (ended.value.details() or ""), ended.value.details()
    assert answered == ["g0", "g1", "g2"]  # every batch taken before the stop is answered (R8)
    await asyncio.wait_for(stopping, 30)
    _restarted, client2 = await start_service()
    for rid in answered:
        got = await client2.stub.GetReservation(pb.GetReservationRequest(reservation_id=rid))
        assert got.reservation.state == pb.RESERVATION_STATE_HELD, rid


def _deciding() -> list[asyncio.Task[Any]]:
    """The batches of ReserveStreams being decided (``_reserve_batch``), their answers not yet in."""
    return [t for t in stream_tasks() if t.get_coro().__qualname__.endswith("._reserve_batch")]


@contextlib.contextmanager
def writes_paused(redis_url: str) -> Iterator[None]:
    """Redis holding every write (``CLIENT PAUSE WRITE``) until the block ends."""
    pause = redis.Redis.from_url(redis_url)
    pause.execute_command("CLIENT", "PAUSE", 30_000, "WRITE")
    try:
        yield
    finally:
        pause.execute_command("CLIENT", "UNPAUSE")
        pause.close()


async def cancelled_while_deciding(client: AtpClient, batches: list[pb.ReserveStreamRequest]) -> Any:
    """A ReserveStream sent ``batches``, cancelled once its reader and the batches it has taken
    (``max_stream_inflight``) wait on Redis: the call."""
    call = client.stub.ReserveStream()
    for batch in batches:
        await call.write(batch)
    await until(lambda: len(stream_tasks()) >= 3, "the stream's batches being decided", 20)
    call.cancel()
    return call


def _readers() -> list[asyncio.Task[Any]]:
    """The servicer's stream readers still running: one per ReserveStream whose handler has not ended."""
    return [t for t in stream_tasks() if t.get_coro().__qualname__.endswith("._take_batches")]


async def test_a_cancelled_stream_keeps_its_place_until_its_batches_are_decided_R8(
        start_service: ServiceFactory, redis_url: str) -> None:
    """A cancelled stream's batches go on being decided (R8), each holding its request and answer
    (up to ``max_message_bytes`` apiece). Its place among ``max_reserve_streams`` was freed at once,
    so a caller opening, filling and cancelling streams while Redis was slow left ``max_stream_inflight``
    + 1 batches behind per stream, without bound: the service's memory grew until it was killed.
    Now the place is held until they are decided: the next stream is refused CAPACITY_REACHED."""
    service, client = await start_service(max_stream_inflight=2, max_reserve_streams=1)
    await client.record_events([receipt("seed", "A", "S1", 100)])
    with writes_paused(redis_url):
        await cancelled_while_deciding(client, [_batch(f"k{k}") for k in range(4)])
        await until(lambda: not _readers(), "the cancelled stream's handler ended", 20)
        assert service._servicer.reserve_streams == 1  # its batches still wait on Redis
        refused = await refusal(client.stub.ReserveStream(iter(())))
        assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "max_reserve_streams" in (refused.details() or "")
    await until(lambda: service._servicer.reserve_streams == 0, "the place freed once its batches are decided", 20)
    assert not stream_tasks()
    again = client.stub.ReserveStream()
    await again.write(_batch("k0"))
    assert len((await again.read()).outcomes) == 1
    await again.done_writing()


async def test_a_stream_cancelled_while_its_one_batch_is_decided_keeps_its_place_and_decides_it_R8(
        start_service: ServiceFactory, redis_url: str) -> None:
    """The handler awaited the batch it answers next directly: a caller gone then cancelled that batch
    too, so its place was freed while its shards still decided it (and the decision's own task was cut).
    The batch now goes on to its end, the stream's place held until then; a retry answers the decision."""
    service, client = await start_service(max_stream_inflight=1, max_reserve_streams=1)
    await client.record_events([receipt("seed", "A", "S1", 100)])
    with writes_paused(redis_url):
        call = client.stub.ReserveStream()
        await call.write(_batch("one"))
        await until(lambda: len(stream_tasks()) >= 2, "the stream's batch being decided", 20)
        batch = next(t for t in stream_tasks() if t.get_coro().__qualname__.endswith("._reserve_batch"))
        call.cancel()
        await until(lambda: not _readers(), "the cancelled stream's handler ended", 20)
        assert not batch.done(), "the batch is decided to its end, not cut with its caller"
        assert service._servicer.reserve_streams == 1  # the batch still waits on Redis
    await until(lambda: service._servicer.reserve_streams == 0, "the place freed once the batch is decided", 20)
    assert not batch.cancelled()
    got = await client.stub.GetReservation(pb.GetReservationRequest(reservation_id="one"))
    assert got.reservation.state == pb.RESERVATION_STATE_HELD
