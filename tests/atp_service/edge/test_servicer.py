"""The servicer's own bounds on what callers can make it hold, against the real gRPC server and Redis."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import grpc
import pytest
import redis

from atp_client import AtpClient, typed
from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_service import ManualClock
from tests.atp_service.edge.test_api import receipt
from tests.conftest import ServiceFactory
from tests.waiting import taken_past_its_deadline, until

T0 = 1_700_000_000_000


def _batch(rid: str) -> pb.ReserveStreamRequest:
    return pb.ReserveStreamRequest(reservations=[pb.ReserveRequest(
        reservation_id=rid, lines=[pb.Line(sku="A", location="S1", quantity=1)])])


async def test_reserve_streams_open_at_once_are_bounded(start_service: ServiceFactory) -> None:
    """Each open ReserveStream may hold ``max_stream_inflight`` batches and their answers: without a
    bound on how many are open, one caller opening streams grows the service's memory without end."""
    service, client = await start_service(clock=ManualClock(T0), max_reserve_streams=2)
    open_calls = []
    for n in range(2):  # each answered once: its handler runs, and counts
        call = client.stub.ReserveStream()
        await call.write(_batch(f"r{n}"))
        assert len((await call.read()).outcomes) == 1
        open_calls.append(call)
    refused = await refusal(client.stub.ReserveStream(iter(())))
    assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "max_reserve_streams" in (refused.details() or "")
    assert service._servicer.reserve_streams == 2  # the refused one holds nothing
    assert ended_as(service, "ReserveStream", "RESOURCE_EXHAUSTED") == 1  # counted where operators look

    await open_calls[0].done_writing()  # one ends: its place is free again
    assert await open_calls[0].read() == grpc.aio.EOF  # type: ignore[attr-defined]
    again = client.stub.ReserveStream()
    await again.write(_batch("r3"))
    assert len((await again.read()).outcomes) == 1
    for call in (open_calls[1], again):
        await call.done_writing()
        assert await call.read() == grpc.aio.EOF  # type: ignore[attr-defined]


async def refusal(call: Any) -> grpc.aio.AioRpcError:
    """How a stream call the service refuses at its start ends. Open it with no requests
    (``ReserveStream(iter(()))``): a write racing the refusal fails, told the refusal or, by grpcio's
    asyncio client, ``INTERNAL`` "Internal error from Core" (grpc/grpc#36066), as the machine's load
    falls; and a call opened to be written to later keeps a task of grpcio's waiting for writes."""
    with pytest.raises(grpc.aio.AioRpcError) as ended:
        await call.read()
    return ended.value


def ended_as(service: Any, method: str, code: str) -> float | None:
    """How many ``method`` calls ended ``code`` (``atp_rpc_duration_seconds``)."""
    return service.metrics.registry.get_sample_value(  # type: ignore[no-any-return]
        "atp_rpc_duration_seconds_count", {"method": method, "code": code})


def stream_tasks() -> list[asyncio.Task[Any]]:
    """The servicer's own tasks still running (a stream's reader, its batches being decided)."""
    return [t for t in asyncio.all_tasks()  # an async generator's aclose (athrow) task has no qualified name
            if getattr(t.get_coro(), "__qualname__", "").startswith("AvailabilityServicer.")]


async def test_a_stream_cancelled_with_its_batches_queued_leaves_no_task_behind_R8(
        start_service: ServiceFactory, redis_url: str) -> None:
    """A caller that cancels a stream while it is full (``max_stream_inflight`` batches waiting,
    the reader waiting to queue one more) leaves nothing running once its batches are decided: the
    reader waited for room to queue its end mark for ever, a task (with the batches and their
    answers) kept per cancelled stream, the service's memory growing with each."""
    inflight = 2
    service, client = await start_service(max_stream_inflight=inflight)
    await client.record_events([receipt("seed", "A", "S1", 100)])
    pause = redis.Redis.from_url(redis_url)
    pause.execute_command("CLIENT", "PAUSE", 30_000, "WRITE")  # the first batch waits to be durable
    try:
        call = client.stub.ReserveStream(iter([_batch(f"q{n}") for n in range(20)]))
        # One batch awaited, ``inflight`` queued, one more decided and waiting for room in the queue.
        await until(lambda: len(stream_tasks()) >= inflight + 3, "the stream's queue full", 20)
        call.cancel()
    finally:
        pause.execute_command("CLIENT", "UNPAUSE")
        pause.close()
    await until(lambda: not stream_tasks(), "every task of the cancelled stream ended", 20)
    # Its place is given back by the last batch task's done callback, a loop turn after that task ended.
    await until(lambda: service._servicer.reserve_streams == 0, "the stream's place given back", 20)


