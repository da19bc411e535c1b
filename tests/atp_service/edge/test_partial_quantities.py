"""Partial release and fulfil quantities at a position that stands in several records of one
reservation (a plain line and a group line taking units at the same store), through the real gRPC
server and Redis (R1, R3, R4)."""

from __future__ import annotations

from pathlib import Path

import grpc

from atp_client import timestamp
from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_service import ManualClock
from tests.atp_service.channel_helpers import ESTATE, write_estate
from tests.atp_service.refusals import fields_of, refused
from tests.conftest import ServiceFactory

T0 = 1_700_000_000_000


def fact(event_id: str, kind: str, quantity: int, reservation_id: str = "") -> pb.Fact:
    return pb.Fact(event_id=event_id, source="wms", kind=kind, sku="A", location="store-2", quantity=quantity,
                   event_time=timestamp(T0 - 1000), reservation_id=reservation_id)


async def two_records_at_store_2(start: ServiceFactory, tmp_path: Path):  # type: ignore[no-untyped-def]
    """r1 holds 5 units of A at store-2 by a plain line and 3 more by a line naming the group
    ``north-first`` (store-2 first), confirmed: 8 units committed at store-2 in two records."""
    _, client = await start(clock=ManualClock(T0), estate=write_estate(tmp_path, ESTATE))
    (applied,) = await client.record_events([fact("in-1", "FACT_KIND_RECEIPT", 10)])
    assert applied.outcome == pb.FACT_OUTCOME_APPLIED
    held = await client.reserve("r1", [("A", "store-2", 5), ("A", "north-first", 3)], channel="web")
    assert held.state == pb.RESERVATION_STATE_HELD
    assert [(a.location, a.quantity) for line in held.lines for a in line.allocations] == [("store-2", 5),
                                                                                             ("store-2", 3)]
    await client.confirm("r1")
    return client


async def test_a_partial_fulfil_takes_the_units_of_every_record_at_the_position_R4(
        start_service: ServiceFactory, tmp_path: Path) -> None:
    client = await two_records_at_store_2(start_service, tmp_path)
    rec = await client.fulfill("r1", [("A", "store-2", 8)], operation_id="ship-1")  # was: "exceeds the 3 units"
    assert rec.state == pb.RESERVATION_STATE_FULFILLED
    assert sum(line.fulfilled for line in rec.lines) == 8
    (a,) = await client.availability([("A", "store-2")])
    assert (a.on_hand, a.committed, a.available) == (2, 0, 2)


async def test_a_partial_release_spreads_over_the_records_first_ones_first_R3(
        start_service: ServiceFactory, tmp_path: Path) -> None:
    client = await two_records_at_store_2(start_service, tmp_path)
    rec = await client.release("r1", [("A", "store-2", 6)], operation_id="cancel-6")
    assert [(line.committed, line.released) for line in rec.lines] == [(0, 5), (2, 1)]
    refusal = await refused(client.release("r1", [("A", "store-2", 3)], operation_id="cancel-3"))
    assert refusal.code == grpc.StatusCode.INVALID_ARGUMENT and fields_of(refusal) == ["lines[0].quantity"]
    assert "exceeds the 2 units outstanding" in refusal.message
    (a,) = await client.availability([("A", "store-2")])
    assert (a.on_hand, a.committed, a.available) == (10, 2, 8)


async def test_a_shipment_naming_the_reservation_fulfils_units_of_both_records_R4(
        start_service: ServiceFactory, tmp_path: Path) -> None:
    client = await two_records_at_store_2(start_service, tmp_path)
    (shipped,) = await client.record_events([fact("out-1", "FACT_KIND_SHIPMENT", 7, reservation_id="r1")])
    assert shipped.outcome == pb.FACT_OUTCOME_APPLIED and shipped.detail == ""  # was: "reservation not fulfilled"
    (a,) = await client.availability([("A", "store-2")])
    assert (a.on_hand, a.committed, a.available) == (3, 1, 2)  # was: 3, 8, -5 (the shipped units committed still)
    rec = await client.get_reservation("r1")
    assert sum(line.fulfilled for line in rec.lines) == 7


async def test_a_shipment_of_more_than_every_record_committed_fulfils_them_all_R4(
        start_service: ServiceFactory, tmp_path: Path) -> None:
    """9 units shipped naming r1, whose 8 committed at store-2 stand in records of 5 and 3: every
    committed unit left with it (capped at the sum, not at the last record's 3)."""
    client = await two_records_at_store_2(start_service, tmp_path)
    (shipped,) = await client.record_events([fact("out-1", "FACT_KIND_SHIPMENT", 9, reservation_id="r1")])
    assert shipped.outcome == pb.FACT_OUTCOME_APPLIED and shipped.detail == "", shipped.detail
    rec = await client.get_reservation("r1")
    assert rec.state == pb.RESERVATION_STATE_FULFILLED
    assert [line.fulfilled for line in rec.lines] == [5, 3]
    (a,) = await client.availability([("A", "store-2")])
    assert (a.on_hand, a.committed, a.available) == (1, 0, 1)


async def test_releasing_a_group_line_by_its_group_or_a_refused_line_names_why_it_is_refused_R3(
        start_service: ServiceFactory, tmp_path: Path) -> None:
    """A partial reservation (R2: each line alone) answers its group line under the group's name and
    a line it refused as INSUFFICIENT; a release naming either says why it is refused, precisely."""
    _, client = await start_service(clock=ManualClock(T0), estate=write_estate(tmp_path, ESTATE))
    await client.record_events([fact("in-1", "FACT_KIND_RECEIPT", 4)])
    held = await client.reserve("r2", [("A", "north-first", 3), ("A", "dc-1", 2)], channel="web", allow_partial=True)
    assert [(line.location, line.outcome) for line in held.lines] == [
        ("north-first", pb.LINE_OUTCOME_GRANTED), ("dc-1", pb.LINE_OUTCOME_INSUFFICIENT)]
    by_group = await refused(client.release("r2", [("A", "north-first", 1)], operation_id="by-group"))
    assert by_group.code == grpc.StatusCode.INVALID_ARGUMENT and fields_of(by_group) == ["lines[0]"]
    assert "group 'north-first' gave its units at store-2 (3): name those locations" in by_group.message
    not_granted = await refused(client.release("r2", [("A", "dc-1", 1)], operation_id="not-granted"))
    assert not_granted.code == grpc.StatusCode.INVALID_ARGUMENT and fields_of(not_granted) == ["lines[0].quantity"]
    assert "the line was not granted: INSUFFICIENT" in not_granted.message
    rec = await client.release("r2", [("A", "store-2", 1)], operation_id="at-store")  # the position it gave
    assert [(line.location, line.held) for line in rec.lines] == [("store-2", 2), ("dc-1", 0)]
