"""The fault soak's ``ReserveStream`` callers (``benchmarks/soak_streams.py``, on the raw stub) where grpcio's
asyncio client set its own ``INTERNAL`` "Internal error from Core" on a call: counted as ``AtpClient.reserve_stream``
tells it, and the call ended on the service too. Against the real gRPC service and a real Redis."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import grpc
import pytest

from atp_client import AtpClient, KeptStatus, _core_status
from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_service.edge import streams
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


async def test_a_stream_the_service_ended_odd_before_a_write_is_noted(start_service: ServiceFactory,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The service ends a stream with a status it should never give (``INTERNAL`` of its own here) and the soak's
    next write meets the call over (``InvalidStateError``): the soak counted the code but never noted it, so a run
    printed nothing of the service's ``INTERNAL`` (``odd``), as it does where a read meets it."""
    service, _ = await start_service(limits=Limits(max_batch_reservations=1))

    async def end_internal(_method: str, _started: float, context: Any, _exc: Exception) -> None:
        await context.abort(grpc.StatusCode.INTERNAL, "a fault of the service's")

    async def written_after_the_end(c: Caller, call: Any, tag: str) -> bool:
        await call.write(pb.ReserveStreamRequest(reservations=[item(f"{tag}-a"), item(f"{tag}-b")]))  # past the limit
        await call.code()  # the service's status has come: the call is over
        await call.write(pb.ReserveStreamRequest(reservations=[item(f"{tag}-c")]))  # InvalidStateError
        return True  # pragma: no cover - the write raises

    monkeypatch.setattr(service._servicer, "_end_stream", end_internal)
    monkeypatch.setattr(soak_streams, "stream_batches", written_after_the_end)
    async with AtpClient(f"127.0.0.1:{service.port}", timeout_s=WAIT_S) as client:
        soak = caller(client)
        await soak_streams.one_stream(soak, client.stub.ReserveStream(), "s")
    assert soak.book.odd == {("stream", "INTERNAL"): "a fault of the service's"}, soak.book.odd
    assert soak.book.calls[("stream", "INTERNAL")] == 1, soak.book.calls


async def test_a_stream_answered_then_ended_odd_is_not_counted_ok(start_service: ServiceFactory,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Every batch answered, the service ends the stream with a fault of its own after the last answer: the soak
    counted the stream ``OK`` without looking at its status (and then cancelled the call before it came)."""
    service, at_service = await start_service()
    await at_service.record_events([receipt("in", "A", "DC", 10)])

    async def failing_finish(_owners: Any) -> None:
        raise RuntimeError("a fault of the service's after the last answer")

    async def answered_then_half_closed(c: Caller, call: Any, tag: str) -> bool:
        await call.write(pb.ReserveStreamRequest(reservations=[item(f"{tag}-a")]))
        await call.done_writing()
        assert isinstance(await call.read(), pb.ReserveStreamResponse)
        return True

    monkeypatch.setattr(streams.OwnerStreams, "finish", failing_finish)
    monkeypatch.setattr(soak_streams, "stream_batches", answered_then_half_closed)
    async with AtpClient(f"127.0.0.1:{service.port}", timeout_s=WAIT_S) as client:
        soak = caller(client)
        await soak_streams.one_stream(soak, client.stub.ReserveStream(), "s")
    assert soak.book.calls[("stream", "OK")] == 0, soak.book.calls
    assert [kind for kind, _code in soak.book.odd] == ["stream"], soak.book.odd


class Leaving(random.Random):
    """The soak's draws, a caller going away after its first write every time (``random()`` under 0.1)."""

    def random(self) -> float:
        return 0.0


async def test_a_stream_the_client_cancelled_is_not_counted_ok_too(start_service: ServiceFactory) -> None:
    """``stream_batches`` cancels a stream after a write one time in ten (a caller going away) and counts it
    ``CANCELLED_BY_CLIENT``; ``one_stream`` then counted the same stream ``OK`` as well."""
    service, _ = await start_service()
    async with AtpClient(f"127.0.0.1:{service.port}", timeout_s=WAIT_S) as client:
        soak = Caller(client.stub, Book(), Layout.make(1), Leaving(1), stop_at=0.0)
        await soak_streams.one_stream(soak, client.stub.ReserveStream(), "s")
    assert soak.book.calls[("stream", "CANCELLED_BY_CLIENT")] == 1, soak.book.calls
    assert soak.book.calls[("stream", "OK")] == 0, soak.book.calls


async def test_a_stream_ended_ok_with_batches_unanswered_is_noted(start_service: ServiceFactory,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A stream the service ended ``OK`` before answering a batch sent on it (never half-closed by the soak): an end
    the service should never give, its batches neither answered nor told in doubt. The soak counted it
    ``ENDED_EARLY`` and noted nothing, so a run printed nothing of it."""
    service, _ = await start_service()

    async def nothing_taken(_requests: Any, _owners: Any, inflight: Any, _deciding: Any) -> bool:
        await inflight.put(None)  # the end mark at once: no batch read, the stream ended OK
        return False

    async def read_unanswered(c: Caller, call: Any, tag: str) -> bool:
        await call.write(pb.ReserveStreamRequest(reservations=[item(f"{tag}-a")]))
        await soak_streams.read_batch(c, call, [f"{tag}-a"])  # EOF: StreamEnded
        return True  # pragma: no cover - the read raises

    monkeypatch.setattr(service._servicer, "_take_batches", nothing_taken)
    monkeypatch.setattr(soak_streams, "stream_batches", read_unanswered)
    async with AtpClient(f"127.0.0.1:{service.port}", timeout_s=WAIT_S) as client:
        soak = caller(client)
        await soak_streams.one_stream(soak, client.stub.ReserveStream(), "s")
    assert soak.book.calls[("stream", "ENDED_EARLY")] == 1, soak.book.calls
    assert list(soak.book.odd) == [("stream", "ENDED_EARLY")], soak.book.odd
