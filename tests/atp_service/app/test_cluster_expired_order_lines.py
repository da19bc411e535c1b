"""An order spanning groups on a real Redis Cluster, expired (R3): its lines read as a one-group
reservation's do on one Redis — the held units given back, none of them counted ``released`` — and what
a partial Release took before stays counted. Its parts were released by the expiry, and the order's
lines showed every held unit as released: the same reservation answered differently by deployment."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from atp_client import AtpClient
from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_service import ManualClock
from tests.atp_service.edge.test_api import T0, receipt
from tests.conftest import ServiceFactory, services_on
from tests.waiting import until


@pytest.fixture
async def start_cluster(cluster_url: str) -> AsyncIterator[ServiceFactory]:
    async with services_on(cluster_url, redis_cluster=True, input_streams=()) as start:
        yield start


async def _expired(client: AtpClient, clock: ManualClock, rid: str, ttl_ms: int) -> pb.Reservation:
    clock.advance(ttl_ms)

    async def expired() -> bool:
        return bool((await client.get_reservation(rid)).state == pb.RESERVATION_STATE_EXPIRED)

    await until(expired, f"{rid} expired")  # by housekeeping: a bound, not a timing
    return await client.get_reservation(rid)


def _line_states(rec: pb.Reservation) -> list[tuple[str, int, int, int, int]]:
    return [(line.sku, line.held, line.committed, line.fulfilled, line.released) for line in rec.lines]


async def test_an_expired_order_counts_none_of_its_held_units_released_R3(start_cluster: ServiceFactory) -> None:
    clock = ManualClock(T0)
    service, client = await start_cluster(clock=clock)
    assert service.engine is not None and service.engine.orders is not None
    place = service.engine.place
    other = next(f"B{i}" for i in range(100) if place(f"B{i}") != place("A"))
    await client.record_events([receipt("s1", "A", "S1", 10), receipt("s2", other, "S1", 10)])
    held = await client.reserve("o1", [("A", "S1", 3), (other, "S1", 2)], ttl_seconds=30)
    assert held.state == pb.RESERVATION_STATE_HELD
    await client.release("o1", [("A", "S1", 1)], operation_id="cancel-1")
    rec = await _expired(client, clock, "o1", 30_000)
    assert _line_states(rec) == [("A", 0, 0, 0, 1), (other, 0, 0, 0, 0)]  # was: released 3 and 2
    assert [(q.reserved, q.available) for q in await client.availability([("A", "S1"), (other, "S1")])] == [
        (0, 10), (0, 10)]


async def test_an_expired_one_group_reservation_reads_alike(start_service: ServiceFactory) -> None:
    """The same steps on one Redis (no saga): what the order above must read as."""
    clock = ManualClock(T0)
    _, client = await start_service(clock=clock)
    await client.record_events([receipt("s1", "A", "S1", 10), receipt("s2", "B", "S1", 10)])
    await client.reserve("o1", [("A", "S1", 3), ("B", "S1", 2)], ttl_seconds=30)
    await client.release("o1", [("A", "S1", 1)], operation_id="cancel-1")
    rec = await _expired(client, clock, "o1", 30_000)
    assert _line_states(rec) == [("A", 0, 0, 0, 1), ("B", 0, 0, 0, 0)]
