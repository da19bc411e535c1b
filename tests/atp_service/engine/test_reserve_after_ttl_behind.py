"""A Reserve decided once a hold of its shard is past its TTL, before housekeeping's next pass, where a hold
its turn cannot expire by itself (one spanning shards, expired by the coordinator; an order, by its saga) fell
due before it (R2, R3). The Reserve's turn expired the due holds from the head of the queue only up to that
one: the hold due after it kept its units, which refused the Reserve — a refusal its id replays for good
(R5) — while a Confirm of that hold at the same moment answered EXPIRED (``test_reserve_after_ttl``)."""

from __future__ import annotations

import grpc

from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_service import ManualClock
from tests.atp_service.edge.test_api import T0, receipt
from tests.atp_service.engine.test_cancellation import _memory_equals_log, _one_sku_per_shard
from tests.atp_service.refusals import told
from tests.conftest import ServiceFactory

HOUR_MS = 3_600_000


async def test_a_due_hold_queued_behind_a_due_hold_spanning_shards_gives_its_units_to_a_reserve_R2_R3(
        start_service: ServiceFactory, redis_url: str) -> None:
    clock = ManualClock(T0)
    service, client = await start_service(clock=clock, maintenance_interval_ms=HOUR_MS)  # no pass in between
    a, b = _one_sku_per_shard(service)[:2]
    await client.record_events([receipt("s1", a, "S1", 10), receipt("s2", b, "S1", 10)])
    # Homed at a's shard (the lowest it spans), due first there; r1 holds the rest of a@S1, due after it.
    span = await client.reserve("span", [(a, "S1", 1), (b, "S1", 1)], ttl_seconds=10)
    assert span.state == pb.RESERVATION_STATE_HELD
    assert (await client.reserve("r1", [(a, "S1", 9)], ttl_seconds=20)).state == pb.RESERVATION_STATE_HELD
    clock.advance(20_000)

    r2 = await client.reserve("r2", [(a, "S1", 9)])
    assert (r2.state, r2.lines[0].available) == (pb.RESERVATION_STATE_HELD, 9), r2  # was: REJECTED, available 0
    assert (await client.get_reservation("r1")).state == pb.RESERVATION_STATE_EXPIRED
    assert await told(client.confirm("r1")) == (grpc.StatusCode.FAILED_PRECONDITION, "RESERVATION_EXPIRED")
    # The hold spanning shards still waits for the pass (the coordinator expires it), its units held till then.
    assert (await client.get_reservation("span")).state == pb.RESERVATION_STATE_HELD
    (q,) = await client.availability([(a, "S1")])
    assert (q.reserved, q.available) == (10, 0)  # r2's 9 and span's 1
    await _memory_equals_log(service, redis_url)  # E10: r1's expiry is in the Reserve's entry
