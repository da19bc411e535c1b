"""A shard at its bound on live reservations whose holds are past their TTL (housekeeping not come by
yet): a hold past its TTL holds nothing when a Reserve is decided (R2, R3), so a new id is granted there —
one process expires the holds in the Reserve's turn first. With several processes (``ownership = leases``)
the check made before a new id is claimed (``IdGuard._ask``), and an order's at its home (``order_opened``),
counted them live and refused it CAPACITY_REACHED: the answer hung on the deployment. On a real service and
Redis, housekeeping held off (each hold's expiry is the Reserve's to find)."""

from __future__ import annotations

import zlib
from typing import Any

import grpc
import pytest
import redis.asyncio as aioredis

from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_service import AtpService, ManualClock
from reservation import Limits
from tests.atp_service.edge.test_api import T0, receipt
from tests.atp_service.refusals import refused
from tests.conftest import ServiceFactory
from tests.ports import held_port
from tests.waiting import until

TTL_S = 60


async def _started(start_service: ServiceFactory, ownership: str, bound: int, **limits: int
                   ) -> tuple[ManualClock, AtpService, Any]:
    clock = ManualClock(T0)
    leased = {"ownership": "leases", "lease_ms": 5_000, "balance_ms": 200} if ownership == "leases" else {}
    service, client = await start_service(clock=clock, port=held_port(), host="127.0.0.1", shards=2, input_streams=(),
                                          maintenance_interval_ms=3_600_000,
                                          limits=Limits(max_live_reservations_per_shard=bound, **limits), **leased)
    engine = service.engine
    assert engine is not None
    await until(lambda: all(not actor.vacant for actor in engine.actors), "both groups served")
    return clock, service, client


def _pair() -> tuple[str, str]:
    """Two SKUs of the two groups, the first the lower group (an order's home)."""
    low, high = sorted(("k0", next(f"k{i}" for i in range(64) if zlib.crc32(f"k{i}".encode()) % 2
                                   != zlib.crc32(b"k0") % 2)), key=lambda sku: zlib.crc32(sku.encode()) % 2)
    return low, high


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
    low, high = _pair()
    await client.record_events([receipt("s1", low, "DC", 10), receipt("s2", high, "DC", 10)])
    for n in range(2):
        await client.reserve(f"fill-{n}", [(low, "DC", 1)], ttl_seconds=TTL_S)  # the home at its bound
    clock.advance(TTL_S * 1000 + 1)
    granted = await client.reserve("order", [(low, "DC", 1), (high, "DC", 1)], ttl_seconds=TTL_S)
    assert granted.state == pb.RESERVATION_STATE_HELD, granted
    assert (await client.get_reservation("fill-0")).state == pb.RESERVATION_STATE_EXPIRED


async def test_a_hold_past_its_ttl_behind_stale_entries_is_found_R3(start_service: ServiceFactory) -> None:
    """The head of the expiry queue is a confirmed hold's entry (stale: it holds on, counted live); the
    hold due behind it is expired in the Reserve's turn, as in one process, and the new id granted."""
    clock, _, client = await _started(start_service, "leases", bound=3)
    await client.record_events([receipt("s1", "A", "S1", 100)])
    await client.reserve("kept", [("A", "S1", 1)], ttl_seconds=TTL_S // 2)
    await client.confirm("kept")
    for n in range(2):
        await client.reserve(f"fill-{n}", [("A", "S1", 1)], ttl_seconds=TTL_S)
    clock.advance(TTL_S * 1000 + 1)
    assert (await client.reserve("new", [("A", "S1", 1)], ttl_seconds=TTL_S)).state == pb.RESERVATION_STATE_HELD
    assert (await client.get_reservation("kept")).state == pb.RESERVATION_STATE_CONFIRMED


async def _refused_unclaimed(client: Any, redis_url: str, new: list[tuple[str, str, int]], limit: str,
                             stream: bool) -> None:
    """Five new ids sent to a full shard (one stream batch, or one call each) are refused CAPACITY_REACHED
    naming ``limit``, and leave no claim: its turn frees nothing, so each claim would be a key a call for a
    day or so (``IdGuard._ask``: looked at, not claimed)."""
    async with aioredis.Redis.from_url(redis_url) as r:
        claims = len(await r.keys("atp:rid:*"))
        if stream:
            batch = [pb.ReserveRequest(reservation_id=f"new-{n}", lines=[pb.Line(sku=s, location=loc, quantity=q)
                                                                         for s, loc, q in new]) for n in range(5)]
            ((*outcomes,),) = [a.outcomes async for a in client.reserve_stream([batch])]
            for outcome in outcomes:
                assert outcome.error.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0], outcome
                assert limit in outcome.error.message, outcome
        else:
            for n in range(5):
                refusal = await refused(client.reserve(f"new-{n}", new, ttl_seconds=TTL_S))
                assert (refusal.reason, refusal.metadata.get("limit")) == ("CAPACITY_REACHED", limit), refusal
        assert len(await r.keys("atp:rid:*")) == claims, "a refused id was claimed"


