"""A shard at its bound on live reservations whose holds are past their TTL (housekeeping not come by
yet): a hold past its TTL holds nothing when a Reserve is decided (R2, R3), so a new id is granted there —
one process expires the holds in the Reserve's turn first. With several processes (``ownership = leases``)
the check made before a new id is claimed (``IdGuard._ask``), and an order's at its home (``order_opened``),
counted them live and refused it CAPACITY_REACHED: the answer hung on the deployment. On a real service and
Redis, housekeeping held off (each hold's expiry is the Reserve's to find)."""

from __future__ import annotations

import zlib
from typing import Any

import pytest

from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_service import AtpService, ManualClock
from reservation import Limits
from tests.atp_service.edge.test_api import T0, receipt
from tests.conftest import ServiceFactory
from tests.ports import held_port
from tests.waiting import until

TTL_S = 60


async def _started(start_service: ServiceFactory, ownership: str, bound: int) -> tuple[ManualClock, AtpService, Any]:
    clock = ManualClock(T0)
    leased = {"ownership": "leases", "lease_ms": 5_000, "balance_ms": 200} if ownership == "leases" else {}
    service, client = await start_service(clock=clock, port=held_port(), host="127.0.0.1", shards=2, input_streams=(),
                                          maintenance_interval_ms=3_600_000,
                                          limits=Limits(max_live_reservations_per_shard=bound), **leased)
    engine = service.engine
    assert engine is not None
    await until(lambda: all(not actor.vacant for actor in engine.actors), "both groups served")
    return clock, service, client


@pytest.mark.parametrize("ownership", ["keyspace", "leases"])
@pytest.mark.parametrize("stream", [False, True])
async def test_a_new_id_at_a_shard_full_of_holds_past_their_ttl_is_granted_R3(
        start_service: ServiceFactory, ownership: str, stream: bool) -> None:
    clock, _, client = await _started(start_service, ownership, bound=3)
    await client.record_events([receipt("s1", "A", "S1", 100)])
    for n in range(3):
        await client.reserve(f"fill-{n}", [("A", "S1", 1)], ttl_seconds=TTL_S)
    clock.advance(TTL_S * 1000 + 1)
    if stream:
        batch = [pb.ReserveRequest(reservation_id="new", lines=[pb.Line(sku="A", location="S1", quantity=1)])]
        ((outcome,),) = [r.outcomes async for r in client.reserve_stream([batch])]
        assert outcome.WhichOneof("result") == "response", outcome
        assert outcome.response.state == pb.RESERVATION_STATE_HELD
    else:
        assert (await client.reserve("new", [("A", "S1", 1)], ttl_seconds=TTL_S)).state == pb.RESERVATION_STATE_HELD
    assert (await client.get_reservation("fill-0")).state == pb.RESERVATION_STATE_EXPIRED


@pytest.mark.parametrize("ownership", ["keyspace", "leases"])
async def test_a_new_order_spanning_groups_at_a_home_full_of_holds_past_their_ttl_is_granted_R3(
        start_service: ServiceFactory, ownership: str) -> None:
    """Leased, its record at its home (and its part there) is opened by ``order_opened``; in one process
    it is a Reserve spanning shards, decided by the coordinator."""
    clock, _, client = await _started(start_service, ownership, bound=2)
    low, high = sorted(("k0", next(f"k{i}" for i in range(64) if zlib.crc32(f"k{i}".encode()) % 2
                                   != zlib.crc32(b"k0") % 2)), key=lambda sku: zlib.crc32(sku.encode()) % 2)
    await client.record_events([receipt("s1", low, "DC", 10), receipt("s2", high, "DC", 10)])
    for n in range(2):
        await client.reserve(f"fill-{n}", [(low, "DC", 1)], ttl_seconds=TTL_S)  # the home at its bound
    clock.advance(TTL_S * 1000 + 1)
    granted = await client.reserve("order", [(low, "DC", 1), (high, "DC", 1)], ttl_seconds=TTL_S)
    assert granted.state == pb.RESERVATION_STATE_HELD, granted
    assert (await client.get_reservation("fill-0")).state == pb.RESERVATION_STATE_EXPIRED
