"""Python bytecodes per unary Reserve through the real gRPC server: the service beside the no-op server.

``bytecodes.py`` calls the servicer directly, so it leaves out what the service runs around it for a
gRPC call: the method handler (``edge/handlers.py``: the bad-bytes check, booking the call for a
graceful stop), and whatever grpc.aio's Cython layer calls back into Python. Here the calls go
through a gRPC channel to a server in this process — the service (against an embedded Redis,
``--positions`` seeded) and then the no-op server (``noop_server.py``) — one after another, and every
bytecode the event loop's thread runs meanwhile is counted with ``sys.settrace``, except the frames
of the grpc package, protobuf and this file (the calling side's own Python). What the client side
runs of the standard library (asyncio) is counted for both servers alike, so the difference of the
two counts is the service's own Python per gRPC call. Timer work is taken off as in ``bytecodes.py``
(each server is traced as long again with no call).

    python benchmarks/bytecodes_grpc.py [--calls 300] [--top 30]

One JSON line: ``service`` and ``noop`` bytecodes per call, their ``difference``, the service's timer
share taken off, and the functions whose count differs most (service minus no-op).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from types import FrameType
from typing import Any

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_client.pb.atp.v1 import atp_pb2_grpc as pb_grpc
from atp_service import ServiceConfig
from benchmarks.bytecodes import WARM_UP, OpcodeCount, _traced
from benchmarks.noop_server import NoopServicer
from benchmarks.service_cost import reserve_request, seeded_service

SKIPPED = ("site-packages/grpc/", "site-packages/google/protobuf/", __file__)
"""Frames not counted: the calling side's gRPC and protobuf, and this harness."""


class ServerSide(OpcodeCount):
    """``OpcodeCount`` of every frame but the calling side's own (``SKIPPED``)."""

    def __call__(self, frame: FrameType, event: str, arg: Any) -> ServerSide | None:  # type: ignore[override]
        if any(skipped in frame.f_code.co_filename for skipped in SKIPPED):
            return None
        super().__call__(frame, event, arg)
        return self


@asynccontextmanager
async def noop_server() -> AsyncIterator[int]:
    """The no-op server in this process; its port."""
    server = grpc.aio.server()
    pb_grpc.add_AvailabilityServiceServicer_to_server(NoopServicer(), server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield port
    finally:
        await server.stop(0)


@asynccontextmanager
async def service_server(positions: int) -> AsyncIterator[int]:
    """The service in this process against an embedded Redis, ``positions`` seeded; its port."""
    config = ServiceConfig.from_env(port=0, metrics_port=-1, auth="off", demo=False)
    with tempfile.TemporaryDirectory(prefix="atp-bytecodes-grpc-") as tmp:
        async with seeded_service(Path(tmp), config, positions, "g", None) as service:
            yield service.port


async def count(port: int, calls: int, positions: int) -> tuple[Counter[str], Counter[str]]:
    """The bytecodes run during ``calls`` Reserves through gRPC to ``port``, and during as long idle."""
    during, idle = ServerSide(True), ServerSide(True)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        reserve = pb_grpc.AvailabilityServiceStub(channel).Reserve  # type: ignore[no-untyped-call]
        for n in range(WARM_UP):
            await reserve(reserve_request(n, positions, "g"))
        requests: list[pb.ReserveRequest] = [reserve_request(n, positions, "g")
                                             for n in range(WARM_UP, WARM_UP + calls)]
        with _traced(during):
            started = time.perf_counter()
            for request in requests:
                await reserve(request)
            took = time.perf_counter() - started
        with _traced(idle):
            await asyncio.sleep(took)
    return during.counts, idle.counts


async def both(calls: int, positions: int) -> dict[str, tuple[Counter[str], Counter[str]]]:
    async with service_server(positions) as port:
        service = await count(port, calls, positions)
    async with noop_server() as port:
        noop = await count(port, calls, positions)
    return {"service": service, "noop": noop}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=300, help="Reserves counted on each server, one after another")
    parser.add_argument("--positions", type=int, default=1000)
    parser.add_argument("--top", type=int, default=30, help="functions listed, largest difference first")
    args = parser.parse_args()
    import uvloop  # the service's default event loop

    uvloop.install()
    counted = asyncio.run(both(args.calls, args.positions))
    net: dict[str, Counter[str]] = {}
    for name, (during, idle) in counted.items():
        net[name] = during.copy()
        net[name].subtract(idle)  # the timers' share, which depends on how long the calls took
    difference = net["service"].copy()
    difference.subtract(net["noop"])
    largest = sorted(difference.items(), key=lambda item: -abs(item[1]))[:args.top]
    print(json.dumps({
        "calls": args.calls,
        "service": round(net["service"].total() / args.calls),
        "noop": round(net["noop"].total() / args.calls),
        "difference": round(difference.total() / args.calls),
        "service_timer_bytecodes_per_call": round(counted["service"][1].total() / args.calls),
        "top": {name: round(n / args.calls, 1) for name, n in largest if n},
    }))


if __name__ == "__main__":
    main()