@pytest.mark.parametrize("stream", [False, True])
async def test_a_full_shard_whose_due_entries_are_of_confirmed_holds_claims_no_refused_id(
        start_service: ServiceFactory, redis_url: str, stream: bool) -> None:
    """Confirmed holds count live and keep their expiry entries, due at their old TTL: no hold is past its
    TTL there, nothing for the turn to expire, and a new id is refused unclaimed as before."""
    clock, _, client = await _started(start_service, "leases", bound=3)
    await client.record_events([receipt("s1", "A", "S1", 100)])
    for n in range(3):
        await client.reserve(f"fill-{n}", [("A", "S1", 1)], ttl_seconds=TTL_S)
        await client.confirm(f"fill-{n}")
    clock.advance(TTL_S * 1000 + 1)
    await _refused_unclaimed(client, redis_url, [("A", "S1", 1)], "max_live_reservations_per_shard", stream)


async def test_a_home_full_of_an_order_past_its_ttl_claims_no_refused_id(
        start_service: ServiceFactory, redis_url: str) -> None:
    """An order past its TTL is expired by its saga, from a housekeeping pass, never in a Reserve's turn:
    until then each new id refused there was claimed, one call after another."""
    clock, _, client = await _started(start_service, "leases", bound=2)
    low, high = _pair()
    await client.record_events([receipt("s1", low, "DC", 10), receipt("s2", high, "DC", 10)])
    await client.reserve("order", [(low, "DC", 1), (high, "DC", 1)], ttl_seconds=TTL_S)  # its record, its part
    clock.advance(TTL_S * 1000 + 1)
    await _refused_unclaimed(client, redis_url, [(low, "DC", 1)], "max_live_reservations_per_shard", False)


@pytest.mark.parametrize("stream", [False, True])
async def test_a_shard_at_its_resolved_bound_with_a_hold_past_its_ttl_claims_no_refused_id(
        start_service: ServiceFactory, redis_url: str, stream: bool) -> None:
    """Expiring a hold adds a resolved record: at ``max_resolved_reservations_per_shard`` nothing its turn
    expires makes room, and the new ids are refused whatever is due."""
    clock, _, client = await _started(start_service, "leases", bound=100, max_resolved_reservations_per_shard=2)
    await client.record_events([receipt("s1", "A", "S1", 100)])
    for rid in ("gone-0", "gone-1", "due-0", "due-1", "due-2"):
        await client.reserve(rid, [("A", "S1", 1)], ttl_seconds=TTL_S)
    for n in range(2):
        await client.release(f"gone-{n}")  # the shard at its resolved bound
    clock.advance(TTL_S * 1000 + 1)
    await _refused_unclaimed(client, redis_url, [("A", "S1", 1)], "max_resolved_reservations_per_shard", stream)


async def test_a_hold_past_its_ttl_behind_an_order_past_its_own_is_found_R3(start_service: ServiceFactory) -> None:
    """The head of the home's expiry queue is an order past its TTL (its saga expires it, from a pass); the plain
    hold due behind it is expired in the Reserve's turn (``expire_alone`` passes over the order), so the check
    made before the new id is claimed finds it too, and the new id is granted, as in one process. It looked at
    the head alone and refused the id CAPACITY_REACHED, unclaimed, until the next pass."""
    clock, _, client = await _started(start_service, "leases", bound=3)
    low, high = _pair()
    await client.record_events([receipt("s1", low, "DC", 10), receipt("s2", high, "DC", 10)])
    # Its record and its part at ``low``, due first; then a plain hold there: the home at its bound.
    await client.reserve("order", [(low, "DC", 1), (high, "DC", 1)], ttl_seconds=TTL_S // 2)
    await client.reserve("fill", [(low, "DC", 1)], ttl_seconds=TTL_S)
    clock.advance(TTL_S * 1000 + 1)
    granted = await client.reserve("new", [(low, "DC", 1)], ttl_seconds=TTL_S)
    assert granted.state == pb.RESERVATION_STATE_HELD, granted  # was: CAPACITY_REACHED
    assert (await client.get_reservation("fill")).state == pb.RESERVATION_STATE_EXPIRED
