"""What gRPC holds of a call's request before the service reads it, against the real gRPC server and
Redis: a ReserveStream whose caller writes past the batches being decided has at most
``stream_window_bytes`` of them taken from it, whatever the connection's measured bandwidth."""

from __future__ import annotations

import asyncio

import grpc
import pytest
import redis

from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_client.pb.atp.v1 import atp_pb2_grpc as pb_grpc
from atp_service.config import ServiceConfig
from tests.atp_service.edge.test_api import receipt
from tests.conftest import ServiceFactory

HELD_S = 0.5
"""A write not taken within this is held by flow control, the service reading nothing more. Never a timing the
test relies on: a write cut short by a slow machine only counts fewer bytes taken, below the bound all the same."""
PER_BATCH = 50


def _batch(n: int) -> pb.ReserveStreamRequest:
    return pb.ReserveStreamRequest(reservations=[pb.ReserveRequest(
        reservation_id=f"w-{n}-{i}", lines=[pb.Line(sku="A", location="DC", quantity=1)]) for i in range(PER_BATCH)])


async def test_a_stream_whose_batches_wait_takes_no_more_than_its_window(
        start_service: ServiceFactory, redis_url: str) -> None:
    """Redis paused: the service reads the batches it may decide (``max_stream_inflight`` and the two in hand),
    then waits. gRPC took the rest of what the caller wrote, unread, in this process's memory: its BDP probing
    grew the stream's window with the connection's bandwidth, and a caller writing as fast as it could had
    4.6 MB taken within 1.4 s (4.2 MB a stream on each of 8 streams), for each of ``max_reserve_streams``
    streams. The window is ``stream_window_bytes``, fixed: past it the caller's write waits."""
    cfg = ServiceConfig()
    service, client = await start_service(redis_timeout_s=30.0)  # the batches wait for Redis: not refused meanwhile
    await client.record_events([receipt("in", "A", "DC", 10)])
    batch_bytes = _batch(10**6).ByteSize() + 5  # and gRPC's message prefix
    read = (cfg.max_stream_inflight + 2) * batch_bytes
    bound = cfg.stream_window_bytes + read + 64 * 1024  # and what the caller's own gRPC holds as written
    taken = 0
    async with grpc.aio.insecure_channel(f"127.0.0.1:{service.port}") as channel:
        call = pb_grpc.AvailabilityServiceStub(channel).ReserveStream()  # type: ignore[no-untyped-call]
        await call.initial_metadata()
        with redis.Redis.from_url(redis_url) as paused:
            paused.execute_command("CLIENT", "PAUSE", 20_000, "WRITE")  # nothing is decided: no batch answered
            try:
                while taken <= bound:  # past it: failed already, no need to write on
                    batch = _batch(taken)
                    try:
                        await asyncio.wait_for(call.write(batch), HELD_S)
                    except TimeoutError:
                        break  # held: the service reads no more until a batch is decided
                    taken += batch.ByteSize() + 5
            finally:
                paused.execute_command("CLIENT", "UNPAUSE")
                call.cancel()
    assert taken <= bound, f"{taken} bytes (and counting) taken from a stream the service reads {read} of"


@pytest.mark.parametrize("window", [0, 1023, (1 << 30) + 1])
def test_the_stream_window_is_refused_outside_what_grpc_announces(window: int) -> None:
    with pytest.raises(ValueError, match=r"^stream_window_bytes: must be within \[1024, 1073741824\]"):
        ServiceConfig(stream_window_bytes=window)
