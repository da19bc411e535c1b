"""A keyspace moved from the single writer to leases (docs/OPERATIONS.md) while it holds a plain
reservation spanning shards: decided by the single writer's coordinator, it is no order (no saga, no
parts), and leased processes cannot land one change across groups. On a real service and Redis."""

from __future__ import annotations

from typing import Any

import pytest
import redis

from atp_client import AtpClient, AtpError
from atp_service import AtpService, ManualClock, free_port
from atp_service.app.balancing import preference
from atp_service.engine import maintenance
from tests.atp_service.app.test_processes import owned
from tests.atp_service.engine.test_expiry_races import _spanning_hold, _started
from tests.atp_service.fact_helpers import wait_consumed
from tests.conftest import ServiceFactory
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
                                          port=free_port(), **{"input_streams": (), **extra})
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


async def test_a_shipment_of_a_plain_hold_spanning_shards_under_leases_is_dead_lettered_once_past_the_bound(
        start_service: ServiceFactory, redis_url: str) -> None:
    """A SHIPMENT naming r1 at its home shard is refused whole (``INTERNAL``: fulfilling it would change both
    shards). Its entry was left pending and read again every second for ever — never applied, nothing
    dead-lettered, counted only as ``unavailable`` facts. Refused so at delivery ``ingest_max_deliveries``,
    it is dead-lettered with the refusal (``REFUSED_REPEATEDLY``) and acknowledged, once; the fact after it
    in the stream is applied meanwhile."""
    clock, service, client, engine, (a, b) = await _moved_to_leases(start_service, redis_url, ingest_max_deliveries=3,
                                                                   input_streams=("atp:in:wms",))
    sku = a if engine.place(a) == engine.home_of("r1") else b
    r = redis.Redis.from_url(redis_url)
    fact = {"source": "wms", "sku": sku, "location": "S1", "quantity": 1, "event_time_ms": clock.now_ms()}
    entry = r.xadd("atp:in:wms", {"event_id": "ship-1", "kind": "SHIPMENT", **fact, "reservation_id": "r1"})
    r.xadd("atp:in:wms", {"event_id": "rcpt-1", "kind": "RECEIPT", **fact})
    await wait_consumed(redis_url, ["atp:in:wms"], timeout_s=20)
    (letter,) = [fields for _, fields in r.xrange("atp:dlq")]
    assert (letter[b"_id"], letter[b"_code"], letter[b"event_id"]) == (entry, b"REFUSED_REPEATEDLY", b"ship-1")
    assert letter[b"_reason"].startswith(b"refused INTERNAL"), letter[b"_reason"]
    registry = service.metrics.registry
    assert registry.get_sample_value("atp_ingest_given_up_total", {"stream": "atp:in:wms", "reason": "INTERNAL"}) == 1
    assert registry.get_sample_value("atp_dead_lettered_total", {"stream": "atp:in:wms"}) == 1
    (position,) = await client.availability([(sku, "S1")])
    assert position.on_hand == 6  # 5 received by the single writer, the RECEIPT after it; the SHIPMENT not applied


async def test_a_shipment_its_owner_refuses_held_back_no_other_fact_sent_with_it_and_is_dead_lettered(
        start_service: ServiceFactory, redis_url: str) -> None:
    """The SHIPMENT read by a process that does not own r1's home group goes there in one ``RecordEvents``
    with the facts read with it. The owner refused that call whole (``INTERNAL``), which the reader took for
    the owner failing (``OUTCOME_UNKNOWN``, transient): every fact of it left pending and sent together
    again, refused again, for ever — the RECEIPTs' entries never acknowledged, the SHIPMENT never
    dead-lettered. Split until the culprit is alone, each fact answered for itself."""
    clock, service, client, _ = await _started(start_service, 2)
    a, b = await _spanning_hold(service, client)
    assert service.engine is not None
    home = service.engine.home_of("r1")
    assert home is not None
    shipped = a if service.engine.place(a) == home else b
    await service.stop(grace_s=0.1)
    r = redis.Redis.from_url(redis_url)
    r.hset("atp:meta", "ownership", "leases")
    port = next(p for p in iter(free_port, 0) if preference(f"127.0.0.1:{p}", home) > preference(f"127.0.0.1:{p}",
                                                                                                 1 - home))
    leased = {"clock": clock, "shards": 2, "maintenance_interval_ms": 3_600_000, "ownership": "leases",
              "lease_ms": 5_000, "balance_ms": 200, "host": "127.0.0.1"}
    owner, _ = await start_service(port=port, input_streams=(), **leased)  # alone: both groups
    reader, _ = await start_service(port=free_port(), input_streams=("atp:in:wms",), ingest_max_deliveries=3, **leased)
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
        culprit = pipe.execute()[1]
    await wait_consumed(redis_url, ["atp:in:wms"], timeout_s=20)
    (letter,) = [fields for _, fields in r.xrange("atp:dlq")]
    assert (letter[b"_id"], letter[b"_code"], letter[b"event_id"]) == (culprit, b"REFUSED_REPEATEDLY", b"ship-1")
    assert letter[b"_reason"].startswith(b"refused INTERNAL"), letter[b"_reason"]
    async with AtpClient(f"127.0.0.1:{owner.port}", timeout_s=5) as at_owner:
        positions = await at_owner.availability([(skus[0], "S1"), (skus[1], "S1"), (shipped, "S1")])
    assert [p.on_hand for p in positions] == [4, 7, 5], positions  # the SHIPMENT not applied
