"""The fault soak's ``ReserveStream`` callers (``benchmarks/soak_streams.py``, on the raw stub) where grpcio's
asyncio client set its own ``INTERNAL`` "Internal error from Core" on a call: counted as ``AtpClient.reserve_stream``
tells it, and the call ended on the service too. Against the real gRPC service and a real Redis."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest

from atp_client import AtpClient, KeptStatus, _core_status
from atp_client.pb.atp.v1 import atp_pb2 as pb
from benchmarks import soak_streams
from benchmarks.soak_load import Book, Caller, Layout
from reservation import Limits
from tests.atp_client.test_client import WAIT_S, item
from tests.atp_service.edge.test_api import receipt
from tests.conftest import ServiceFactory
from tests.waiting import until


def caller(client: AtpClient) -> Caller:
    return Caller(client.stub, Book(), Layout.make(1), random.Random(1), stop_at=0.0)


async def test_a_stream_told_grpcios_internal_before_the_services_status_counts_the_services(
        start_service: ServiceFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch past the service's ``max_batch_reservations`` ends the stream ``INVALID_ARGUMENT``. grpcio set its own
    ``INTERNAL`` first (a later write failing on the call core has ended) and the service's status came after: the
    soak counted the ``INTERNAL`` and printed "stream answered INTERNAL: Internal error from Core", an answer the
    service should never give. Made certain here as in ``tests/atp_client/test_stream_end_status.py``: the service
    ends the stream only once the caller has grpcio's ``INTERNAL`` in hand."""
    service, at_service = await start_service(limits=Limits(max_batch_reservations=1))
    await at_service.record_events([receipt("in", "A", "DC", 10)])
    end, end_now = service._servicer._end_stream, asyncio.Event()

    async def end_held(*args: Any) -> None:
        await end_now.wait()
        await end(*args)

    told = KeptStatus.told

    def told_once_ended(self: KeptStatus, call: Any, error: Any) -> Any:
        end_now.set()  # the caller has grpcio's INTERNAL in hand: the service's status comes now
        return told(self, call, error)

    async def past_the_limit(c: Caller, call: Any, tag: str) -> None:
        await call.write(pb.ReserveStreamRequest(reservations=[item(f"{tag}-a"), item(f"{tag}-b")]))
        call._cython_call.set_internal_error("a write failed")  # grpcio's, on a call core has ended
        await call.read()

    monkeypatch.setattr(service._servicer, "_end_stream", end_held)
    monkeypatch.setattr(KeptStatus, "told", told_once_ended)
    monkeypatch.setattr(_core_status, "CORE_STATUS_WAIT_S", WAIT_S)  # the service's end is not timed against it
    monkeypatch.setattr(soak_streams, "stream_batches", past_the_limit)
    async with AtpClient(f"127.0.0.1:{service.port}", timeout_s=WAIT_S) as client:
        soak = caller(client)
        await soak_streams.one_stream(soak, client.stub.ReserveStream(), "s")
    assert soak.book.odd == {}
    assert soak.book.calls[("stream", "INVALID_ARGUMENT")] == 1, soak.book.calls


async def test_a_stream_grpcio_ended_with_its_own_internal_is_ended_on_the_service(
        start_service: ServiceFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """grpcio's ``INTERNAL`` set on a call still open in gRPC's core and on the service, which sends no status: the
    soak's stream kept its place among ``max_reserve_streams`` until the soak's client went away. It is ended in
    gRPC's core; grpcio's own ``INTERNAL`` is counted, and not noted as an answer of the service's."""
    service, _ = await start_service()

    async def answered_once(c: Caller, call: Any, tag: str) -> None:
        await call.write(pb.ReserveStreamRequest(reservations=[item(f"{tag}-a")]))
        assert isinstance(await call.read(), pb.ReserveStreamResponse)
        call._cython_call.set_internal_error("a write failed")  # grpcio's, on a call core has not ended
        await call.read()

    monkeypatch.setattr(_core_status, "CORE_STATUS_WAIT_S", 0.0)  # no status comes: the service's side is open
    monkeypatch.setattr(soak_streams, "stream_batches", answered_once)
    async with AtpClient(f"127.0.0.1:{service.port}", timeout_s=WAIT_S) as client:
        soak = caller(client)
        await soak_streams.one_stream(soak, client.stub.ReserveStream(), "s")
        await until(lambda: service._servicer.reserve_streams == 0, "the stream ended on the service")
    assert soak.book.odd == {} and soak.book.calls[("stream", "INTERNAL")] == 1, soak.book.calls
