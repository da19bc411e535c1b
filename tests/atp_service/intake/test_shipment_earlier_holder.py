"""A late SHIPMENT fact of a reservation id's earlier holder, on a real service and a real redis-server: the id was
reserved again once that holder was forgotten (R5: its retention passed), and the fact, stamped while the earlier
holder was live, is let in by the grace (E6). Stamped before the new reservation was made by half the retention or
more (the other half: the margin for clocks), it is no shipment of the new holder: it moves the stock alone and is
answered, counted and logged not fulfilled (Q1, Q3, R4) — live and after a replay alike (E10)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import grpc
import pytest

from atp_client import AtpClient, timestamp
from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_service import ManualClock
from reservation import Limits
from reservation._unfulfilled import UNFULFILLED
from tests.atp_service.fact_helpers import unfulfilled_told
from tests.conftest import ServiceFactory

T0 = 1_700_000_000_000
SKEW_MS = Limits().fact_future_skew_ms
RETENTION_MS = Limits().retention_ms


def shipment(event_id: str, at: int, quantity: int = 1) -> pb.Fact:
    return pb.Fact(event_id=event_id, source="wms", kind=pb.FACT_KIND_SHIPMENT, sku="A", location="DC",
                   quantity=quantity, event_time=timestamp(at), reservation_id="r")


async def reserved_again(client: AtpClient, maintenance: Callable[[], Awaitable[None]], clock: ManualClock) -> int:
    """``r`` (2 A@DC) reserved, confirmed and released at ``T0``, forgotten past its retention, then reserved again
    (3 A@DC) and confirmed: the new holder's creation time."""
    await client.reserve("r", [("A", "DC", 2)], ttl_seconds=60)
    await client.confirm("r")
    await client.release("r")
    clock.advance(RETENTION_MS + 60_000)
    await maintenance()
    with pytest.raises(grpc.aio.AioRpcError) as gone:
        await client.get_reservation("r")
    assert gone.value.code() == grpc.StatusCode.NOT_FOUND  # the earlier holder forgotten (R5)
    await client.reserve("r", [("A", "DC", 3)], ttl_seconds=60)
    assert (await client.confirm("r")).state == pb.RESERVATION_STATE_CONFIRMED
    return clock.now_ms()


async def committed_to(client: AtpClient) -> tuple[int, int, int, int]:
    """(the reservation's state, its line's committed units, on_hand, committed at A@DC)."""
    rec = await client.get_reservation("r")
    (at,) = await client.availability([("A", "DC")])
    return rec.state, rec.lines[0].committed, at.on_hand, at.committed


async def test_an_earlier_holder_s_late_shipment_fulfils_nothing_of_the_id_reserved_again_Q3_R4_E10(
        start_service: ServiceFactory, caplog: pytest.LogCaptureFixture) -> None:
    """Defect: the fact fulfilled the new reservation (CONFIRMED -> its unit out of committed) though nothing of it
    had shipped; the rest of its units then looked shipped to none, one of them lost to the new holder. Now the
    stock moves alone (on_hand 9), the new holder keeps its 3 committed; a resend is a duplicate (E8). A shipment
    stamped the skew E7 allows before the new reservation was made is still its own and fulfils it."""
    clock = ManualClock(T0)
    service, client = await start_service(clock=clock)
    assert service.engine is not None
    await client.record_events([pb.Fact(event_id="stock", source="wms", kind=pb.FACT_KIND_RECEIPT, sku="A",
                                        location="DC", quantity=10, event_time=timestamp(T0 - 1_000))])
    made = await reserved_again(client, service.engine.run_maintenance, clock)
    assert made - T0 > RETENTION_MS // 2

    (late,) = await client.record_events([shipment("old-parcel", T0 + 1)])  # the earlier holder's, stamped then
    assert late.outcome == pb.FACT_OUTCOME_APPLIED and late.detail.startswith(UNFULFILLED), late
    assert "earlier holder" in late.detail and unfulfilled_told(service, "earlier_holder") == 1, late
    (line,) = [r for r in caplog.records if getattr(r, "event", "") == "shipment_not_fulfilled"]
    assert (line.reservation_id, line.event_id) == ("r", "old-parcel"), line  # type: ignore[attr-defined]
    assert await committed_to(client) == (pb.RESERVATION_STATE_CONFIRMED, 3, 9, 3), \
        "the earlier holder's shipment fulfilled the new reservation"
    (again,) = await client.record_events([shipment("old-parcel", T0 + 1)])
    assert again.outcome == pb.FACT_OUTCOME_DUPLICATE, again  # its identity recorded once (E8)

    (own,) = await client.record_events([shipment("new-parcel", made - SKEW_MS)])  # within the skew: its own
    assert (own.outcome, own.detail) == (pb.FACT_OUTCOME_APPLIED, ""), own
    assert await committed_to(client) == (pb.RESERVATION_STATE_CONFIRMED, 2, 8, 2)

    _, restarted = await start_service(clock=ManualClock(clock.now_ms()))  # replays the log (E10)
    assert await committed_to(restarted) == (pb.RESERVATION_STATE_CONFIRMED, 2, 8, 2)
    (resent,) = await restarted.record_events([shipment("old-parcel", T0 + 1)])
    assert resent.outcome == pb.FACT_OUTCOME_DUPLICATE, resent
    (later,) = await restarted.record_events([shipment("old-parcel-2", T0 + 2)])  # judged from the restored record
    assert later.outcome == pb.FACT_OUTCOME_APPLIED and later.detail.startswith(UNFULFILLED), later
    assert await committed_to(restarted) == (pb.RESERVATION_STATE_CONFIRMED, 2, 7, 2)


async def test_a_shipment_from_a_clock_behind_the_service_s_by_more_than_the_skew_fulfils_its_reservation_R4_E8(
        start_service: ServiceFactory) -> None:
    """The service's clock runs 10 minutes ahead of the WMS's (a host whose time source failed, or a group taken over
    from one: ``GroupClock`` counts from it), twice ``fact_future_skew_ms``; the retention is far longer. ``r``,
    reserved and confirmed, ships a minute after it was made: stamped by the WMS's clock 9 minutes before ``r``'s
    ``created_at``. Defect: taken for an earlier holder's (the skew, 5 min, as the margin), it fulfilled nothing:
    ``r``'s units stayed committed for good beside the unit shipped (Q3), and the same shipment fulfilled a
    reservation made by another process whose clock was right (E8). An earlier holder was forgotten a whole retention
    after it was resolved (R5): half of it is the margin for clocks, as an order's parts are told (R3)."""
    ahead = 2 * SKEW_MS
    clock = ManualClock(T0 + ahead)
    _, client = await start_service(clock=clock)
    await client.record_events([pb.Fact(event_id="stock", source="wms", kind=pb.FACT_KIND_RECEIPT, sku="A",
                                        location="DC", quantity=10, event_time=timestamp(T0 - 1_000))])
    await client.reserve("r", [("A", "DC", 3)], ttl_seconds=600)
    assert (await client.confirm("r")).state == pb.RESERVATION_STATE_CONFIRMED
    clock.advance(60_000)
    (shipped,) = await client.record_events([shipment("parcel", clock.now_ms() - ahead)])  # by the WMS's clock
    assert (shipped.outcome, shipped.detail) == (pb.FACT_OUTCOME_APPLIED, ""), shipped
    assert await committed_to(client) == (pb.RESERVATION_STATE_CONFIRMED, 2, 9, 2), "its own shipment fulfilled none"
