"""``atp_reservations_total`` against the real gRPC server and a real Redis: a retried Confirm, Release or Fulfil
(answered from the record, nothing changed: R5) is counted ``replayed`` as a retried Reserve is, not as a second
resolution."""

from __future__ import annotations

from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_service import AtpService, ManualClock
from tests.atp_service.edge.test_api import T0, stocked
from tests.conftest import ServiceFactory

OUTCOMES = ("held", "rejected", "confirmed", "released", "fulfilled", "replayed", "error")


def counted(service: AtpService) -> dict[str, float]:
    """``atp_reservations_total`` by outcome, those above 0."""
    registry = service.metrics.registry
    values = {outcome: registry.get_sample_value("atp_reservations_total", {"outcome": outcome}) or 0.0
              for outcome in OUTCOMES}
    return {outcome: value for outcome, value in values.items() if value}


async def test_retried_resolutions_are_counted_replayed_not_again(start_service: ServiceFactory) -> None:
    service, client = await stocked(start_service, ManualClock(T0))
    await client.reserve("r1", [("A", "S1", 3)])
    await client.reserve("r1", [("A", "S1", 3)])  # a retried Reserve: replayed
    await client.confirm("r1")
    await client.confirm("r1")  # retried: the record answers, nothing changes
    await client.fulfill("r1", [("A", "S1", 1)], operation_id="ship-1")
    await client.fulfill("r1", [("A", "S1", 1)], operation_id="ship-1")
    await client.release("r1")
    rec = await client.release("r1")
    assert (rec.state, rec.lines[0].fulfilled, rec.lines[0].released) == (pb.RESERVATION_STATE_FULFILLED, 1, 2)
    await client.reserve("r2", [("B", "S1", 1)])
    await client.confirm("r2")
    await client.fulfill("r2")
    await client.fulfill("r2")
    assert counted(service) == {"held": 2, "confirmed": 2, "fulfilled": 2, "released": 1, "replayed": 5}

