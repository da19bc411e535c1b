"""A ``ReserveStream`` that grpcio's asyncio client ended on its side alone, with its own ``INTERNAL`` "Internal error
from Core" (``CORE_LOST_CALL``, set on a write that fails): grpc.aio's ``call.cancel()`` does nothing on a call whose
status is set, and the service's side of the stream stayed open. Against the real gRPC service and a real Redis."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc
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


class ChangedCore:
    """grpcio's private call object (``call._cython_call``) as a grpcio whose core cancel takes other arguments has
    it: everything else the real one's."""

    def __init__(self, real: Any) -> None:
        self._real = real

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def cancel(self, code: int, details: str) -> None:  # pragma: no cover - called as grpcio 1.85 has it: TypeError
        raise AssertionError("called with a status code")


class NoCore(ChangedCore):
    """The same, on a grpcio without ``cancel`` on it."""

    cancel = None  # type: ignore[assignment]


@pytest.mark.parametrize("core", [ChangedCore, NoCore])
async def test_release_never_raises_and_tells_a_grpcio_it_cannot_use_once(
        core: type[ChangedCore], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """``release`` runs in ``reserve_stream``'s ``finally``: on a grpcio whose private call object changed, it raised
    (``TypeError``) in place of the error the caller was being told (a batch in doubt told as a plain failure, R7),
    and where the attribute is missing it logged its warning for every stream that met grpcio's ``INTERNAL``. Now
    nothing is raised, and the warning comes once a process."""
    monkeypatch.setattr(_core_status, "_RELEASE_WARNED", set(), raising=False)  # a fresh process
    async with grpc.aio.insecure_channel("127.0.0.1:1") as channel:  # nothing is sent: the call ends here first
        for _ in range(2):
            call = channel.stream_stream("/atp.v1.AvailabilityService/ReserveStream")()
            call._cython_call.set_internal_error("a write failed")  # grpcio's own INTERNAL, as on a write failing
            call._cython_call = core(call._cython_call)
            with caplog.at_level(logging.WARNING, logger=_core_status.__name__):
                _core_status.release(call)
            assert await call.code() == grpc.StatusCode.INTERNAL  # left as grpc.aio's cancel() left it
            call._cython_call = call._cython_call._real
            call._cython_call.cancel("test over")
    warned = [r.getMessage() for r in caplog.records if r.name == _core_status.__name__]
    assert len(warned) == 1 and "stays open on the service" in warned[0], warned
