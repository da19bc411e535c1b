"""A ReserveStream cut by its caller while its batches' parts wait on Redis at the process it reached and
at the owner it forwarded them to (``ownership = leases``): each order, its lines in groups of both
processes, is held whole or not at all, and a retry with the same ids replays exactly those (R5, R8)."""

from __future__ import annotations

import contextlib

import grpc

from atp_client.pb.atp.v1 import atp_pb2 as pb
from tests.atp_service.app.test_processes import start_process
from tests.atp_service.app.test_processes_split import item, reserved, split_tasks, stocked_pair
from tests.atp_service.edge.test_abandoned_streams import writes_paused
from tests.atp_service.edge.test_servicer import stream_tasks
from tests.conftest import ServiceFactory
from tests.waiting import until

__all__ = ["start_process"]  # the fixture, used here by name


def _order(rid: str, here: str, there: str) -> pb.ReserveRequest:
    return pb.ReserveRequest(reservation_id=rid, lines=[pb.Line(sku=here, location="DC", quantity=1),
                                                         pb.Line(sku=there, location="DC", quantity=1)])


async def test_a_split_stream_cut_while_in_flight_holds_each_order_whole_or_not_R8(
        start_process: ServiceFactory, redis_url: str) -> None:
    running, here, there = await stocked_pair(start_process)
    (first, client), (second, other) = running
    batches = [pb.ReserveStreamRequest(reservations=[_order(f"o{k}", here, there), item(f"t{k}", there, 1)])
               for k in range(3)]
    rids = [r.reservation_id for b in batches for r in b.reservations]
    with writes_paused(redis_url):
        call = client.stub.ReserveStream()
        for b in batches:
            await call.write(b)
        await until(lambda: len(split_tasks()) >= 2, "the stream's batches being decided", 20)
        call.cancel()
        with contextlib.suppress(grpc.aio.AioRpcError):
            await call.code()
    await until(lambda: first._servicer.reserve_streams == 0 and second._servicer.reserve_streams == 0
                and not stream_tasks() and not split_tasks(), "the cut stream settled at both", 30)
    held: list[str] = []
    for rid in rids:
        try:
            got = await other.stub.GetReservation(pb.GetReservationRequest(reservation_id=rid))
        except grpc.aio.AioRpcError as exc:
            assert exc.code() == grpc.StatusCode.NOT_FOUND, exc
            continue
        if got.reservation.state == pb.RESERVATION_STATE_HELD:
            held.append(rid)
    orders = [r for r in held if r.startswith("o")]
    singles = [r for r in held if r.startswith("t")]
    assert (await reserved(running, here), await reserved(running, there)) == (
        len(orders), len(orders) + len(singles)), held
    retry = other.stub.ReserveStream()
    for b in batches:
        await retry.write(b)
        for o in (await retry.read()).outcomes:
            assert not o.HasField("error"), o
            assert o.response.replayed == (o.reservation_id in held), (o, held)
    await retry.done_writing()
    assert await retry.code() == grpc.StatusCode.OK
    assert (await reserved(running, here), await reserved(running, there)) == (3, 6)
