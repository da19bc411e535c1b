"""Several service processes sharing one keyspace (``ownership = leases``): each group owned by
exactly one process, shares balanced, groups handed over when a process stops, and a call for a
group another process owns refused with GROUP_MOVED before anything is applied."""

from __future__ import annotations

import zlib
from collections.abc import AsyncIterator

import grpc
import pytest

from atp_client import AtpClient
from atp_service import AtpService, free_port
from tests.atp_service.edge.test_api import receipt
from tests.atp_service.redis_proxy import until
from tests.conftest import ServiceFactory, services_on

SHARDS = 4


@pytest.fixture
async def start_process(redis_url: str) -> AsyncIterator[ServiceFactory]:
    async for start in services_on(redis_url, ownership="leases", lease_ms=600, shards=SHARDS, input_streams=()):
        yield start


async def start_one(start: ServiceFactory) -> tuple[AtpService, AtpClient]:
    port = free_port()
    return await start(port=port, host="127.0.0.1")


def owned(service: AtpService) -> set[int]:
    assert service.membership is not None
    return {g for g in service.membership.leases.held if not service.engine.actors[g].vacant}  # type: ignore[union-attr]


def group_of(sku: str) -> int:
    return zlib.crc32(sku.encode()) % SHARDS


def owner_of(processes: list[tuple[AtpService, AtpClient]], sku: str) -> tuple[AtpService, AtpClient]:
    return next(p for p in processes if group_of(sku) in owned(p[0]))


def balanced(processes: list[tuple[AtpService, AtpClient]]) -> bool:
    shares = [owned(service) for service, _ in processes]
    every = set().union(*shares)
    return every == set(range(SHARDS)) and sum(map(len, shares)) == SHARDS and \
        max(map(len, shares)) - min(map(len, shares)) <= 1


async def test_three_processes_share_the_groups_each_owned_once(start_process: ServiceFactory) -> None:
    processes = [await start_one(start_process) for _ in range(3)]
    await until(lambda: balanced(processes), "the groups spread over the three processes", 60)


async def test_a_call_for_another_process_s_group_is_moved_and_nothing_is_applied(
        start_process: ServiceFactory) -> None:
    processes = [await start_one(start_process) for _ in range(2)]
    await until(lambda: balanced(processes), "the groups spread over both processes", 60)
    sku = "moved-sku"
    owner, client = owner_of(processes, sku)
    other = next(c for s, c in processes if s is not owner)
    await client.record_events([receipt("in-1", sku, "DC", 5)])
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await other.reserve("r-moved", [(sku, "DC", 2)])
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "GROUP_MOVED" in str(refused.value.trailing_metadata())
    (position,) = await client.availability([(sku, "DC")])
    assert position.available == 5, "nothing applied by the refused call"
    assert (await client.reserve("r-moved", [(sku, "DC", 2)])).state  # the owner answers


async def test_a_stopped_process_hands_its_groups_over_and_nothing_is_lost(start_process: ServiceFactory) -> None:
    processes = [await start_one(start_process) for _ in range(2)]
    await until(lambda: balanced(processes), "the groups spread over both processes", 60)
    skus = [f"s{i}" for i in range(12)]
    for n, sku in enumerate(skus):
        _, client = owner_of(processes, sku)
        await client.record_events([receipt(f"in-{n}", sku, "DC", 10)])
        await client.reserve(f"r-{n}", [(sku, "DC", 3)])
    leaving, _ = processes[0]
    await leaving.stop(grace_s=0.1)
    staying, client = processes[1]
    await until(lambda: owned(staying) == set(range(SHARDS)), "the other process owns every group", 60)
    for n, sku in enumerate(skus):
        assert (await client.get_reservation(f"r-{n}")).lines[0].held == 3
        (position,) = await client.availability([(sku, "DC")])
        assert (position.on_hand, position.available) == (10, 7)
