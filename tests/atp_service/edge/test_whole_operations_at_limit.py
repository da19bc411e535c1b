"""A whole Release or Fulfil sent with an ``operation_id`` once a reservation has had
``max_ops_per_reservation`` partial operations, through the real gRPC server and Redis (R3, R4, R5):
``OPERATION_LIMIT_REACHED`` says "a whole release or fulfilment still works", and so it must, whether
or not the caller names the step with an id (a client that sends an id with every change)."""

from __future__ import annotations

import grpc

from atp_client import timestamp
from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_service import ManualClock
from reservation import Limits
from tests.atp_service.refusals import refused
from tests.conftest import ServiceFactory

T0 = 1_700_000_000_000


async def _at_the_limit(start: ServiceFactory):  # type: ignore[no-untyped-def]
    """r1 confirmed with 10 units of A@S1, two partial fulfilments made (the limit: 2), a third refused."""
    _, client = await start(clock=ManualClock(T0), limits=Limits(max_ops_per_reservation=2))
    (applied,) = await client.record_events([pb.Fact(event_id="in-1", source="wms", kind=pb.FACT_KIND_RECEIPT,
                                                     sku="A", location="S1", quantity=100,
                                                     event_time=timestamp(T0 - 1000))])
    assert applied.outcome == pb.FACT_OUTCOME_APPLIED
    await client.reserve("r1", [("A", "S1", 10)])
    await client.confirm("r1")
    await client.fulfill("r1", [("A", "S1", 1)], operation_id="ship-1")
    await client.fulfill("r1", [("A", "S1", 1)], operation_id="ship-2")
    refusal = await refused(client.fulfill("r1", [("A", "S1", 1)], operation_id="ship-3"))
    assert (refusal.code, refusal.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "OPERATION_LIMIT_REACHED")
    return client


async def test_a_whole_fulfil_with_an_operation_id_works_past_the_limit_R4(start_service: ServiceFactory) -> None:
    client = await _at_the_limit(start_service)
    rec = await client.fulfill("r1", operation_id="ship-rest")  # was: OPERATION_LIMIT_REACHED
    assert rec.state == pb.RESERVATION_STATE_FULFILLED and rec.lines[0].fulfilled == 10
    again = await client.fulfill("r1", operation_id="ship-rest")  # R5: its retry is harmless
    assert again.state == pb.RESERVATION_STATE_FULFILLED and again.lines[0].fulfilled == 10
    (a,) = await client.availability([("A", "S1")])
    assert (a.on_hand, a.reserved, a.committed, a.available) == (90, 0, 0, 90)


async def test_a_whole_release_with_an_operation_id_works_past_the_limit_R3(start_service: ServiceFactory) -> None:
    client = await _at_the_limit(start_service)
    rec = await client.release("r1", operation_id="cancel-rest")  # was: OPERATION_LIMIT_REACHED
    assert rec.state == pb.RESERVATION_STATE_FULFILLED  # partly shipped: settled by the release (R5)
    assert (rec.lines[0].fulfilled, rec.lines[0].released, rec.lines[0].committed) == (2, 8, 0)
    assert (await client.release("r1", operation_id="cancel-rest")).state == pb.RESERVATION_STATE_FULFILLED
    (a,) = await client.availability([("A", "S1")])
    assert (a.on_hand, a.reserved, a.committed, a.available) == (98, 0, 0, 98)


async def test_a_partial_operation_past_the_limit_is_still_refused(start_service: ServiceFactory) -> None:
    client = await _at_the_limit(start_service)
    refusal = await refused(client.release("r1", [("A", "S1", 1)], operation_id="cancel-1"))
    assert (refusal.code, refusal.reason, refusal.metadata.get("limit")) == (
        grpc.StatusCode.FAILED_PRECONDITION, "OPERATION_LIMIT_REACHED", "max_ops_per_reservation")
    (a,) = await client.availability([("A", "S1")])
    assert (a.on_hand, a.committed) == (98, 8)
