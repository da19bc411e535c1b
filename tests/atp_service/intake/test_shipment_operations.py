"""R4 by SHIPMENT facts: however many facts fulfil a reservation, each fulfils its units.

A fact's fulfilment is made idempotent by the fact's own identity (E8: a resend is a duplicate and
fulfils nothing), so it is not one of the reservation's partial operations that
``max_ops_per_reservation`` bounds: counted there, the 65th fact naming a confirmed reservation — a
parcel of a line shipped in many, or a line of a 65-line order shipped under one id — moved the stock
and fulfilled nothing, its units committed for good (Q3) and counted twice against availability.
"""

from __future__ import annotations

from atp_client import AtpClient, timestamp
from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_service import ManualClock
from tests.atp_service.fact_helpers import F
from tests.conftest import ServiceFactory

T0 = 1_700_000_000_000
PARCELS = 70  # past max_ops_per_reservation (64 by default)


def shipment(event_id: str, location: str, quantity: int = 1) -> pb.Fact:
    return pb.Fact(event_id=event_id, source="wms", kind=pb.FACT_KIND_SHIPMENT, sku="A", location=location,
                   quantity=quantity, event_time=timestamp(T0 - 10), reservation_id="o1")


async def test_a_line_shipped_in_more_parcels_than_max_ops_per_reservation_is_fulfilled_whole_R4(
        start_service: ServiceFactory) -> None:
    _, client = await start_service(clock=ManualClock(T0))
    await client.record_events([F("in", "RECEIPT", "A", "DC", 100, T0 - 5000).pb()])
    await client.reserve("o1", [("A", "DC", PARCELS)])
    await client.confirm("o1")
    results = await client.record_events([shipment(f"parcel-{n}", "DC") for n in range(PARCELS)])
    assert [(r.outcome, r.detail) for r in results] == [(pb.FACT_OUTCOME_APPLIED, "")] * PARCELS
    await fulfilled_whole(client)
    _, restarted = await start_service(clock=ManualClock(T0 + 1000))  # replays the log (E10): the first is fenced
    await fulfilled_whole(restarted)
    again = await restarted.record_events([shipment("parcel-0", "DC")])
    assert again[0].outcome == pb.FACT_OUTCOME_DUPLICATE  # E8: a resend fulfils nothing again


async def fulfilled_whole(client: AtpClient) -> None:
    rec = await client.get_reservation("o1")
    assert rec.state == pb.RESERVATION_STATE_FULFILLED and rec.lines[0].fulfilled == PARCELS
    (a,) = await client.availability([("A", "DC")])
    assert (a.on_hand, a.committed, a.available) == (100 - PARCELS, 0, 100 - PARCELS)  # nothing counted twice


async def test_one_shipment_of_an_order_with_more_lines_than_max_ops_per_reservation_fulfils_every_line_R4(
        start_service: ServiceFactory) -> None:
    _, client = await start_service(clock=ManualClock(T0))
    locations = [f"S{n}" for n in range(PARCELS)]
    await client.record_events([F(f"in-{loc}", "RECEIPT", "A", loc, 2, T0 - 5000).pb() for loc in locations])
    await client.reserve("o1", [("A", loc, 1) for loc in locations])
    await client.confirm("o1")
    results = await client.record_events([shipment("ship-1", loc) for loc in locations])  # one id, every line
    assert [(r.outcome, r.detail) for r in results] == [(pb.FACT_OUTCOME_APPLIED, "")] * PARCELS
    rec = await client.get_reservation("o1")
    assert rec.state == pb.RESERVATION_STATE_FULFILLED
    assert [(a.on_hand, a.committed) for a in await client.availability([("A", loc) for loc in locations])] == \
        [(1, 0)] * PARCELS
