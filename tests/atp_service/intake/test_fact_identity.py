"""E8 through the service: a fact's identity is (source, event_id) at its position, whatever the shards."""

from __future__ import annotations

import pytest

from atp_client import timestamp
from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_service import ManualClock
from tests.atp_service.fact_helpers import F
from tests.conftest import ServiceFactory

T0 = 1_700_000_000_000


@pytest.mark.parametrize("shards", [1, 4])
async def test_a_till_receipts_lines_sharing_an_id_are_all_applied_on_any_sharding_E8(
        start_service: ServiceFactory, shards: int) -> None:
    _, client = await start_service(clock=ManualClock(T0), shards=shards)
    lines = [F("till-7", "SALE", sku, loc, 1, T0 - 10) for sku, loc in (("A", "S1"), ("B", "S1"), ("A", "S2"))]
    results = await client.record_events([f.pb() for f in lines])
    assert [r.outcome for r in results] == [pb.FACT_OUTCOME_APPLIED] * 3
    again = await client.record_events([f.pb() for f in lines])
    assert [r.outcome for r in again] == [pb.FACT_OUTCOME_DUPLICATE] * 3
    assert [a.on_hand for a in await client.availability([("A", "S1"), ("B", "S1"), ("A", "S2")])] == [-1] * 3


async def test_shipment_lines_sharing_an_id_fulfil_one_reservation_at_each_position_E8_R4(
        start_service: ServiceFactory) -> None:
    _, client = await start_service(clock=ManualClock(T0))
    await client.record_events([F("r1", "RECEIPT", "A", "S1", 5, T0 - 5000).pb(),
                                F("r2", "RECEIPT", "B", "S1", 5, T0 - 5000).pb()])
    await client.reserve("o1", [("A", "S1", 2), ("B", "S1", 3)])
    await client.confirm("o1")
    ship = [pb.Fact(event_id="pick-1", source="wms", kind=pb.FACT_KIND_SHIPMENT, sku=sku, location="S1", quantity=qty,
                    event_time=timestamp(T0 - 10), reservation_id="o1") for sku, qty in (("A", 2), ("B", 3))]
    results = await client.record_events(ship)
    assert [(r.outcome, r.HasField("error")) for r in results] == [(pb.FACT_OUTCOME_APPLIED, False)] * 2
    rec = await client.get_reservation("o1")
    assert rec.state == pb.RESERVATION_STATE_FULFILLED and [ln.fulfilled for ln in rec.lines] == [2, 3]
    assert [(a.on_hand, a.committed) for a in await client.availability([("A", "S1"), ("B", "S1")])] == \
        [(3, 0), (2, 0)]
