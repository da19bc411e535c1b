"""``AtpClient.reserve_stream`` whose service ends the stream while the client still writes batches: grpcio's
asyncio client, its write failing on the call already over, wrote its own ``INTERNAL`` "Internal error from Core" over
the status the service had sent, or set it before that status came - the caller told ``Retryable`` where the service
said ``InvalidRequest``."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from contextlib import contextmanager
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from atp_client import ACCEPTED_KEY, AtpClient, AtpError, InvalidRequest, _core_status
from atp_client._stream import Batches
from atp_client.pb.atp.v1 import atp_pb2 as pb
from reservation import Limits
from tests.atp_client.test_client import WAIT_S, item
from tests.atp_service.edge.test_api import receipt
from tests.conftest import ServiceFactory

TRAILERS_CROSS_S = 0.3
"""How long the client's loop is held once the service ended the stream: its status reaches the client's gRPC core
(its own threads, over loopback) meanwhile, and waits there for the loop; and how long the caller then leaves the next
answer unread. Only the failure before the fix needs these waits: the fixed client tells the service's status whether
it came before the failed write or after it, and whenever the caller reads."""


class EndingAtTheFirstBatch:
    """A ReserveStream, on a server of its own threads (not the client's loop), that accepts the stream, reads and
    answers one batch, and ends the stream ``INVALID_ARGUMENT`` ``LIMIT_EXCEEDED`` as the service ends it at a batch
    past ``max_batch_reservations``; ``ending`` once it is about to."""

    def __init__(self) -> None:
        self.ending = threading.Event()

    def handle(self, requests: Iterator[pb.ReserveStreamRequest], context: grpc.ServicerContext) -> Iterator[Any]:
        context.send_initial_metadata(((ACCEPTED_KEY, "1"),))
        yield pb.ReserveStreamResponse(outcomes=[pb.ReserveOutcome(reservation_id=r.reservation_id)
                                                 for r in next(requests).reservations])
        status = status_pb2.Status(code=grpc.StatusCode.INVALID_ARGUMENT.value[0], message="batch too large")
        status.details.add().Pack(error_details_pb2.ErrorInfo(
            reason="LIMIT_EXCEEDED", domain="atp.v1", metadata={"limit": "max_batch_reservations"}))
        context.set_trailing_metadata((("grpc-status-details-bin", status.SerializeToString()),))
        self.ending.set()
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, "batch too large")


@contextmanager
def _threaded_server(service: EndingAtTheFirstBatch) -> Iterator[int]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    handler = grpc.stream_stream_rpc_method_handler(service.handle, pb.ReserveStreamRequest.FromString,
                                                    pb.ReserveStreamResponse.SerializeToString)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "atp.v1.AvailabilityService", {"ReserveStream": handler}),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield port
    finally:
        server.stop(0).wait()


async def test_a_stream_its_service_ends_while_a_batch_is_written_is_told_the_service_s_status() -> None:
    """The second batch is taken from the source once the service has ended the stream at the first, the client's
    loop held (a source doing its own blocking work) until the status is in the client's gRPC core: grpc.aio's writer
    finds the call not over yet, writes, the write fails, and grpcio set INTERNAL over the status already come. The
    caller was told ``Retryable`` INTERNAL and an OMS sent the batch again, for ever; it is told the service's
    status."""
    service = EndingAtTheFirstBatch()

    def batches() -> Iterator[list[pb.ReserveRequest]]:
        yield [item("r-1")]
        assert service.ending.wait(WAIT_S)
        time.sleep(TRAILERS_CROSS_S)  # holds the loop: the status waits in gRPC's core for it
        yield [item("r-2")]

    with _threaded_server(service) as port:
        async with AtpClient(f"127.0.0.1:{port}", timeout_s=WAIT_S) as client:
            try:
                async for _answer in client.reserve_stream(batches()):
                    # Not reading meanwhile: a read waiting when the status came was at times handed it before
                    # grpcio's INTERNAL was set over it. The write has failed once this wait is over.
                    await asyncio.sleep(TRAILERS_CROSS_S)
            except grpc.aio.AioRpcError as exc:
                told: grpc.aio.AioRpcError | None = exc
            else:
                told = None
    assert isinstance(told, InvalidRequest), told
    assert (told.refusal.reason, told.refusal.metadata) == ("LIMIT_EXCEEDED", {"limit": "max_batch_reservations"})


async def test_a_status_that_cannot_be_read_in_the_done_callback_leaves_the_call_s_cancel_whole() -> None:
    """grpcio runs a call's done callbacks inside the setting of its status, an exception from one raised out of it:
    out of ``call.cancel()`` (reserve_stream's ``finally``) before gRPC's core was told, the call left open on the
    service, ``source.end()`` skipped and the caller's error replaced. A grpcio whose accessor would wait there (the
    one case ``_note_status`` cannot read the status) keeps no status, grpcio's own INTERNAL told as before."""
    async with grpc.aio.insecure_channel("127.0.0.1:1") as channel:
        call = channel.stream_stream("/atp.v1.AvailabilityService/ReserveStream")()
        source = Batches(iter(()), None, 1, None)

        async def waiting_code() -> grpc.StatusCode:
            await asyncio.sleep(0)  # a grpcio whose accessor waits on a finished call
            return grpc.StatusCode.CANCELLED

        call.code = waiting_code  # type: ignore[method-assign]
        source.opened(call)
        assert call.cancel()
        assert call.cancelled() and source.status is None


async def test_a_stream_told_grpcios_internal_before_the_services_status_is_told_the_services(
        start_service: ServiceFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """The service ends the stream at a batch past its ``max_batch_reservations`` (``LIMIT_EXCEEDED``). grpcio set its
    own ``INTERNAL`` first (a later write failing), the done callbacks ran with it, and the service's status came
    after: a read begun between the two raised the ``INTERNAL``, and the caller was told it (``Retryable``: the same
    refused batch sent again for ever) - the status that tells the refusal was set over it a moment later, when
    nobody looked. Made certain here: grpcio's ``INTERNAL`` is set (as grpcio sets it on a write that fails) before
    the first batch is answered, and the service ends the stream only once the client has its ``INTERNAL`` in hand."""
    service, at_service = await start_service(limits=Limits(max_batch_reservations=1))
    await at_service.record_events([receipt("in", "A", "DC", 10)])
    assert service.engine is not None
    decide, end = service.engine.reserve_many, service._servicer._end_stream
    answer_first, end_now = asyncio.Event(), asyncio.Event()

    async def first_held(*args: Any) -> Any:
        await answer_first.wait()
        return await decide(*args)

    async def end_held(*args: Any) -> None:
        await end_now.wait()
        await end(*args)

    monkeypatch.setattr(service.engine, "reserve_many", first_held)
    monkeypatch.setattr(service._servicer, "_end_stream", end_held)
    told = Batches.told

    def told_once_ended(self: Batches, error: grpc.aio.AioRpcError) -> Any:
        end_now.set()  # the client has grpcio's INTERNAL in hand: the service's status comes now
        return told(self, error)

    monkeypatch.setattr(Batches, "told", told_once_ended)
    monkeypatch.setattr(_core_status, "CORE_STATUS_WAIT_S", WAIT_S)  # the service's end is not timed against the bound
    async with AtpClient(f"127.0.0.1:{service.port}", max_batch_reservations=None, timeout_s=10) as client:
        calls: list[Any] = []
        open_stream = client.stub.ReserveStream
        monkeypatch.setattr(client.stub, "ReserveStream", lambda *a, **kw: calls.append(open_stream(*a, **kw))
                            or calls[-1])

        def batches() -> Iterator[list[pb.ReserveRequest]]:
            yield [item("first")]
            yield [item("two-a"), item("two-b")]  # past the service's limit: it ends the stream, once first is answered
            calls[0]._cython_call.set_internal_error("a write failed")  # grpcio's, on a call core has ended
            answer_first.set()

        answers: list[pb.ReserveStreamResponse] = []
        with pytest.raises(AtpError) as ended:
            async for answer in client.reserve_stream(batches()):
                answers.append(answer)
    assert [a.outcomes[0].response.state for a in answers] == [pb.RESERVATION_STATE_HELD]
    assert isinstance(ended.value, InvalidRequest), repr(ended.value)
    assert (ended.value.reason, ended.value.refusal.metadata.get("limit")) == (
        "LIMIT_EXCEEDED", "max_batch_reservations"), ended.value
