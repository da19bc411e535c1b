"""An order's id reserved again with the same content once its first order was forgotten (R5: past its retention, a
new attempt), on a real Redis Cluster through the service, while a group whose eviction has not come round yet still
holds the first order's part there, resolved: the new order is decided as new, never from that part (R2, R3)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_service import ManualClock
from reservation import Limits
from reservation import _orders as orders
from tests.atp_service.edge.test_api import T0, receipt
from tests.conftest import ServiceFactory, services_on

RETENTION_MS = 60_000


@pytest.fixture
async def start_service(cluster_url: str) -> AsyncIterator[ServiceFactory]:
    async with services_on(cluster_url, redis_cluster=True, input_streams=()) as start:
        yield start


@pytest.mark.parametrize("shipped", [False, True], ids=["released", "fulfilled"])
async def test_an_id_reserved_again_is_decided_anew_over_a_resolved_part_not_yet_evicted_R5_R3(
        start_service: ServiceFactory, shipped: bool) -> None:
    """Defect (found by review): the part step replayed the first order's part there as the new order's decision:
    released, the new Reserve was answered REJECTED (its hold at the other group given back); fulfilled, it was
    answered CONFIRMED, nothing held there for it and its other units committed without a Confirm."""
    clock = ManualClock(T0)
    service, client = await start_service(clock=clock, limits=Limits(retention_ms=RETENTION_MS),
                                          maintenance_interval_ms=3_600_000)  # evictions run here, by hand
    engine = service.engine
    assert engine is not None and engine.orders is not None
    a = "A"
    b = next(f"B{i}" for i in range(100) if engine.place(f"B{i}") != engine.place(a))
    await client.record_events([receipt("s1", a, "S1", 10), receipt("s2", b, "S1", 10)])
    lines = [(a, "S1", 3), (b, "S1", 2)]
    assert (await client.reserve("o", lines, ttl_seconds=600)).state == pb.RESERVATION_STATE_HELD
    if shipped:
        await client.confirm("o")
        assert (await client.fulfill("o")).state == pb.RESERVATION_STATE_FULFILLED
    else:
        assert (await client.release("o")).state == pb.RESERVATION_STATE_RELEASED
    home = engine.home_of("o")
    kept = next(g for g in (engine.place(a), engine.place(b)) if g != home)  # its eviction not come round yet
    clock.advance(RETENTION_MS + 1_000)
    for actor in engine.actors:
        if actor.shard != kept:
            for rid in actor.ledger.evict(clock.now_ms()):
                engine.routes.forget_evicted(actor.shard, rid)
    assert engine.actors[home].ledger.reservation("o") is None  # type: ignore[index]
    assert engine.actors[kept].ledger.reservation(orders.part_id("o", kept)) is not None

    again = await client.reserve("o", lines, ttl_seconds=600)
    assert again.state == pb.RESERVATION_STATE_HELD, again
    left = 7 if shipped else 10  # on hand: what the first order shipped is gone
    assert [(q.on_hand, q.reserved, q.committed) for q in await client.availability([(a, "S1"), (b, "S1")])] == [
        (left, 3, 0), (10 - 2 * shipped, 2, 0)]
    assert (await client.reserve("o", lines, ttl_seconds=600)).state == pb.RESERVATION_STATE_HELD  # a replay (R5)
