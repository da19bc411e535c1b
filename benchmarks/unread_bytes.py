"""Bytes of a ``ReserveStream``'s request gRPC takes from its caller before the service reads them
(docs/OPERATIONS.md, "What gRPC holds unread").

    python benchmarks/unread_bytes.py [--streams 8] [--cap-mb 100]

The caller writes batches of 50 one-line Reserves as fast as each write is taken; a write not taken within 0.5 s is
held by flow control, and the bytes taken until then are the figure. Three servers:

  grpc_own_window   a bare gRPC server (grpcio's defaults: its BDP probing grows each stream's window) whose
                    ``ReserveStream`` reads nothing, ``--streams`` streams at once on one connection (bytes a stream)
  classic           ``atp-service serve`` (the default transport, ``stream_window_bytes`` 64 KiB), its Redis paused
                    (``CLIENT PAUSE ... WRITE``): the batches it may decide read, then nothing more
  promise           the same with ``--http2-transport promise``: taken until ``--cap-mb`` (then: at least that)

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import grpc
import redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from atp_client import AtpClient, timestamp
from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_client.pb.atp.v1 import atp_pb2_grpc as pb_grpc
from atp_service import EmbeddedRedis
from benchmarks.ingest import spawn
from benchmarks.ports import held_port

HELD_S = 0.5
PER_BATCH = 50
METHOD = "/atp.v1.AvailabilityService/ReserveStream"


def batch(n: int) -> pb.ReserveStreamRequest:
    return pb.ReserveStreamRequest(reservations=[pb.ReserveRequest(
        reservation_id=f"w-{n:012d}-{i:02d}", lines=[pb.Line(sku="sku-00000001", location="store-0001", quantity=1)])
        for i in range(PER_BATCH)])


async def taken(channel: grpc.aio.Channel, cap: int) -> int:
    """Bytes one ``ReserveStream`` had taken when a write was first held (or ``cap`` passed). The first write is
    waited for whatever it takes: it connects the channel and opens the stream, whose window is open, so a host too
    busy to do that within ``HELD_S`` took it for held and measured nothing (0 bytes)."""
    call = pb_grpc.AvailabilityServiceStub(channel).ReserveStream()  # type: ignore[no-untyped-call]
    total = 0
    try:
        while total <= cap:
            message = batch(total)
            try:
                await (asyncio.wait_for(call.write(message), HELD_S) if total else call.write(message))
            except TimeoutError:
                break
            total += message.ByteSize() + 5  # and gRPC's message prefix
    finally:
        call.cancel()
    return total


async def own_window(streams: int, cap: int) -> float:
    """A bare gRPC server with grpcio's own flow control, its ``ReserveStream`` reading nothing: bytes a stream."""
    async def never_reads(_requests: Any, _context: Any) -> None:
        await asyncio.Event().wait()

    server = grpc.aio.server()
    handler = grpc.method_handlers_generic_handler("atp.v1.AvailabilityService", {
        "ReserveStream": grpc.stream_stream_rpc_method_handler(never_reads)})
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            each = await asyncio.gather(*(taken(channel, cap) for _ in range(streams)))
    finally:
        await server.stop(0)
    return round(sum(each) / streams)


async def service_taken(url: str, port: int, cap: int) -> int:
    async with AtpClient(f"127.0.0.1:{port}") as client:
        await client.wait_ready(timeout_s=60)
        await client.record_events([pb.Fact(event_id="stock", source="wms", kind=pb.FACT_KIND_RECEIPT,
                                            sku="sku-00000001", location="store-0001", quantity=1_000_000,
                                            event_time=timestamp(1_700_000_000_000))])
    with redis.Redis.from_url(url) as paused:
        paused.execute_command("CLIENT", "PAUSE", 60_000, "WRITE")  # nothing is decided: no batch answered
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                return await taken(channel, cap)
        finally:
            paused.execute_command("CLIENT", "UNPAUSE")


def service(tmp: Path, transport: str, cap: int) -> int:
    with EmbeddedRedis(tmp / transport) as server:
        port = held_port()
        proc = spawn(server.url, port, tmp / f"{transport}.log", -1, "--http2-transport", transport,
                     "--redis-timeout-s", "120")
        try:
            return asyncio.run(service_taken(server.url, port, cap))
        finally:
            proc.terminate()
            proc.wait(60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument("--cap-mb", type=float, default=100.0)
    args = parser.parse_args()
    cap = int(args.cap_mb * 1_000_000)
    with tempfile.TemporaryDirectory() as tmp:
        figures = {"streams": args.streams, "cap_bytes": cap,
                   "grpc_own_window_per_stream": asyncio.run(own_window(args.streams, cap)),
                   "classic": service(Path(tmp), "classic", cap), "promise": service(Path(tmp), "promise", cap)}
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
