"""A keyspace moved from the single writer to leases (docs/OPERATIONS.md) while it holds a plain
reservation spanning shards: decided by the single writer's coordinator, it is no order (no saga, no
parts), and leased processes cannot land one change across groups. On a real service and Redis."""

from __future__ import annotations

from typing import Any

import pytest
import redis

from atp_client import AtpClient, AtpError
from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_service import AtpService, ManualClock
from atp_service.app.balancing import preference
from atp_service.engine import maintenance
from reservation._unfulfilled import UNFULFILLED
from tests.atp_service.app.test_processes import owned
from tests.atp_service.edge.test_api import receipt
from tests.atp_service.engine.test_expiry_races import _spanning_hold, _started
from tests.atp_service.fact_helpers import unfulfilled_told, wait_consumed
from tests.conftest import ServiceFactory
from tests.ports import held_port
from tests.waiting import until


async def _moved_to_leases(start_service: ServiceFactory, redis_url: str, **extra: Any
                           ) -> tuple[ManualClock, AtpService, Any, Any, tuple[str, str]]:
    """Hold r1 across two shards made by the single writer, then the keyspace moved to leases and a leased
    process serving both groups (``extra``: its settings): clock, service, client, engine, the hold's two SKUs."""
    clock, service, client, _ = await _started(start_service, 2)
    skus = await _spanning_hold(service, client)
    await service.stop(grace_s=0.1)
    redis.Redis.from_url(redis_url).hset("atp:meta", "ownership", "leases")
    service, client = await start_service(clock=clock, shards=2, maintenance_interval_ms=3_600_000,
                                          ownership="leases", lease_ms=5_000, balance_ms=200,
                                          port=held_port(), **{"input_streams": (), **extra})
    engine = service.engine
    assert engine is not None
    await until(lambda: all(not actor.vacant for actor in engine.actors), "both groups taken")
    return clock, service, client, engine, skus


async def test_a_plain_hold_spanning_shards_left_by_the_single_writer_stops_no_shard_under_leases_R8(
        start_service: ServiceFactory, redis_url: str) -> None:
    """Its Confirm, and each housekeeping pass once its TTL passed, ran the coordinator, whose group commit
    leased processes refuse (``CrossGroupWrite``) after the parts were sealed: taken for a bug half-way, it
    stopped every shard of the hold (``atp_shard_failures_total``, ERROR), their groups given up and taken
    again — at every pass, for good: the groups never served for long. Refused before anything is
    decided, nothing changed, every shard goes on answering."""
    clock, service, client, engine, (a, b) = await _moved_to_leases(start_service, redis_url)

    def failures() -> float:
        return service.metrics.registry.get_sample_value("atp_shard_failures_total") or 0.0

    with pytest.raises(AtpError):
        await client.confirm("r1")
    assert failures() == 0, "a Confirm stopped the shards"
    clock.advance(60_000)
    for _ in range(3):
        await engine.run_maintenance()
    assert failures() == 0, "an expiry pass stopped the shards"
    assert all(not actor.vacant and actor.failure is None for actor in engine.actors)
    await client.reserve("r2", [(a, "S1", 1)], ttl_seconds=60)  # the groups answer
    await client.reserve("r3", [(b, "S1", 1)], ttl_seconds=60)


