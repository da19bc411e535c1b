"""``atp_reservations_total`` of an order spanning groups (its saga) on a real Redis Cluster: a partial Release
retried once the order's TTL passed expires it on the way (R3) and answers it, the release done before (R5)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_service import ManualClock
from tests.atp_service.edge.test_api import T0, receipt
from tests.atp_service.edge.test_reservation_counts import counted
from tests.conftest import ServiceFactory, services_on


@pytest.fixture
async def start_service(cluster_url: str) -> AsyncIterator[ServiceFactory]:
    async with services_on(cluster_url, redis_cluster=True, input_streams=()) as start:
        yield start


async def test_a_retried_release_of_an_order_past_its_ttl_is_replayed(start_service: ServiceFactory) -> None:
    """Counted ``released`` again before: the saga told ``done is None``, and the retry planned the expiry."""
    clock = ManualClock(T0)
    service, client = await start_service(clock=clock, maintenance_interval_ms=3_600_000)  # no sweep meanwhile
    engine = service.engine
    assert engine is not None and engine.orders is not None
    b = next(f"B{i}" for i in range(100) if engine.place(f"B{i}") != engine.place("A"))
    await client.record_events([receipt("s1", "A", "S1", 10), receipt("s2", b, "S1", 10)])
    await client.reserve("o", [("A", "S1", 3), (b, "S1", 2)], ttl_seconds=60)
    await client.release("o", [("A", "S1", 1)], operation_id="p1")
    clock.advance(61_000)
    rec = await client.release("o", [("A", "S1", 1)], operation_id="p1")
    assert rec.state == pb.RESERVATION_STATE_EXPIRED, rec
    assert counted(service) == {"held": 1, "released": 1, "replayed": 1}
