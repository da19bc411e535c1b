"""The service on a real Redis Cluster (``redis_cluster``): the API's behaviour is the same as on
one Redis — every test of ``test_api`` runs again here — and orders whose lines span shards are
decided by sagas of one-shard steps, all or nothing (R2), replayed by id (R5), expired through
every part (R3), and carried through a restart."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis
from redis.cluster import RedisCluster

from atp_client import AtpClient
from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_service import AtpService, ManualClock
from atp_service.storage.channel_wire import StartMarker, from_fields, values_of
from reservation import Limits
from tests.atp_service.app.test_cli import iso
from tests.atp_service.channel_helpers import fact, write_estate
from tests.atp_service.edge.test_api import *  # noqa: F403 - the API suite, run again on the cluster
from tests.atp_service.edge.test_api import T0, receipt
from tests.atp_service.fact_helpers import F
from tests.conftest import ServiceFactory, services_on
from tests.conftest import test_config as make_config
from tests.waiting import answered, until

CLUSTER = {"redis_cluster": True, "input_streams": ()}


@pytest.fixture
async def start_service(cluster_url: str) -> AsyncIterator[ServiceFactory]:
    """``start_service`` of the test suite, on the cluster."""
    async with services_on(cluster_url, **CLUSTER) as start:
        yield start


async def _two_groups(start: ServiceFactory, clock: ManualClock, a: int = 10, b: int = 10, **settings: Any
                      ) -> tuple[AtpService, AtpClient, str, str]:
    """A service (with ``settings``) with two SKUs placed on different shards, stocked at S1."""
    service, client = await start(clock=clock, **settings)
    assert service.engine is not None and service.engine.orders is not None
    place = service.engine.place
    first = "A"
    second = next(f"B{i}" for i in range(100) if place(f"B{i}") != place(first))
    await client.record_events([receipt("s1", first, "S1", a), receipt("s2", second, "S1", b)])
    return service, client, first, second


async def _reserved(client: AtpClient, skus: tuple[str, ...]) -> list[int]:
    return [q.reserved for q in await client.availability([(sku, "S1") for sku in skus])]


async def test_an_order_over_two_groups_is_held_confirmed_and_fulfilled_through_its_parts(
        start_service: ServiceFactory) -> None:
    clock = ManualClock(T0)
    _service, client, a, b = await _two_groups(start_service, clock)
    held = await client.reserve("o1", [(a, "S1", 3), (b, "S1", 2)], ttl_seconds=600)
    assert held.state == pb.RESERVATION_STATE_HELD
    assert [(line.sku, line.granted) for line in held.lines] == [(a, 3), (b, 2)]
    assert await _reserved(client, (a, b)) == [3, 2]
    explained = await client.stub.ExplainAvailability(pb.ExplainAvailabilityRequest(sku=b, location="S1"))
    (hold,) = explained.holds  # a part is shown as its order: the id callers know, the order's expiry
    assert (hold.reservation_id, hold.held, hold.expire_time) == ("o1", 2, held.expire_time)
    again = await client.reserve("o1", [(a, "S1", 3), (b, "S1", 2)], ttl_seconds=600)
    assert again.replayed and again.state == pb.RESERVATION_STATE_HELD  # R5
    assert await _reserved(client, (a, b)) == [3, 2]
    with pytest.raises(grpc.aio.AioRpcError) as other:
        await client.reserve("o1", [(a, "S1", 3), (b, "S1", 1)], ttl_seconds=600)
    assert other.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert (await client.confirm("o1")).state == pb.RESERVATION_STATE_CONFIRMED
    done = await client.fulfill("o1")
    assert done.state == pb.RESERVATION_STATE_FULFILLED
    assert [(q.on_hand, q.reserved, q.committed) for q in await client.availability([(a, "S1"), (b, "S1")])] == [
        (7, 0, 0), (8, 0, 0)]


async def test_one_group_short_refuses_the_whole_order_and_holds_nothing_R2(start_service: ServiceFactory) -> None:
    _service, client, a, b = await _two_groups(start_service, ManualClock(T0), b=1)
    refused = await client.reserve("o2", [(a, "S1", 3), (b, "S1", 2)], ttl_seconds=600)
    assert refused.state == pb.RESERVATION_STATE_REJECTED
    assert [line.outcome for line in refused.lines] == [pb.LINE_OUTCOME_NOT_ATTEMPTED,
                                                                    pb.LINE_OUTCOME_INSUFFICIENT]
    assert await _reserved(client, (a, b)) == [0, 0]
    assert (await client.reserve("o2", [(a, "S1", 3), (b, "S1", 2)], ttl_seconds=600)).state == \
        pb.RESERVATION_STATE_REJECTED  # a retry answers the same refusal (R5)


async def test_an_order_over_two_groups_expires_through_every_part_R3(start_service: ServiceFactory) -> None:
    clock = ManualClock(T0)
    _service, client, a, b = await _two_groups(start_service, clock)
    await client.reserve("o3", [(a, "S1", 3), (b, "S1", 2)], ttl_seconds=60)
    clock.advance(61_000)
    for _ in range(1500):  # the saga through both groups: 30 s, a bound, not a timing
        if (await client.get_reservation("o3")).state == pb.RESERVATION_STATE_EXPIRED:
            break
        await asyncio.sleep(0.02)
    assert (await client.get_reservation("o3")).state == pb.RESERVATION_STATE_EXPIRED
    assert await _reserved(client, (a, b)) == [0, 0]
    with pytest.raises(grpc.aio.AioRpcError) as late:
        await client.confirm("o3")
    assert late.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def _shipped(client: AtpClient, event_id: str, sku: str, quantity: int, order: str) -> None:
    """A SHIPMENT fact of ``quantity`` at S1 naming ``order``, applied."""
    (result,) = await client.record_events([pb.Fact(
        event_id=event_id, source="wms", kind=pb.FACT_KIND_SHIPMENT, sku=sku, location="S1", quantity=quantity,
        event_time=receipt("x", sku, "S1", 1).event_time, reservation_id=order)])
    assert result.outcome == pb.FACT_OUTCOME_APPLIED and not result.HasField("error")


async def test_a_shipment_fact_naming_the_order_fulfils_the_part_at_its_position_R4(
        start_service: ServiceFactory) -> None:
    _service, client, a, b = await _two_groups(start_service, ManualClock(T0))
    await client.reserve("o4", [(a, "S1", 3), (b, "S1", 2)], ttl_seconds=600)
    await client.confirm("o4")
    await _shipped(client, "ship-b", b, 2, "o4")
    order = await client.get_reservation("o4")
    assert [(line.committed, line.fulfilled) for line in order.lines] == [(3, 0), (0, 2)]
    assert order.state == pb.RESERVATION_STATE_CONFIRMED
    released = await client.release("o4")
    assert released.state == pb.RESERVATION_STATE_FULFILLED  # something shipped: fulfilled, the rest released
    assert [(q.on_hand, q.committed) for q in await client.availability([(a, "S1"), (b, "S1")])] == [(10, 0), (8, 0)]


async def test_orders_over_two_groups_come_back_after_a_restart(start_service: ServiceFactory) -> None:
    clock = ManualClock(T0)
    service, client, a, b = await _two_groups(start_service, clock)
    await client.reserve("o5", [(a, "S1", 3), (b, "S1", 2)], ttl_seconds=600)
    await client.reserve("o6", [(a, "S1", 1), (b, "S1", 1)], ttl_seconds=600)
    await client.confirm("o6")
    await client.close()
    await service.stop(grace_s=0.1)
    _, again = await start_service(clock=clock)
    assert (await again.get_reservation("o5")).state == pb.RESERVATION_STATE_HELD
    assert (await again.get_reservation("o6")).state == pb.RESERVATION_STATE_CONFIRMED
    assert [(q.reserved, q.committed) for q in await again.availability([(a, "S1"), (b, "S1")])] == [(3, 1), (2, 1)]
    assert (await again.release("o5")).state == pb.RESERVATION_STATE_RELEASED
    assert await _reserved(again, (a, b)) == [0, 0]


def test_input_streams_on_a_cluster_must_share_a_hash_tag() -> None:
    with pytest.raises(ValueError, match="share one hash tag"):
        make_config(redis_cluster=True)
    make_config(redis_cluster=True, input_streams=("atp:{in}:pos", "atp:{in}:wms"),
                dead_letter_stream="atp:{in}:dlq", quarantine_stream="atp:{in}:quarantine")


IN = {"input_streams": ("atp:{in}:pos",), "dead_letter_stream": "atp:{in}:dlq",
      "quarantine_stream": "atp:{in}:quarantine"}


async def test_input_streams_on_the_cluster_apply_facts_and_dead_letter_bad_entries(
        start_service: ServiceFactory, cluster_url: str, tmp_path: Path) -> None:
    _, client = await start_service(**IN)
    now = int(time.time() * 1000)
    r = RedisCluster.from_url(cluster_url)
    try:
        r.xadd("atp:{in}:pos", F("g1", "RECEIPT", "A", "S1", 5, now - 1000).fields())
        r.xadd("atp:{in}:pos", {"event_id": "bad1", "kind": "SALE"})
        r.xadd("atp:{in}:pos", F("g2", "SALE", "A", "S1", 2, now - 500).fields())
        facts = tmp_path / "wms.jsonl"  # and as an operator would, with atpctl
        facts.write_text(json.dumps({"eventId": "g3", "source": "wms", "kind": "FACT_KIND_RECEIPT", "sku": "A",
                                     "location": "S1", "quantity": 4, "eventTime": iso(now - 100)}))
        done = await asyncio.to_thread(subprocess.run, [
            sys.executable, "-m", "atp_client.ctl", "events", "publish", str(facts), "--redis-url", cluster_url,
            "--redis-cluster", "--stream", "atp:{in}:pos"], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        for _ in range(400):
            (a,) = await client.availability([("A", "S1")])
            pending = r.xpending("atp:{in}:pos", "atp")["pending"]
            if a.on_hand == 7 and r.xlen("atp:{in}:dlq") == 1 and pending == 0:
                break
            await asyncio.sleep(0.025)
        assert a.on_hand == 7
        ((_, dead),) = r.xrange("atp:{in}:dlq")
        assert dead[b"event_id"] == b"bad1" and dead[b"_reason"] == b"source: missing"
        assert pending == 0  # every entry acknowledged: applied, or once its dead letter was written
    finally:
        r.close()


async def test_channel_feeds_on_the_cluster_publish_durable_availability(
        start_service: ServiceFactory, cluster_url: str, tmp_path: Path) -> None:
    _, client = await start_service(clock=ManualClock(T0), estate=write_estate(tmp_path))
    await client.record_events([fact("c1", "COUNT", "sku-a", "dc-1", 40, T0), fact("c2", "COUNT", "sku-a",
                                                                                   "store-1", 3, T0)])
    r = RedisCluster.from_url(cluster_url)
    try:
        for _ in range(400):
            entries = [from_fields(fields) for _, fields in r.xrange("atp:{avail}:pickup")]
            if pickup := values_of(entries):
                break
            await asyncio.sleep(0.025)
        assert isinstance(entries[0], StartMarker), "the start's marker first, on the channels' slot too"
        assert [(u.sku, u.location, u.quantity) for u in pickup] == [("sku-a", "store-1", 2)]
        assert r.hlen("atp:{avail}:pickup:state") == 1
    finally:
        r.close()


async def test_a_partial_release_retried_after_the_ttl_releases_every_part(start_service: ServiceFactory) -> None:
    """An order's partial Release retried by its operation id once its TTL has passed, before any
    housekeeping pass (an hour apart here): answered EXPIRED, and no part keeps its units."""
    clock = ManualClock(T0)
    service, client, a, b = await _two_groups(start_service, clock, maintenance_interval_ms=3_600_000)
    held = await client.reserve("o1", [(a, "S1", 3), (b, "S1", 2)], ttl_seconds=60)
    assert held.state == pb.RESERVATION_STATE_HELD
    first = await client.release("o1", lines=[(a, "S1", 1)], operation_id="op-1")
    assert first.state == pb.RESERVATION_STATE_HELD and await _reserved(client, (a, b)) == [2, 2]
    clock.advance(61_000)
    retried = await client.release("o1", lines=[(a, "S1", 1)], operation_id="op-1")
    assert retried.state == pb.RESERVATION_STATE_EXPIRED
    assert service.engine is not None
    await service.engine.run_maintenance()
    assert (await client.get_reservation("o1")).state == pb.RESERVATION_STATE_EXPIRED
    assert await _reserved(client, (a, b)) == [0, 0]



async def test_an_order_expired_while_a_group_is_away_past_the_retention_still_releases_every_part_R3(
        start_service: ServiceFactory) -> None:
    """The order's expiry is recorded at its home, pending, while the other part's group does not
    answer writes (its primary paused) for longer than the retention. The order is not resolved
    until every part has given its units back: forgotten meanwhile, its saga found no record once the
    group answered again, and the part held its units for good (parts never expire by themselves).
    Housekeeping passes are run by the test (one an hour otherwise)."""
    clock = ManualClock(T0)
    service, client = await start_service(clock=clock, limits=Limits(retention_ms=60_000), redis_timeout_s=0.5,
                                          maintenance_interval_ms=3_600_000)
    engine = service.engine
    assert engine is not None and engine.orders is not None
    primary = {g: engine._log.client.get_node_from_key(engine._log.keys.log(g)).port for g in range(4)}
    skus = [f"K{i}" for i in range(50)]
    a, b = next((x, y) for x in skus for y in skus if engine.place(x) < engine.place(y)
                and primary[engine.place(x)] != primary[engine.place(y)])  # the home, and a group elsewhere
    await answered(lambda: client.record_events([receipt("s1", a, "S1", 10), receipt("s2", b, "S1", 10)]))
    await answered(lambda: client.reserve("o", [(a, "S1", 3), (b, "S1", 2)], ttl_seconds=60))
    orders, away = engine.orders, redis.Redis(port=primary[engine.place(b)])

    def sagas_ended() -> bool:  # housekeeping's expiry tasks, and the sagas they run
        return not engine._housekeeper._background and not orders._tasks

    away.client_pause(600_000, all=False)  # writes wait, scripts too
    try:
        for _ in range(2):  # the TTL passes, then the retention of the order's expiry
            clock.advance(61_000)
            await engine.run_maintenance()  # the order's expiry saga: stopped at the part that does not answer
            await until(sagas_ended, "the order's saga stopped")
    finally:
        away.client_unpause()
        away.close()
    await until(lambda: not engine.actors[engine.place(b)].in_doubt, "the group settled")
    await engine.run_maintenance()
    await until(sagas_ended, "the order's saga ended")
    assert [q.reserved for q in engine.availability([(a, "S1"), (b, "S1")])] == [0, 0]
    assert (await client.get_reservation("o")).state == pb.RESERVATION_STATE_EXPIRED


async def test_a_partial_release_past_a_part_s_shipment_operations_never_wedges_the_order_R3(
        start_service: ServiceFactory) -> None:
    """A SHIPMENT fact naming the order fulfils some of it between its partial operations (a part's
    record may count more of them than its order's). A partial Release the order's record accepts is a
    decision its parts carry through (R3): the part refused it at max_ops_per_reservation, the order
    stayed pending for good, and every later change, read and expiry of it failed — its units
    committed for good."""
    _service, client, a, b = await _two_groups(start_service, ManualClock(T0),
                                               limits=Limits(max_ops_per_reservation=1))
    await client.reserve("o6", [(a, "S1", 3), (b, "S1", 2)], ttl_seconds=600)
    await client.confirm("o6")
    await _shipped(client, "ship-a", a, 1, "o6")
    partly = await client.release("o6", lines=[(a, "S1", 1)], operation_id="r1")
    assert [(line.committed, line.released) for line in partly.lines] == [(1, 1), (2, 0)]
    again = await client.release("o6", lines=[(a, "S1", 1)], operation_id="r1")  # R5: a retry, harmless
    assert [(line.committed, line.released) for line in again.lines] == [(1, 1), (2, 0)]
    assert (await client.release("o6")).state == pb.RESERVATION_STATE_FULFILLED
    assert [(q.on_hand, q.reserved, q.committed) for q in await client.availability([(a, "S1"), (b, "S1")])] == [
        (9, 0, 0), (10, 0, 0)]
