"""``max_positions_per_shard`` on a real service and Redis: facts naming positions never seen before
are quarantined at the bound (E6: never dropped silently) and counted as a capacity refusal;
LoadCounts and SetSafetyStock that would make one are refused whole; positions that exist keep
working; a restart (snapshot + log replay, E10) reaches the same state."""

from __future__ import annotations

from typing import Any

import grpc
import numpy as np
import redis

from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_service.app.service import AtpService
from reservation import Limits
from tests.atp_service.edge.test_api import T0, receipt
from tests.atp_service.refusals import refused
from tests.conftest import ServiceFactory
from tests.waiting import until

BOUND = 5
LIMIT = "max_positions_per_shard"


def _count(eid: str, sku: str, qty: int) -> pb.Fact:
    return receipt(eid, sku, "L1", qty, t=T0 - 2000, kind=pb.FACT_KIND_COUNT)  # before receipt()'s default


def _sample(service: AtpService, name: str, **labels: str) -> float | None:
    """The value of one series (None: not exported yet)."""
    return next((s.value for m in service.metrics.registry.collect() for s in m.samples
                 if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())), None)


def _positions(service: AtpService) -> int:
    assert service.engine is not None
    return len(service.engine.actors[0].ledger.store)


def _block(skus: list[str], on_hand: int) -> pb.LoadCountsRequest:
    n = len(skus)
    return pb.LoadCountsRequest(source="erp", skus=skus, locations=["L1"],
                                sku_index=np.arange(n, dtype="<u4").tobytes(), location_index=bytes(4 * n),
                                on_hand=np.full(n, on_hand, dtype="<i8").tobytes(),
                                as_of=np.full(n, T0, dtype="<i8").tobytes())  # newer than every fact: none late (E6)


async def test_made_up_skus_past_the_bound_are_quarantined_and_counted_and_stay_so_after_a_restart(
        start_service: ServiceFactory, redis_url: str) -> None:
    """A POS sending garbage SKUs: each COUNT for a made-up SKU made a position for good, so the
    shard's memory grew with every typo until the process was killed."""
    service, client = await start_service(shards=1, limits=Limits(max_positions_per_shard=BOUND))
    results = await client.record_events([_count(f"c{i}", f"SKU{i}", 7) for i in range(BOUND + 3)])
    assert [r.outcome for r in results] == [pb.FACT_OUTCOME_APPLIED] * BOUND + [pb.FACT_OUTCOME_QUARANTINED] * 3
    assert {r.quarantine_reason for r in results[BOUND:]} == {pb.QUARANTINE_REASON_CAPACITY}
    assert _positions(service) == BOUND
    entries: list[Any] = redis.Redis.from_url(redis_url).xrange("atp:quarantine") or []
    assert [e[1][b"sku"] for e in entries] == [f"SKU{i}".encode() for i in range(BOUND, BOUND + 3)]
    assert all(LIMIT.encode() in e[1][b"reason"] for e in entries), entries
    assert _sample(service, "atp_capacity_refusals_total", limit=LIMIT) == 3
    await until(lambda: _sample(service, "atp_positions", shard="0") == BOUND, "atp_positions at the bound")
    # Positions that exist keep taking facts at the bound; a Reserve elsewhere makes none.
    (moved,) = await client.record_events([receipt("r0", "SKU0", "L1", 3)])
    assert moved.outcome == pb.FACT_OUTCOME_APPLIED
    held = await client.reserve("res-1", [("SKU0", "L1", 2)])
    assert held.state == pb.RESERVATION_STATE_HELD
    await client.reserve("res-2", [("SKU0", "L9", 1)])  # refused for want of stock, not placed
    assert _positions(service) == BOUND
    # LoadCounts and SetSafetyStock that would make a position are refused whole, rows of known ones too.
    refusal = await refused(client.load_counts(_block(["SKU1", "NEW-1"], 50)))
    assert (refusal.code, refusal.reason, refusal.metadata.get("limit")) == (
        grpc.StatusCode.RESOURCE_EXHAUSTED, "CAPACITY_REACHED", LIMIT)
    refusal = await refused(client.stub.SetSafetyStock(pb.SetSafetyStockRequest(sku="NEW-2", location="L1",
                                                                                quantity=1)))
    assert (refusal.code, refusal.reason, refusal.metadata.get("limit")) == (
        grpc.StatusCode.RESOURCE_EXHAUSTED, "CAPACITY_REACHED", LIMIT)
    await client.stub.SetSafetyStock(pb.SetSafetyStockRequest(sku="SKU2", location="L1", quantity=1))
    assert _sample(service, "atp_capacity_refusals_total", limit=LIMIT) == 5
    before = await client.availability([(f"SKU{i}", "L1") for i in range(BOUND + 3)])
    assert before[1].on_hand == 7  # the refused block's known row was not applied either
    assert _positions(service) == BOUND
    await service.stop()
    again, client = await start_service(shards=1, limits=Limits(max_positions_per_shard=BOUND))
    assert _positions(again) == BOUND  # the log replayed to the same state (E10)
    assert await client.availability([(f"SKU{i}", "L1") for i in range(BOUND + 3)]) == before
    (resent,) = await client.record_events([_count(f"c{BOUND}", f"SKU{BOUND}", 7)])
    assert (resent.outcome, resent.quarantine_reason) == (pb.FACT_OUTCOME_QUARANTINED, pb.QUARANTINE_REASON_CAPACITY)


