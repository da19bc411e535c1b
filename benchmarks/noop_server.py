"""The ceiling: a gRPC server with the service's message shapes that decides nothing and stores nothing.

Same grpc.aio + uvloop stack as the service, so ``service_ops / ceiling_ops``
is the share of Python gRPC's own throughput the service keeps.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc

from atp_client import timestamp
from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_client.pb.atp.v1 import atp_pb2_grpc as pb_grpc


def _answer(req: pb.ReserveRequest) -> pb.ReserveResponse:
    return pb.ReserveResponse(
        reservation_id=req.reservation_id,
        state=pb.RESERVATION_STATE_HELD,
        lines=[pb.LineResult(sku=ln.sku, location=ln.location, requested=ln.quantity, granted=ln.quantity,
                             outcome=pb.LINE_OUTCOME_GRANTED, available=1000) for ln in req.lines],
        expire_time=timestamp(1000),
    )


class NoopServicer(pb_grpc.AvailabilityServiceServicer):
    async def Reserve(self, request: pb.ReserveRequest, context: Any) -> pb.ReserveResponse:
        return _answer(request)

    async def ReserveStream(self, request_iterator: AsyncIterator[pb.ReserveStreamRequest],
                            context: Any) -> AsyncIterator[pb.ReserveStreamResponse]:
        async for batch in request_iterator:
            yield pb.ReserveStreamResponse(outcomes=[
                pb.ReserveOutcome(reservation_id=r.reservation_id, response=_answer(r)) for r in batch.reservations
            ])


async def serve(port: int) -> None:
    server = grpc.aio.server()
    pb_grpc.add_AvailabilityServiceServicer_to_server(NoopServicer(), server)  # type: ignore[no-untyped-call]
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print("ready", flush=True)
    await server.wait_for_termination()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--event-loop", choices=("uvloop", "asyncio"), default="uvloop",
                        help="the service's default is uvloop (ATP_EVENT_LOOP)")
    args = parser.parse_args()
    if args.event_loop == "uvloop":
        import uvloop

        uvloop.install()
    asyncio.run(serve(args.port))
