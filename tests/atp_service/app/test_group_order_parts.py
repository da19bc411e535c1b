"""Orders spanning shards on a Redis Cluster (sagas of one-shard parts) whose lines name location
groups: a position may stand in several records of one part (a plain line and a group line whose
units came from the same location), and every change of the order moves all of them (R3, R4)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from atp_client import AtpClient
from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_service import AtpService
from tests.atp_service.channel_helpers import fact, write_estate
from tests.conftest import ServiceFactory, services_on

T = 1_700_000_000_000


@pytest.fixture
async def start_service(cluster_url: str, tmp_path: Path) -> AsyncIterator[ServiceFactory]:
    async with services_on(cluster_url, redis_cluster=True, input_streams=(), estate=write_estate(tmp_path)) as start:
        yield start


async def store_1(client: AtpClient, sku: str) -> tuple[int, int, int]:
    (p,) = await client.availability([(sku, "store-1")])
    return p.on_hand, p.reserved, p.committed


async def stocked_order(service: AtpService, client: AtpClient, rid: str) -> str:
    """An order over two shards: ``a`` asked at store-1 (3) and from the group north-first (2; its
    first member store-2 is empty, so store-1 gives them too), ``b`` at dc-1. Returns ``a``."""
    assert service.engine is not None and service.engine.orders is not None
    place = service.engine.place
    a = "sku-a"
    b = next(f"sku-b{i}" for i in range(100) if place(f"sku-b{i}") != place(a))
    await client.record_events([fact("ca1", "COUNT", a, "store-1", 10, T), fact("ca2", "COUNT", a, "store-2", 0, T),
                                fact("cb", "COUNT", b, "dc-1", 10, T)])
    held = await client.reserve(rid, [(a, "store-1", 3), (a, "north-first", 2), (b, "dc-1", 1)],
                                channel="web", ttl_seconds=600)
    assert held.state == pb.RESERVATION_STATE_HELD, held
    assert [(x.location, x.quantity) for x in held.lines[1].allocations] == [("store-1", 2)]
    assert await store_1(client, a) == (10, 5, 0)
    return a


async def test_a_partial_release_of_a_position_in_two_records_of_a_part_releases_every_unit_asked(
        start_service: ServiceFactory) -> None:
    service, client = await start_service()
    a = await stocked_order(service, client, "o-rel")
    after = await client.release("o-rel", [(a, "store-1", 5)], operation_id="rel-1")
    assert [(ln.location, ln.held) for ln in after.lines if ln.sku == a] == [("store-1", 0), ("store-1", 0)]
    assert await store_1(client, a) == (10, 0, 0), "the part holds nothing the order released"


async def test_a_partial_fulfilment_of_a_position_in_two_records_of_a_part_ships_every_unit_asked(
        start_service: ServiceFactory) -> None:
    service, client = await start_service()
    a = await stocked_order(service, client, "o-ful")
    await client.confirm("o-ful")
    after = await client.fulfill("o-ful", [(a, "store-1", 5)], operation_id="ful-1")
    assert sum(ln.fulfilled for ln in after.lines if ln.sku == a) == 5
    assert await store_1(client, a) == (5, 0, 0), "the part keeps nothing committed the order shipped"
