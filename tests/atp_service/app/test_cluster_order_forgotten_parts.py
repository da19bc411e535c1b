"""An order spanning groups on a real Redis Cluster whose parts outlive each other: a part fulfilled by
SHIPMENT facts is resolved and, after the retention window, forgotten, while its order — confirmed, so
it never expires — lives on with its other parts. What the forgotten part shipped must still count when
the order is resolved (R5: a release of a partly shipped reservation leaves it FULFILLED)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_service import ManualClock
from reservation import Limits
from reservation import _orders as orders
from tests.atp_service.edge.test_api import T0, receipt
from tests.conftest import ServiceFactory, services_on
from tests.waiting import until

RETENTION_MS = 60_000


@pytest.fixture
async def start_service(cluster_url: str) -> AsyncIterator[ServiceFactory]:
    async with services_on(cluster_url, redis_cluster=True, input_streams=()) as start:
        yield start


def _shipment(event_id: str, sku: str, quantity: int, order: str) -> pb.Fact:
    return pb.Fact(event_id=event_id, source="wms", kind=pb.FACT_KIND_SHIPMENT, sku=sku, location="S1",
                   quantity=quantity, event_time=receipt("x", sku, "S1", 1).event_time, reservation_id=order)


async def _confirmed_order(start_service: ServiceFactory) -> tuple[ManualClock, Any, Any, str, str]:
    """Order o of 3 A and 2 B (another group), held whole and confirmed, on a manual clock with a short
    retention and no housekeeping of its own: clock, engine, client and the two SKUs."""
    clock = ManualClock(T0)
    service, client = await start_service(clock=clock, limits=Limits(retention_ms=RETENTION_MS),
                                          maintenance_interval_ms=3_600_000)
    engine = service.engine
    assert engine is not None and engine.orders is not None
    a = "A"
    b = next(f"B{i}" for i in range(100) if engine.place(f"B{i}") != engine.place(a))
    await client.record_events([receipt("s1", a, "S1", 10), receipt("s2", b, "S1", 10)])
    assert (await client.reserve("o", [(a, "S1", 3), (b, "S1", 2)], ttl_seconds=600)).state == \
        pb.RESERVATION_STATE_HELD
    await client.confirm("o")
    return clock, engine, client, a, b


async def test_a_release_after_a_shipped_part_was_forgotten_still_answers_the_order_fulfilled_R5(
        start_service: ServiceFactory) -> None:
    """Order o over two groups, confirmed; group b's part shipped whole by a SHIPMENT fact (resolved
    FULFILLED), then forgotten after the retention while the order, confirmed, lives on. A whole
    Release of the rest was answered RELEASED, the shipped units shown nowhere: the order's own record
    keeps no fulfilled units (its parts hold them), and the part that did was gone."""
    clock, engine, client, a, b = await _confirmed_order(start_service)
    (shipped,) = await client.record_events([_shipment("ship-b", b, 2, "o")])
    assert shipped.outcome == pb.FACT_OUTCOME_APPLIED and not shipped.HasField("error"), shipped
    part_b = engine.actors[engine.place(b)].ledger
    assert part_b.reservation(orders.part_id("o", engine.place(b))).state.name == "FULFILLED"

    clock.advance(RETENTION_MS + 1_000)
    await engine.run_maintenance()  # forgets the resolved part, past its retention
    await until(lambda: part_b.reservation(orders.part_id("o", engine.place(b))) is None, "the shipped part forgotten")
    assert (await client.get_reservation("o")).state == pb.RESERVATION_STATE_CONFIRMED  # a's part still committed

    released = await client.release("o")
    assert [(q.on_hand, q.reserved, q.committed) for q in await client.availability([(a, "S1"), (b, "S1")])] == [
        (10, 0, 0), (8, 0, 0)]
    assert released.state == pb.RESERVATION_STATE_FULFILLED, released  # something shipped: fulfilled (R5)


async def test_a_release_after_a_part_released_by_the_order_was_forgotten_answers_the_order_released_R5(
        start_service: ServiceFactory) -> None:
    """The other way a part of a living order ends: the order's own partial Release of every line of it. The order
    records what its steps released, so that part, forgotten, is not taken for shipped: nothing was, RELEASED."""
    clock, engine, client, a, b = await _confirmed_order(start_service)
    await client.release("o", [(b, "S1", 2)], operation_id="op-b")
    part_b = engine.actors[engine.place(b)].ledger
    assert part_b.reservation(orders.part_id("o", engine.place(b))).state.name == "RELEASED"

    clock.advance(RETENTION_MS + 1_000)
    await engine.run_maintenance()
    await until(lambda: part_b.reservation(orders.part_id("o", engine.place(b))) is None, "the released part forgotten")
    released = await client.release("o")
    assert released.state == pb.RESERVATION_STATE_RELEASED, released
    assert [(q.on_hand, q.reserved, q.committed) for q in await client.availability([(a, "S1"), (b, "S1")])] == [
        (10, 0, 0), (10, 0, 0)]
