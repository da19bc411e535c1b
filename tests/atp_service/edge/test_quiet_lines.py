"""The rate limits of the lines any caller can provoke (``bad_request``, ``stream_stalled``) are each
service's own, as the audit lines' are (``test_auth``): one per process let a flood at one service
in the process (an embedder's other, the previous test's) silence another's first lines. Pure
logic, no gRPC server."""

from __future__ import annotations

import asyncio
import logging
from types import SimpleNamespace
from typing import Any, NoReturn

import grpc
import pytest
from prometheus_client import CollectorRegistry, Counter

from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_client.pb.atp.v1 import atp_pb2_grpc as pb_grpc
from atp_service.edge.handlers import Malformed, add_service
from atp_service.edge.stalls import StallLimit

FLOOD = 100
SERVICE = pb.DESCRIPTOR.services_by_name["AvailabilityService"]


class _Ended(Exception):
    pass


class _Context:
    """A call's context as the refusals use it: ``abort`` raises, as grpc.aio's does."""

    def peer(self) -> str:
        return "ipv4:192.0.2.1:5000"

    def time_remaining(self) -> float | None:
        return None

    async def abort(self, *_args: Any) -> NoReturn:
        raise _Ended


class _Server:
    """What ``add_service`` registers on: its generic handlers, asked for a method as gRPC asks them (no
    ``add_registered_method_handlers``: registered methods cost every call, see ``add_service``)."""

    def __init__(self) -> None:
        self.generic: list[grpc.GenericRpcHandler[Any, Any]] = []

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        self.generic.extend(handlers)

    def handler(self, method: str) -> grpc.RpcMethodHandler[Any, Any]:
        details = SimpleNamespace(method=f"/{SERVICE.full_name}/{method}")
        return next(found for generic in self.generic if (found := generic.service(details)) is not None)


class _Servicer(pb_grpc.AvailabilityServiceServicer):
    async def Reserve(self, request: pb.ReserveRequest, context: Any) -> pb.ReserveResponse:
        return pb.ReserveResponse()


def _service() -> Any:
    """One service's ``Reserve`` handler, registered as the service registers its own."""
    server, registry = _Server(), CollectorRegistry()
    add_service(server, _Servicer(), SERVICE,  # type: ignore[arg-type]
                Counter("bad", "test", ["method"], registry=registry),
                StallLimit(0, Counter("stalled", "test", ["method"], registry=registry)))
    return server.handler("Reserve").unary_unary


def _lines(caplog: pytest.LogCaptureFixture, event: str) -> int:
    return sum(1 for record in caplog.records if record.__dict__.get("event") == event)


async def test_a_flood_of_bad_bytes_at_one_service_leaves_anothers_lines_written(
        caplog: pytest.LogCaptureFixture) -> None:
    flooded, quiet = _service(), _service()
    with caplog.at_level(logging.WARNING, logger="atp_service.edge.handlers"):
        for _ in range(FLOOD):
            with pytest.raises(_Ended):
                await flooded(Malformed("cannot be parsed"), _Context())
        written = _lines(caplog, "bad_request")
        with pytest.raises(_Ended):
            await quiet(Malformed("cannot be parsed"), _Context())
    assert written < FLOOD  # the flood was limited ...
    assert _lines(caplog, "bad_request") == written + 1  # ... and the other service's refusal written all the same


async def _stalled(limit: StallLimit) -> None:
    """A reply that is never written: the limit ends its call (its task cancelled)."""
    async def writing() -> None:
        with limit.writing("ReserveStream", _Context()):  # type: ignore[arg-type]
            await asyncio.Event().wait()

    call = asyncio.ensure_future(writing())
    await asyncio.wait([call])
    assert call.cancelled()


async def test_a_flood_of_stalled_streams_at_one_service_leaves_anothers_lines_written(
        caplog: pytest.LogCaptureFixture) -> None:
    flooded, quiet = (StallLimit(1e-6, Counter("stalled", "test", ["method"], registry=CollectorRegistry()))
                      for _ in range(2))
    with caplog.at_level(logging.WARNING, logger="atp_service.edge.stalls"):
        for _ in range(FLOOD):
            await _stalled(flooded)
        written = _lines(caplog, "stream_stalled")
        await _stalled(quiet)
    assert written < FLOOD  # the flood was limited ...
    assert _lines(caplog, "stream_stalled") == written + 1  # ... and the other service's stall written all the same
