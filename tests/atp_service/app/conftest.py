"""Fixtures shared by the tests of service processes sharing a keyspace."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.atp_service.app.test_processes import SHARDS
from tests.atp_service.app.test_processes_streams import STREAMS
from tests.conftest import ServiceFactory, services_on


@pytest.fixture
async def start_leased_readers(redis_url: str) -> AsyncIterator[ServiceFactory]:
    """Processes under leases of 5 s (none lapses in these tests), balancing every 200 ms, each reading the input
    streams ``STREAMS`` unless started with ``input_streams=()``."""
    async with services_on(redis_url, ownership="leases", lease_ms=5_000, balance_ms=200, shards=SHARDS,
                           input_streams=STREAMS) as factory:
        yield factory
