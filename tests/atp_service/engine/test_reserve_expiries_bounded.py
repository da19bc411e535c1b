"""The holds a shard's turn expires before its Reserves are decided (R2, R3) are bounded per turn, as a
housekeeping turn's are (``EXPIRE_PER_TURN``): each Reserve of a ReserveStream batch (one turn, up to
``max_batch_reservations`` items) expired up to the bound anew, so a batch of 1,000 items after downtime
expired up to 4,096,000 holds in one turn — seconds to minutes in which no shard, call or lease renewal ran
(R8), and one log entry of hundreds of MB. The bound is lowered here so that a few holds show it."""

from __future__ import annotations

import pytest

from atp_client._client import reserve_request
from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_service import ManualClock
from atp_service.engine import maintenance
from reservation import State
from tests.atp_service.edge.test_api import T0, receipt
from tests.conftest import ServiceFactory

HOUR_MS = 3_600_000
BOUND = 2


async def test_a_reserve_stream_batch_expires_at_most_the_bound_in_its_turn_R3_R8(
        start_service: ServiceFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(maintenance, "EXPIRE_PER_TURN", BOUND)
    clock = ManualClock(T0)
    service, client = await start_service(clock=clock, shards=1, maintenance_interval_ms=HOUR_MS)
    assert service.engine is not None
    ledger = service.engine.actors[0].ledger
    await client.record_events([receipt("s1", "A", "S1", 10)])
    for i in range(10):
        await client.reserve(f"old-{i}", [("A", "S1", 1)], ttl_seconds=30)
    clock.advance(30_000)  # all ten due
    batch = [reserve_request(f"new-{i}", [("A", "S1", 1)]) for i in range(5)]
    answers = [out async for out in client.reserve_stream([batch])]
    expired = [rid for rid, rec in ledger.reservations.items() if rec.state == State.EXPIRED]
    assert len(expired) <= BOUND, f"one turn expired {len(expired)} holds (bound {BOUND})"
    states = [outcome.response.state for outcome in answers[0].outcomes]
    assert states.count(pb.RESERVATION_STATE_HELD) == len(expired)  # the units given back, taken at once
