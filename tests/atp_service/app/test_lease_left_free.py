"""A group left free by a live process that takes none (``ownership = leases``): an earlier release's
process in a rolling upgrade, whose every balance fails yet which stays registered and renews."""

from __future__ import annotations

import zlib
from collections.abc import AsyncIterator

import pytest

from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_service import AtpService, free_port
from tests.atp_service.edge.test_api import receipt
from tests.atp_service.redis_proxy import until
from tests.conftest import ServiceFactory, services_on

SHARDS = 6


@pytest.fixture
async def start(redis_url: str) -> AsyncIterator[ServiceFactory]:
    async for start in services_on(redis_url, ownership="leases", lease_ms=600, shards=SHARDS, input_streams=()):
        yield start


def owned(service: AtpService) -> set[int]:
    assert service.membership is not None and service.engine is not None
    return {g for g in service.membership.leases.held if not service.engine.actors[g].vacant}


async def test_a_group_given_up_by_a_process_that_takes_none_is_taken_by_one_at_its_share(
        start: ServiceFactory) -> None:
    """Three processes at their share (2 of 6 groups each); one stops balancing but stays registered,
    then gives a group up (a shard that stopped working): the two others, each at its share, left the
    group to nobody, and its SKUs answered no caller for as long as that process lived."""
    running = [await start(port=free_port(), host="127.0.0.1") for _ in range(3)]
    services = [s for s, _ in running]
    await until(lambda: sorted(len(owned(s)) for s in services) == [2, 2, 2], "the groups spread, 2 each", 60)
    stuck, client = running[2]
    assert stuck.membership is not None and stuck.engine is not None
    group = min(owned(stuck))
    sku = next(s for s in (f"k{i}" for i in range(256)) if zlib.crc32(s.encode()) % SHARDS == group)
    assert (await client.record_events([receipt("in-1", sku, "DC", 5)]))[0].outcome == pb.FACT_OUTCOME_APPLIED
    stuck.membership._tasks[1].cancel()  # its balance: every turn of an earlier release's fails; it renews on
    stuck.membership.failed(stuck.engine.actors[group])  # the group handed back, to whoever takes it next
    healthy = services[:2]
    await until(lambda: any(group in owned(s) for s in healthy), f"group {group} taken by a process at its share", 60)
    taker, taker_client = next(p for p in running[:2] if group in owned(p[0]))
    (position,) = await taker_client.availability([(sku, "DC")])  # recovered from the group's log
    assert position.on_hand == 5
    assert (await taker_client.reserve("r-1", [(sku, "DC", 2)])).state == pb.RESERVATION_STATE_HELD
    assert taker.membership is not None and taker.membership.watch.out == {stuck.membership.address}
    assert taker.metrics.registry.get_sample_value("atp_processes_not_taking") == 1
