"""The servicer's own bounds on what callers can make it hold, against the real gRPC server and Redis."""

from __future__ import annotations

import grpc
import pytest

from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_service import ManualClock
from tests.conftest import ServiceFactory

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
    third = client.stub.ReserveStream()
    await third.write(_batch("r2"))
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await third.read()
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "max_reserve_streams" in (refused.value.details() or "")
    assert service._servicer.reserve_streams == 2  # the refused one holds nothing

    await open_calls[0].done_writing()  # one ends: its place is free again
    assert await open_calls[0].read() == grpc.aio.EOF  # type: ignore[attr-defined]
    again = client.stub.ReserveStream()
    await again.write(_batch("r3"))
    assert len((await again.read()).outcomes) == 1
    for call in (open_calls[1], again):
        await call.done_writing()
        assert await call.read() == grpc.aio.EOF  # type: ignore[attr-defined]
