"""Many orders (holds spanning groups, expired by sagas) due at once, on a real Redis Cluster (R3, R8)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_service import ManualClock
from atp_service.engine import maintenance
from atp_service.engine.maintenance import EXPIRE_ORDERS_AT_ONCE
from tests.atp_service.app.test_cluster_mode import CLUSTER, _two_groups
from tests.atp_service.edge.test_api import T0
from tests.conftest import ServiceFactory, services_on

ORDERS = 20 * EXPIRE_ORDERS_AT_ONCE


@pytest.fixture
async def start_service(cluster_url: str) -> AsyncIterator[ServiceFactory]:
    """``start_service`` of the test suite, on the cluster."""
    async with services_on(cluster_url, **CLUSTER) as start:
        yield start


async def test_orders_due_at_once_expire_through_a_bounded_number_of_sagas_at_a_time_R3_R8(
        start_service: ServiceFactory) -> None:
    """Each housekeeping pass spawned a saga for every order due (up to 4,096 a shard a pass), all at
    once: their steps filled the shards' mailboxes ahead of every caller's Reserve. At most
    ``EXPIRE_ORDERS_AT_ONCE`` run at a time, the rest wait in the expiry queue; every one expires, and
    a Reserve made meanwhile is taken. Passes are run by the test (the timer's is an hour)."""
    clock = ManualClock(T0)
    service, client, a, b = await _two_groups(start_service, clock, a=ORDERS + 10, b=ORDERS + 10,
                                              maintenance_interval_ms=3_600_000)
    engine = service.engine
    assert engine is not None
    for first in range(0, ORDERS, 50):  # 50 calls at a time: the channel's concurrent streams
        await asyncio.gather(*(client.reserve(f"o{n}", [(a, "S1", 1), (b, "S1", 1)], ttl_seconds=60)
                               for n in range(first, first + 50)))
    clock.advance(61_000)
    sagas = engine._housekeeper._background  # the housekeeper's tasks: here only order expiries
    most = 0
    # A bound against a hang, not a count to meet: the sagas run in real time beside these passes (20 at
    # the fewest; a host with two CPU burners took 54 of the 200 this bound once allowed).
    for _ in range(100 * ORDERS // EXPIRE_ORDERS_AT_ONCE):
        await engine.run_maintenance()
        most = max(most, sum(not task.done() for task in sagas))
        assert most <= EXPIRE_ORDERS_AT_ONCE, f"{most} order sagas expiring at once"
        if not any(q.reserved for q in await client.availability([(a, "S1"), (b, "S1")])):
            break
        await asyncio.sleep(0.01)  # the sagas' steps run
    assert [q.reserved for q in await client.availability([(a, "S1"), (b, "S1")])] == [0, 0]
    assert (await client.get_reservation(f"o{ORDERS - 1}")).state == pb.RESERVATION_STATE_EXPIRED
    assert (await client.reserve("late", [(a, "S1", 1)], ttl_seconds=60)).state == pb.RESERVATION_STATE_HELD


async def test_plain_holds_expire_while_order_sagas_stall_behind_a_backlog_R3(
        start_service: ServiceFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """More orders due than a housekeeping turn takes (``EXPIRE_PER_TURN``), their sagas stalled (a
    part's group not answering): the orders past ``EXPIRE_ORDERS_AT_ONCE`` went back to the expiry
    queue, where each pass took them again first, so a plain hold at the same shard due after them
    was never reached — its units reserved past its TTL for as long as the sagas stalled. Orders
    waiting for a saga now wait beside the queue: the holds after them expire at the next passes."""
    monkeypatch.setattr(maintenance, "EXPIRE_PER_TURN", 4)
    monkeypatch.setattr(maintenance, "EXPIRE_ORDERS_AT_ONCE", 1)
    clock = ManualClock(T0)
    service, client, a, b = await _two_groups(start_service, clock, a=20, b=20, maintenance_interval_ms=3_600_000)
    engine = service.engine
    assert engine is not None and engine.orders is not None
    home = a if engine.place(a) < engine.place(b) else b  # an order's home: the lowest group of its lines
    for n in range(6):  # due first, more than a turn takes
        await client.reserve(f"o{n}", [(a, "S1", 1), (b, "S1", 1)], ttl_seconds=60)
    await client.reserve("plain", [(home, "S1", 1)], ttl_seconds=61)
    gate = asyncio.Event()
    expire = engine.orders.expire

    async def stalled(order_id: str, shard: int) -> None:
        await gate.wait()
        await expire(order_id, shard)

    monkeypatch.setattr(engine.orders, "expire", stalled)
    clock.advance(62_000)
    for _ in range(4):
        await engine.run_maintenance()
    try:
        assert (await client.get_reservation("plain")).state == pb.RESERVATION_STATE_EXPIRED, \
            "a plain hold due after a backlog of orders stayed held (R3)"
    finally:
        gate.set()
    for _ in range(200):  # every order expires once its sagas may go on
        await engine.run_maintenance()
        if not any(q.reserved for q in await client.availability([(a, "S1"), (b, "S1")])):
            break
        await asyncio.sleep(0.01)
    assert [q.reserved for q in await client.availability([(a, "S1"), (b, "S1")])] == [0, 0]