async def test_plain_spanning_holds_left_by_the_single_writer_keep_no_other_hold_of_their_shard_from_expiring_R3(
        start_service: ServiceFactory, redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A shard's housekeeping turn takes at most ``EXPIRE_PER_TURN`` due holds, earliest first. Such a hold,
    refused at every pass (it cannot expire under leases), was queued again at its own expiry time: the first
    ``EXPIRE_PER_TURN`` of them took every turn of their shard, and no hold due after them ever expired there
    (its units held for good). Here the bound is 1: one such hold was enough."""
    monkeypatch.setattr(maintenance, "EXPIRE_PER_TURN", 1)
    clock, _, client, engine, (a, b) = await _moved_to_leases(start_service, redis_url)
    sku = a if engine.place(a) == engine.home_of("r1") else b
    await client.reserve("r2", [(sku, "S1", 1)], ttl_seconds=61)  # due after r1, on r1's home shard
    clock.advance(120_000)
    for _ in range(3):
        await engine.run_maintenance()
    (position,) = await client.availability([(sku, "S1")])
    assert position.reserved == (2 if sku == a else 3), position  # r1's units only: r2 expired


async def test_a_shipment_of_a_plain_hold_spanning_shards_under_leases_moves_the_stock_fulfilling_nothing_R4(
        start_service: ServiceFactory, redis_url: str) -> None:
    """A SHIPMENT naming r1 at its home shard cannot fulfil it (``INTERNAL``: that would change both shards,
    which leased processes cannot land in one write). The fact was refused whole: by an input stream, read
    again up to ``ingest_max_deliveries`` and dead-lettered; by ``RecordEvents``, the call refused — the units
    gone from the building still counted in on_hand (Q1), offered and sold again until an operator replayed
    the fact without its ``reservation_id``. The stock moves all the same, r1 fulfilled by nothing and said
    why (R4: ``shipment_not_fulfilled``, ``atp_shipments_unfulfilled_total``), its units still held."""
    clock, service, client, engine, (a, b) = await _moved_to_leases(start_service, redis_url, ingest_max_deliveries=3,
                                                                   input_streams=("atp:in:wms",))
    sku = a if engine.place(a) == engine.home_of("r1") else b
    held = 2 if sku == a else 3
    r = redis.Redis.from_url(redis_url)
    fact = {"source": "wms", "sku": sku, "location": "S1", "quantity": 1, "event_time_ms": clock.now_ms()}
    r.xadd("atp:in:wms", {"event_id": "ship-1", "kind": "SHIPMENT", **fact, "reservation_id": "r1"})
    r.xadd("atp:in:wms", {"event_id": "rcpt-1", "kind": "RECEIPT", **fact})
    await wait_consumed(redis_url, ["atp:in:wms"], timeout_s=20)
    assert r.xrange("atp:dlq") == [], "a shipment dead-lettered: its units never left on_hand"
    shipped = receipt("ship-2", sku, "S1", 1, clock.now_ms(), kind=pb.FACT_KIND_SHIPMENT)
    shipped.reservation_id = "r1"
    (answer,) = await client.record_events([shipped])  # the gRPC answer per fact
    assert answer.outcome == pb.FACT_OUTCOME_APPLIED, answer
    assert answer.detail.startswith(UNFULFILLED) and "INTERNAL" in answer.detail, answer.detail
    assert [unfulfilled_told(service, "refused", origin) for origin in ("stream", "grpc")] == [1, 1]
    (position,) = await client.availability([(sku, "S1")])
    # 5 received by the single writer and the RECEIPT after them, both SHIPMENTs gone; r1 held as it was
    assert (position.on_hand, position.reserved) == (4, held), position


async def test_a_shipment_read_by_another_process_than_its_owner_is_applied_there_with_the_facts_read_with_it(
        start_service: ServiceFactory, redis_url: str) -> None:
    """The SHIPMENT read by a process that does not own r1's home group goes there in one ``RecordEvents``
    with the facts read with it. The owner refused it (``INTERNAL``), the call split until the SHIPMENT was
    alone and then dead-lettered, its units never taken from on_hand (Q1). Applied at the owner with the
    others: the stock moves, r1 fulfilled by nothing (R4), nothing dead-lettered."""
    clock, service, client, _ = await _started(start_service, 2)
    a, b = await _spanning_hold(service, client)
    assert service.engine is not None
    home = service.engine.home_of("r1")
    assert home is not None
    shipped = a if service.engine.place(a) == home else b
    await service.stop(grace_s=0.1)
    r = redis.Redis.from_url(redis_url)
    r.hset("atp:meta", "ownership", "leases")
    port = next(p for p in iter(held_port, 0) if preference(f"127.0.0.1:{p}", home) > preference(f"127.0.0.1:{p}",
                                                                                                 1 - home))
    leased = {"clock": clock, "shards": 2, "maintenance_interval_ms": 3_600_000, "ownership": "leases",
              "lease_ms": 5_000, "balance_ms": 200, "host": "127.0.0.1"}
    owner, _ = await start_service(port=port, input_streams=(), **leased)  # alone: both groups
    reader, _ = await start_service(port=held_port(), input_streams=("atp:in:wms",), ingest_max_deliveries=3, **leased)
    addresses = {home: f"127.0.0.1:{owner.port}", 1 - home: f"127.0.0.1:{reader.port}"}

    def settled() -> bool:
        return [owned(owner), owned(reader)] == [{home}, {1 - home}] and all(
            s.membership is not None and {g: s.membership.where(g)[0] for g in (0, 1)} == addresses
            for s in (owner, reader))

    await until(settled,
                "the owner keeps r1's home group (its preference), the reader takes the other")
    assert owner.engine is not None
    skus = [s for s in (f"in-{i}" for i in range(64)) if owner.engine.place(s) == home][:2]
    fact = {"source": "wms", "location": "S1", "quantity": 1, "event_time_ms": clock.now_ms()}
    with r.pipeline(transaction=True) as pipe:  # one read: one batch, one call to the owner
        pipe.xadd("atp:in:wms", {"event_id": "rcpt-0", "kind": "RECEIPT", "sku": skus[0], **fact, "quantity": 4})
        pipe.xadd("atp:in:wms", {"event_id": "ship-1", "kind": "SHIPMENT", "sku": shipped, **fact,
                                 "reservation_id": "r1"})
        pipe.xadd("atp:in:wms", {"event_id": "rcpt-1", "kind": "RECEIPT", "sku": skus[1], **fact, "quantity": 7})
        pipe.execute()
    await wait_consumed(redis_url, ["atp:in:wms"], timeout_s=20)
    assert r.xrange("atp:dlq") == [], "a shipment dead-lettered: its units never left on_hand"
    async with AtpClient(f"127.0.0.1:{owner.port}", timeout_s=5) as at_owner:
        positions = await at_owner.availability([(skus[0], "S1"), (skus[1], "S1"), (shipped, "S1")])
    assert [p.on_hand for p in positions] == [4, 7, 4], positions  # the SHIPMENT applied
    assert unfulfilled_told(owner, "refused") == 1
