"""A Reserve decided once another hold's TTL has passed, before housekeeping's next pass, through the
real gRPC server and Redis (R2, R3): the hold holds nothing then. Its units refused the Reserve — a
refusal its id replays for good (R5) — while a Confirm of the hold at the same moment answered it
EXPIRED and a third Reserve then got the units. Housekeeping is set to pass once an hour here, so
that no pass can run in between: the Reserve's own turn must expire the hold."""

from __future__ import annotations

import grpc

from atp_client._client import reserve_request
from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_service import ManualClock
from tests.atp_service.edge.test_api import T0, receipt
from tests.atp_service.refusals import told
from tests.conftest import ServiceFactory

HOUR_MS = 3_600_000


async def _all_held_then_due(start: ServiceFactory):  # type: ignore[no-untyped-def]
    """r1 holds every unit of A@S1 (10) for 30 s, and 30 s have passed: r1 is due, not yet expired."""
    clock = ManualClock(T0)
    _, client = await start(clock=clock, maintenance_interval_ms=HOUR_MS)
    await client.record_events([receipt("s1", "A", "S1", 10)])
    assert (await client.reserve("r1", [("A", "S1", 10)], ttl_seconds=30)).state == pb.RESERVATION_STATE_HELD
    clock.advance(30_000)
    return client


async def test_a_reserve_takes_the_units_of_a_hold_whose_ttl_has_passed_R2_R3(start_service: ServiceFactory) -> None:
    client = await _all_held_then_due(start_service)
    r2 = await client.reserve("r2", [("A", "S1", 10)])
    assert (r2.state, r2.lines[0].available) == (pb.RESERVATION_STATE_HELD, 10)  # was: REJECTED, available 0
    assert (await client.get_reservation("r1")).state == pb.RESERVATION_STATE_EXPIRED
    assert await told(client.confirm("r1")) == (grpc.StatusCode.FAILED_PRECONDITION, "RESERVATION_EXPIRED")
    (a,) = await client.availability([("A", "S1")])
    assert (a.reserved, a.available) == (10, 0)  # r2's units, r1's gone back


async def test_a_reserve_stream_item_takes_them_too_R2_R3(start_service: ServiceFactory) -> None:
    client = await _all_held_then_due(start_service)
    answers = [out async for out in client.reserve_stream([[reserve_request("r2", [("A", "S1", 10)])]])]
    (outcome,) = answers[0].outcomes
    assert outcome.response.state == pb.RESERVATION_STATE_HELD, outcome  # was: REJECTED
    assert (await client.get_reservation("r1")).state == pb.RESERVATION_STATE_EXPIRED
    (a,) = await client.availability([("A", "S1")])
    assert a.reserved == 10


async def test_a_hold_not_yet_due_still_refuses_R2(start_service: ServiceFactory) -> None:
    clock = ManualClock(T0)
    _, client = await start_service(clock=clock, maintenance_interval_ms=HOUR_MS)
    await client.record_events([receipt("s1", "A", "S1", 10)])
    await client.reserve("r1", [("A", "S1", 10)], ttl_seconds=30)
    clock.advance(29_999)
    r2 = await client.reserve("r2", [("A", "S1", 1)])
    assert (r2.state, r2.lines[0].available) == (pb.RESERVATION_STATE_REJECTED, 0)
    assert (await client.get_reservation("r1")).state == pb.RESERVATION_STATE_HELD
