"""``atp_clock_offset_seconds``: this process's service clock against Redis's ``TIME``, measured by
housekeeping, on a real Redis and a real Redis Cluster. A service whose clock is an hour behind the
host's (an injected clock standing for a host whose time source failed) reports about -3,600 s."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from atp_service import AtpService, ManualClock
from tests.atp_service.app.test_cluster_mode import CLUSTER
from tests.conftest import ServiceFactory, services_on

HOUR_S = 3600


async def measured_offset(service: AtpService) -> float:
    for _ in range(1000):  # bounded: 10 s; the first pass measures at once
        value = service.metrics.registry.get_sample_value("atp_clock_offset_seconds")
        if value:
            return float(value)
        await asyncio.sleep(0.01)
    raise AssertionError("no clock offset measured within 10 s")


@pytest.fixture
async def start_on_cluster(cluster_url: str) -> AsyncIterator[ServiceFactory]:
    async with services_on(cluster_url, **CLUSTER) as start:
        yield start


@pytest.mark.parametrize("where", ["redis", "cluster"])
async def test_a_clock_an_hour_behind_redis_reads_about_minus_an_hour(
        where: str, start_service: ServiceFactory, start_on_cluster: ServiceFactory) -> None:
    start = start_service if where == "redis" else start_on_cluster
    service, _ = await start(clock=ManualClock(int((time.time() - HOUR_S) * 1000)), maintenance_interval_ms=50)
    offset = await measured_offset(service)
    # Redis runs on this host: the two clocks are one, but for the hour and the round trip (a loose
    # bound here: the injected clock stands still while Redis's moves on through the test).
    assert -HOUR_S - 60 < offset < -HOUR_S + 1, offset