async def test_a_batch_whose_answer_gRPC_cannot_send_ends_the_stream_outcome_unknown_R8(
        start_service: ServiceFactory) -> None:
    """``max_message_bytes`` binds what the service sends too, and an answer outgrows its batch
    (each line answered with its grant, its availability, its allocations): a batch within the limit
    was decided, made durable, then its answer failed at gRPC's door, the stream ending
    RESOURCE_EXHAUSTED ("send smaller ones": no retry can help). Told its reservations failed, an
    OMS reserves again under new ids: the stock held twice. Now the stream says they were decided
    (OUTCOME_UNKNOWN), and a retry with the same ids in smaller batches answers each (R5)."""
    service, client = await start_service(clock=ManualClock(T0), max_message_bytes=65536)
    await client.record_events([receipt("seed", "A", "S1", 100_000)])
    items = [pb.ReserveRequest(reservation_id=f"order-{n:06d}", lines=[pb.Line(sku="A", location="S1", quantity=1)])
             for n in range(1000)]
    batch = pb.ReserveStreamRequest(reservations=items)
    assert batch.ByteSize() < 65536  # the request fits: only its answer does not
    call = client.stub.ReserveStream()
    await call.write(batch)
    with pytest.raises(grpc.aio.AioRpcError) as ended:
        await call.read()
    assert ended.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "OUTCOME_UNKNOWN" in str(typed(ended.value).refusal.reason)
    assert "max_message_bytes" in (ended.value.details() or "")
    assert ended_as(service, "ReserveStream", "UNAVAILABLE") == 1
    again = client.stub.ReserveStream()
    for start in range(0, 1000, 100):
        await again.write(pb.ReserveStreamRequest(reservations=items[start:start + 100]))
        answer = await again.read()
        assert [o.response.replayed for o in answer.outcomes] == [True] * 100
    await again.done_writing()
    availability = await client.stub.GetAvailability(pb.GetAvailabilityRequest(
        keys=[pb.PositionKey(sku="A", location="S1")]))
    assert availability.positions[0].reserved == 1000  # each held once


def _reserve(rid: str) -> pb.ReserveRequest:
    return pb.ReserveRequest(reservation_id=rid, lines=[pb.Line(sku="A", location="S1", quantity=1)])


PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
RST_STREAM = 0x3
"""The HTTP/2 frame (RFC 9113 6.4) by which a gRPC caller ends a call: its cancel, and its deadline passing alike."""


class CancelsLost:
    """A relay to a service that forwards what its callers send, frame by frame, but their RST_STREAM: a caller's
    deadline passing never reaches the service as a cancel, and the service ends the call at its own deadline."""

    def __init__(self, port: int) -> None:
        self.port = port
        self._relays: set[asyncio.Task[None]] = set()

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return f"127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._relays.add(task := asyncio.current_task())  # type: ignore[arg-type]
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.port)
        down = asyncio.ensure_future(self._down(up_reader, writer))
        try:
            up_writer.write(await reader.readexactly(len(PREFACE)))
            while True:
                head = await reader.readexactly(9)  # length (3 bytes), type, flags, stream id (4)
                body = await reader.readexactly(int.from_bytes(head[:3], "big"))
                if head[3] != RST_STREAM:
                    up_writer.write(head + body)
                    await up_writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            down.cancel()
            for w in (up_writer, writer):
                w.close()
            self._relays.discard(task)  # type: ignore[arg-type]

    @staticmethod
    async def _down(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()

    async def close(self) -> None:
        self._server.close()
        for task in list(self._relays):
            task.cancel()
        await asyncio.gather(*self._relays, return_exceptions=True)


async def test_a_call_its_caller_gives_up_is_counted_by_how_it_ended_R8(start_service: ServiceFactory) -> None:
    """A unary call gRPC cancelled in the service's hands — its caller's deadline passed, or the caller cancelled
    it — was observed nowhere in ``atp_rpc_duration_seconds``: the calls that waited longest were left out of the
    latency ATPReserveSlow reads (quiet while every caller with a deadline under its bound gave up), and no code
    showed them, where a forwarded call ended so was counted DEADLINE_EXCEEDED. The shard is held (paused) until
    each call has ended, so each ends while the service still has it in hand.

    The call past its deadline is made through ``CancelsLost``: the service ends it at the deadline it was told. Its
    caller's own cancel at that deadline (the same RST_STREAM as any cancel) reaches the service first whenever the
    service read the call late — the deadline it is told (``grpc-timeout``) runs from its reading — and the call was
    rightly counted CANCELLED: read 150 ms late (a busy host's stall), every time."""
    service, client = await start_service(clock=ManualClock(T0))
    await client.record_events([receipt("seed", "A", "S1", 100)])
    relay = CancelsLost(service.port)
    late = AtpClient(await relay.start())
    resume = await service.engine.actors[service.engine.place("A")].pause()
    try:
        ended = await taken_past_its_deadline(lambda d: late.stub.Reserve(_reserve("r-deadline"), timeout=d), service)
        assert ended.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert ended_as(service, "Reserve", "DEADLINE_EXCEEDED") == 1

        call = client.stub.Reserve(_reserve("r-cancelled"))
        await until(lambda: service._servicer.drain.active == 1, "the call in the service's hands", 10)
        call.cancel()
        await until(lambda: service._servicer.drain.active == 0, "the handler of the cancelled call ended", 10)
        assert ended_as(service, "Reserve", "CANCELLED") == 1
    finally:
        resume.set_result(None)
        await late.close()
        await relay.close()
    assert ended_as(service, "Reserve", "OK") is None  # neither was decided: each waited in the held shard (R8)
    assert (await client.reserve("r-after", [("A", "S1", 1)])).state == pb.RESERVATION_STATE_HELD  # the shard goes on
