"""Tracing, when on, sends the calls' spans and the shard/log path's to a real OTLP/HTTP receiver."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_client.pb.atp.v1 import atp_pb2_grpc as pb_grpc
from atp_service.app.service import AtpService
from atp_service.app.tracing import MAX_QUEUED_SPANS, Tracing, TracingUnavailable
from tests.conftest import test_config as make_config

RESERVE = "/atp.v1.AvailabilityService/Reserve"
CONFIRM = "/atp.v1.AvailabilityService/Confirm"
CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
EXPORT_TIMEOUT_S = 2.0
"""A hung collector's tests wait out exports: shorter than the default (5 s), still far from the
SDK's wait for every batch (``MAX_QUEUED_SPANS / EXPORT_BATCH`` = 8 of them: 16 s)."""


class Receiver:
    """An OTLP/HTTP trace receiver on loopback: every span it was sent, as (name, trace id, attributes)."""

    def __init__(self) -> None:
        self.spans: list[tuple[str, str, dict[str, Any]]] = []
        self.roots: set[str] = set()  # names of spans sent without a parent
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                request = trace_service_pb2.ExportTraceServiceRequest.FromString(body)
                for resource in request.resource_spans:
                    for scope in resource.scope_spans:
                        receiver.spans += [(s.name, s.trace_id.hex(), _attributes(s)) for s in scope.spans]
                        receiver.roots |= {s.name for s in scope.spans if not s.parent_span_id}
                reply = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1/traces"

    def named(self, name: str) -> list[tuple[str, str, dict[str, Any]]]:
        return [span for span in self.spans if span[0] == name]


def _attributes(span: Any) -> dict[str, Any]:
    return {a.key: a.value.string_value or a.value.int_value for a in span.attributes}


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    found = Receiver()
    thread = threading.Thread(target=found.server.serve_forever, daemon=True)
    thread.start()
    yield found
    found.server.shutdown()
    found.server.server_close()


async def _served(redis_url: str, receiver: Receiver, ratio: float) -> AtpService:
    service = AtpService(make_config(tracing_endpoint=receiver.url, tracing_sample_ratio=ratio), redis_url)
    await service.start()
    return service


async def test_calls_turns_and_group_commits_are_traced(redis_url: str, receiver: Receiver) -> None:
    service = await _served(redis_url, receiver, ratio=1.0)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{service.port}") as channel:
            stub = pb_grpc.AvailabilityServiceStub(channel)
            await stub.Reserve(pb.ReserveRequest(reservation_id="r-1", lines=[
                pb.Line(sku="sku-1", location="dc", quantity=1)], allow_partial=True))
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.Confirm(pb.ConfirmRequest(reservation_id="no-such-order"))
    finally:
        await service.stop(grace_s=0.1)  # sends what is queued
    assert refused.value.code() == grpc.StatusCode.NOT_FOUND
    assert receiver.named(RESERVE), f"no span of the Reserve call among {sorted({s[0] for s in receiver.spans})}"
    [(_, _, confirm)] = receiver.named(CONFIRM)
    assert confirm["atp.reason"] == "RESERVATION_NOT_FOUND"
    applied = receiver.named("atp.shard.apply")
    assert applied and all(span[2]["atp.commands"] >= 1 for span in applied)
    assert receiver.named("atp.log.append"), "the Reserve's group commit was not traced"
    assert "atp.log.append" in receiver.roots, "a group commit serves many calls: no one turn's child"


async def test_a_sampled_caller_is_followed_whatever_the_ratio(redis_url: str, receiver: Receiver) -> None:
    service = await _served(redis_url, receiver, ratio=0.0)
    parent = (("traceparent", f"00-{CALLER_TRACE}-00f067aa0ba902b7-01"),)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{service.port}") as channel:
            stub = pb_grpc.AvailabilityServiceStub(channel)
            keys = pb.GetAvailabilityRequest(keys=[pb.PositionKey(sku="sku-1", location="dc")])
            await stub.GetAvailability(keys, metadata=parent)
            await stub.GetAvailability(keys)  # not sampled: ratio 0 and no sampled caller
            await asyncio.sleep(0)
    finally:
        await service.stop(grace_s=0.1)
    calls = receiver.named("/atp.v1.AvailabilityService/GetAvailability")
    assert [trace for _, trace, _ in calls] == [CALLER_TRACE]
    assert not receiver.named("atp.shard.apply"), "ratio 0 traced a shard turn of its own"


def test_tracing_without_the_sdk_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry.sdk.trace", None)
    with pytest.raises(TracingUnavailable, match=r"atp-service\[tracing\]"):
        Tracing("http://127.0.0.1:4318/v1/traces", 1.0, "127.0.0.1:50051")


@pytest.fixture
def silent_collector() -> Iterator[str]:
    """A collector that accepts connections and never answers (its host hung, packets dropped)."""
    server = socket.create_server(("127.0.0.1", 0), backlog=64)
    held: list[socket.socket] = []
    closing = threading.Event()

    def accept() -> None:
        with contextlib.suppress(OSError):
            while not closing.is_set():
                held.append(server.accept()[0])

    threading.Thread(target=accept, daemon=True).start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}/v1/traces"
    closing.set()
    server.close()
    for conn in held:
        conn.close()


async def test_a_collector_that_never_answers_delays_the_stop_by_one_export_at_most(
        redis_url: str, silent_collector: str) -> None:
    """Defect: the final flush waited for every queued batch (the SDK's 30 s), each export up to its
    5 s: a hung collector held every stop 30 s longer than its drain and snapshots, past the stop
    budgets of the deploy files (a Recreate rollout: 30 s more without service)."""
    service = AtpService(make_config(tracing_endpoint=silent_collector, tracing_sample_ratio=1.0,
                                     tracing_export_timeout_s=EXPORT_TIMEOUT_S), redis_url)
    await service.start()
    assert service.tracing is not None
    for _ in range(MAX_QUEUED_SPANS):  # a full queue, as a busy service behind a hung collector has
        with service.tracing.tracer.start_as_current_span("atp.test"):
            pass
    began = time.monotonic()
    await service.stop(grace_s=0.1)
    # Bounded by one export (2 s here) plus the stop's own work; the defect held it for every batch's (16 s:
    # eight batches of 512, each export waited out against the silent collector). The bound sits between the
    # two, 8 s past the one and 6 s short of the other: 6 s left the stop 4 s of its own work, and a loaded
    # host's stop already took 3.1 s of the 6.
    assert time.monotonic() - began < EXPORT_TIMEOUT_S * 5
    flushing = service.tracing.flushing
    assert flushing is not None
    # Given up on, the flush tries no further batch: it ends with the export in flight (its timeout),
    # not after every batch's — it would go on logging its failures into whatever runs next.
    await asyncio.to_thread(flushing.join, EXPORT_TIMEOUT_S * 3)
    assert not flushing.is_alive()
