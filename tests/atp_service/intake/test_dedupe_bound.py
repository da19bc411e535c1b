"""``max_dedupe_entries_per_shard`` on a real service and Redis: a source sending distinct event ids
within the grace window fills E8's memory up to the bound, no further; past it new facts are
quarantined with a capacity reason (never dropped silently), counted as a capacity refusal, shown by
``atp_dedupe_entries``; resends of remembered facts are still duplicates, and a restart (snapshot +
log replay, E10) reaches the same state."""

from __future__ import annotations

from typing import Any

import redis

from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_service.app.service import AtpService
from reservation import Limits
from tests.atp_service.edge.test_api import receipt
from tests.atp_service.intake.test_position_bound import _sample
from tests.conftest import ServiceFactory
from tests.waiting import until

BOUND = 6
LIMIT = "max_dedupe_entries_per_shard"


def _remembered(service: AtpService) -> int:
    assert service.engine is not None
    return len(service.engine.actors[0].ledger.memory)


async def test_distinct_event_ids_past_the_bound_are_quarantined_counted_and_gauged(
        start_service: ServiceFactory, redis_url: str) -> None:
    """A WMS flooding distinct event ids: each one was remembered for the grace window, with no cap,
    until the process was killed."""
    service, client = await start_service(shards=1, limits=Limits(max_dedupe_entries_per_shard=BOUND))
    flood = [receipt(f"e{i}", f"SKU{i % 2}", "L1", 1) for i in range(BOUND + 3)]
    results = await client.record_events(flood)
    assert [r.outcome for r in results] == [pb.FACT_OUTCOME_APPLIED] * BOUND + [pb.FACT_OUTCOME_QUARANTINED] * 3
    assert {r.quarantine_reason for r in results[BOUND:]} == {pb.QUARANTINE_REASON_CAPACITY}
    assert _remembered(service) == BOUND
    entries: list[Any] = redis.Redis.from_url(redis_url).xrange("atp:quarantine") or []
    assert [e[1][b"event_id"] for e in entries] == [f"e{i}".encode() for i in range(BOUND, BOUND + 3)]
    assert all(f"(limit {LIMIT} = {BOUND})".encode() in e[1][b"reason"] for e in entries), entries
    assert _sample(service, "atp_capacity_refusals_total", limit=LIMIT) == 3
    assert _sample(service, "atp_capacity_refusals_total", limit="max_positions_per_shard") == 0
    await until(lambda: _sample(service, "atp_dedupe_entries", shard="0") == BOUND, "atp_dedupe_entries at the bound")
    # Resends of remembered facts are duplicates at the bound (never applied twice).
    again = await client.record_events(flood[:BOUND])
    assert [r.outcome for r in again] == [pb.FACT_OUTCOME_DUPLICATE] * BOUND
    before = await client.availability([("SKU0", "L1"), ("SKU1", "L1")])
    assert [a.on_hand for a in before] == [BOUND // 2, BOUND // 2]
    await service.stop()
    restarted, client = await start_service(shards=1, limits=Limits(max_dedupe_entries_per_shard=BOUND))
    assert _remembered(restarted) == BOUND  # the log replayed to the same state (E10)
    assert await client.availability([("SKU0", "L1"), ("SKU1", "L1")]) == before
    (resent,) = await client.record_events([flood[BOUND]])
    assert (resent.outcome, resent.quarantine_reason) == (pb.FACT_OUTCOME_QUARANTINED, pb.QUARANTINE_REASON_CAPACITY)
