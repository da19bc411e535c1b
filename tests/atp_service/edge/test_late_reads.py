"""A request stream read after its call has ended keeps nothing. grpc.aio (grpcio 1.85) releases a call once its
task has ended; a read begun after that fails in gRPC's core at once, and grpcio's ``execute_batch`` then keeps
the read's ``CallbackWrapper`` and its future (never completed) for good, the service's stop included. A
``ReserveStream`` closed early by its caller had its batches read on by the reader task (``_take_batches``) until
the call's end reached it: a read begun in that turn was kept so. Real gRPC server, real client."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, Counter

from atp_client._client import reserve_request
from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_client.pb.atp.v1 import atp_pb2_grpc as pb_grpc
from atp_service.edge.handlers import add_service
from atp_service.edge.stalls import StallLimit
from tests.atp_service.edge.test_api import receipt
from tests.conftest import ServiceFactory

SERVICE = pb.DESCRIPTOR.services_by_name["AvailabilityService"]
STREAMS = 100
LATE = 20


def kept_by_grpc() -> int:
    """grpcio's batch callbacks alive: each is released when gRPC's core completes its batch."""
    gc.collect()
    return sum(1 for o in gc.get_objects() if type(o).__name__ == "CallbackWrapper")


class _Answering(pb_grpc.AvailabilityServiceServicer):
    """Answers a stream's first batch, then waits for its caller to go; its request streams kept."""

    def __init__(self) -> None:
        self.requests: list[AsyncIterator[pb.ReserveStreamRequest]] = []

    async def ReserveStream(self, requests: AsyncIterator[pb.ReserveStreamRequest],
                            context: Any) -> AsyncIterator[pb.ReserveStreamResponse]:
        self.requests.append(requests)
        await anext(requests)
        yield pb.ReserveStreamResponse()
        await asyncio.Event().wait()


async def test_a_request_stream_read_after_its_call_ended_keeps_nothing() -> None:
    servicer, registry = _Answering(), CollectorRegistry()
    server = grpc.aio.server()
    add_service(server, servicer, SERVICE, Counter("bad", "test", ["method"], registry=registry),
                StallLimit(30.0, Counter("stalled", "test", ["method"], registry=registry)))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        before = kept_by_grpc()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.AvailabilityServiceStub(channel)
            for _ in range(LATE):
                call = stub.ReserveStream()
                await call.write(pb.ReserveStreamRequest())
                await call.read()
                released = [t for t in asyncio.all_tasks() if t.get_coro().__qualname__ == "_schedule_rpc_coro"]
                call.cancel()
                await asyncio.wait(released)  # the call released by grpc.aio (its task over)
        for requests in servicer.requests:  # read on after the call's end: the caller is gone, so is the stream
            assert await anext(requests, None) is None
    finally:
        await server.stop(None)
    assert kept_by_grpc() <= before  # the running server's own among them


async def test_reserve_streams_closed_early_keep_nothing_in_grpc(start_service: ServiceFactory) -> None:
    service, client = await start_service()
    skus = [f"k{n}" for n in range(16)]
    await client.record_events([receipt(f"stock-{sku}", sku, "S1", 100_000) for sku in skus])
    before = kept_by_grpc()
    for n in range(STREAMS):
        batches = [[reserve_request(f"e{n}-{b}-{sku}", [(sku, "S1", 1)], ttl_seconds=60) for sku in skus]
                   for b in range(40)]
        stream = client.reserve_stream(batches)
        async for _ in stream:
            break  # closed at its first answer, batches still in flight
        await stream.aclose()
    await client.close()
    await service.stop(grace_s=0.1)
    assert kept_by_grpc() <= before
