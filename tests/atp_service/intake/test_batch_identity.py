"""E8 within one RecordEvents call: facts sharing an identity are decided in the call's order."""

from __future__ import annotations

from atp_client import timestamp
from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_service import ManualClock
from tests.atp_service.fact_helpers import F
from tests.conftest import ServiceFactory

T0 = 1_700_000_000_000


async def test_a_shipment_before_a_sale_of_its_identity_in_one_call_is_the_one_applied_E8(
        start_service: ServiceFactory) -> None:
    _, client = await start_service(clock=ManualClock(T0))
    await client.record_events([F("r", "RECEIPT", "A", "S1", 10, T0 - 5000).pb()])
    await client.reserve("o1", [("A", "S1", 4)])
    await client.confirm("o1")
    ship = pb.Fact(event_id="x-1", source="wms", kind=pb.FACT_KIND_SHIPMENT, sku="A", location="S1", quantity=4,
                   event_time=timestamp(T0 - 10), reservation_id="o1")
    sale = F("x-1", "SALE", "A", "S1", 1, T0 - 10, source="wms").pb()
    results = await client.record_events([ship, sale])
    assert [r.outcome for r in results] == [pb.FACT_OUTCOME_APPLIED, pb.FACT_OUTCOME_QUARANTINED]
    rec = await client.get_reservation("o1")
    assert rec.state == pb.RESERVATION_STATE_FULFILLED
    (a,) = await client.availability([("A", "S1")])
    assert (a.on_hand, a.committed) == (6, 0)


async def test_a_fact_after_a_shipment_in_one_call_sees_the_stream_time_the_shipment_left_E6(
        start_service: ServiceFactory) -> None:
    """Sent in one call or in two, the same facts in the same order are decided alike: a SALE stamped a
    grace window before the SHIPMENT listed ahead of it is late (E6), not applied first."""
    _, client = await start_service(clock=ManualClock(T0))
    await client.record_events([F("r", "RECEIPT", "A", "S1", 10, T0 - 90_000_000).pb()])
    await client.reserve("o1", [("A", "S1", 4)])
    await client.confirm("o1")
    ship = pb.Fact(event_id="p-1", source="wms", kind=pb.FACT_KIND_SHIPMENT, sku="A", location="S1", quantity=4,
                   event_time=timestamp(T0 - 10), reservation_id="o1")
    sale = F("s-1", "SALE", "A", "S1", 1, T0 - 90_000_000 + 5, source="pos").pb()
    results = await client.record_events([ship, sale])
    assert [r.outcome for r in results] == [pb.FACT_OUTCOME_APPLIED, pb.FACT_OUTCOME_QUARANTINED]
    assert results[1].quarantine_reason == pb.QUARANTINE_REASON_LATE
    (a,) = await client.availability([("A", "S1")])
    assert (a.on_hand, a.committed) == (6, 0)
