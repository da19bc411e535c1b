"""A ``ReserveStream`` whose status grpcio's asyncio client set twice: its own ``INTERNAL`` "Internal error from Core"
(a write failing on a call already over, grpc/grpc#36066) and the service's. grpcio 1.85 sets them in either order,
and runs a call's done callbacks at the first only. Against the real gRPC service and a real Redis."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from atp_client import AtpClient, AtpError, InvalidRequest
from atp_client._stream import Batches
from atp_client.pb.atp.v1 import atp_pb2 as pb
from reservation import Limits
from tests.atp_client.test_client import item
from tests.atp_service.edge.test_api import receipt
from tests.conftest import ServiceFactory


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