async def _load_new_at_the_bound(client: Any, redis_url: str, late_at: int) -> None:
    """A block of ``BOUND`` new positions at a shard holding one, the last row stamped ``late_at``:
    late when its turn comes, so it is quarantined (E6) and the others fill the bound exactly."""
    skus = [f"NEW-{i}" for i in range(BOUND)]
    as_of = np.array([T0] * (BOUND - 1) + [late_at], dtype="<i8")
    answer = await client.load_counts(pb.LoadCountsRequest(
        source="erp", skus=skus, locations=["L1"], sku_index=np.arange(BOUND, dtype="<u4").tobytes(),
        location_index=bytes(4 * BOUND), on_hand=np.full(BOUND, 9, dtype="<i8").tobytes(), as_of=as_of.tobytes()))
    assert (answer.applied, answer.quarantined) == (BOUND - 1, 1)
    assert [(g.quarantine_reason, list(g.rows)) for g in answer.rejected] == [(pb.QUARANTINE_REASON_LATE, [BOUND - 1])]
    entries: list[Any] = redis.Redis.from_url(redis_url).xrange("atp:quarantine") or []
    assert [e[1][b"sku"] for e in entries] == [skus[-1].encode()]


async def test_a_block_at_the_bound_with_a_late_row_naming_a_new_position_loads_as_record_events_would(
        start_service: ServiceFactory, redis_url: str) -> None:
    """The late row is quarantined (E6) before any position is made, one by one or in a block: it is
    no new position, so the rows that fill the bound exactly load and it reaches the quarantine stream."""
    service, client = await start_service(shards=1, limits=Limits(max_positions_per_shard=BOUND))
    await client.record_events([receipt("r0", "SKU0", "L1", 1)])  # stream time: T0 - 1000
    await _load_new_at_the_bound(client, redis_url, T0 - 30 * 3_600_000)  # past the grace window
    assert _positions(service) == BOUND


async def test_a_row_late_only_once_an_earlier_row_of_the_block_moved_stream_time_leaves_room_for_the_block(
        start_service: ServiceFactory, redis_url: str) -> None:
    """As of before the block the last row is inside the grace window; the block's first row moves
    stream time past it, so one by one it is quarantined late (E6) and makes no position: the rows
    that make one fill the bound exactly, and the block loads rather than being refused whole."""
    service, client = await start_service(shards=1, limits=Limits(max_positions_per_shard=BOUND))
    await client.record_events([receipt("r0", "SKU0", "L1", 1, t=T0 - 40 * 3_600_000)])  # stream time
    await _load_new_at_the_bound(client, redis_url, T0 - 30 * 3_600_000)  # late only after the first row
    assert _positions(service) == BOUND
