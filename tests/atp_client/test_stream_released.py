"""A ``ReserveStream`` that grpcio's asyncio client ended on its side alone, with its own ``INTERNAL`` "Internal error
from Core" (``CORE_LOST_CALL``, set on a write that fails): grpc.aio's ``call.cancel()`` does nothing on a call whose
status is set, and the service's side of the stream stayed open. Against the real gRPC service and a real Redis."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from atp_client import AtpClient, Retryable, _core_status
from atp_client.pb.atp.v1 import atp_pb2 as pb
from tests.atp_client.test_client import WAIT_S, item
from tests.atp_service.edge.test_api import receipt
from tests.conftest import ServiceFactory
from tests.waiting import until


async def test_a_stream_grpcio_ended_with_its_own_internal_is_ended_on_the_service_too(
        start_service: ServiceFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """The first batch answered, grpcio sets its ``INTERNAL`` on the call as it does on a write that fails, the
    call still open in gRPC's core and on the service (which has sent no status: nothing is set over it). The caller
    is told ``Retryable``; the stream kept its place among the service's ``max_reserve_streams`` (1 here) while the
    client lived, its channel closed or not: the service never saw it end. The client ends the call in gRPC's core:
    the service's side ends, its place freed, and the next stream is answered."""
    service, at_service = await start_service(max_reserve_streams=1)
    await at_service.record_events([receipt("in", "A", "DC", 10)])
    monkeypatch.setattr(_core_status, "CORE_STATUS_WAIT_S", 0.0)  # no status comes: the service's side is open
    async with AtpClient(f"127.0.0.1:{service.port}", timeout_s=WAIT_S) as client:
        calls: list[Any] = []
        open_stream = client.stub.ReserveStream
        monkeypatch.setattr(client.stub, "ReserveStream", lambda *a, **kw: calls.append(open_stream(*a, **kw))
                            or calls[-1])
        more = asyncio.Event()  # never set: the caller has no more batches yet, and does not end its stream

        async def batches() -> AsyncIterator[list[pb.ReserveRequest]]:
            yield [item("first")]
            await more.wait()

        with pytest.raises(Retryable) as ended:
            async for _answer in client.reserve_stream(batches()):
                calls[0]._cython_call.set_internal_error("a write failed")  # grpcio's, on a call core has not ended
        assert ended.value.details() == "Internal error from Core", ended.value
        await until(lambda: service._servicer.reserve_streams == 0, "the stream ended on the service")
        answers = [a async for a in client.reserve_stream([[item("second")]])]
    assert [a.outcomes[0].response.state for a in answers] == [pb.RESERVATION_STATE_HELD]
