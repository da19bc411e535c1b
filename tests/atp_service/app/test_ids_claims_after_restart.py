"""R5 across processes (``ownership = leases``, ``engine/ids.py``): the claim of a reservation id lasts while
its record is remembered, also where processes restart (or groups move) more often than the sweep's rounds
come by. A confirmed record has no expiry: its claim is kept only by the sweep over the records served."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aredis

from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_service import AtpService
from tests.atp_service.edge.test_api import receipt
from tests.conftest import ServiceFactory, services_on
from tests.ports import held_port
from tests.waiting import until

SHARDS = 2
CLAIM_LEFT_MS = 60_000
"""What is left of the claim when the next process starts: made a day ago, every process since gone
within the hour of its start."""


@pytest.fixture
async def start_process(redis_url: str) -> AsyncIterator[ServiceFactory]:
    async with services_on(redis_url, ownership="leases", lease_ms=5_000, balance_ms=200, shards=SHARDS,
                           input_streams=()) as start:
        yield start


def serves_every_group(service: AtpService) -> bool:
    engine = service.engine
    return engine is not None and all(not actor.vacant for actor in engine.actors)


async def test_a_restarted_process_extends_the_claims_of_the_records_it_took_R5(
        start_process: ServiceFactory, redis_url: str) -> None:
    """The sweep's first round came an hour after a process started (``REFRESH_EVERY_S``): a process that
    crashed or was redeployed within the hour, again and again, never extended the claim of a confirmed
    record, which expired a day after its Reserve — and a reuse of its id with lines of another group was
    then decided there as a second record (one id, two reservations). Now a group taken (at start, or
    from another process) has its records' claims extended by the next housekeeping passes."""
    first, client = await start_process(port=held_port(), host="127.0.0.1")
    await until(lambda: serves_every_group(first), "the first process serving every group")
    await client.record_events([receipt("in-1", "SKU", "DC", 5)])
    await client.reserve("kept", [("SKU", "DC", 1)], ttl_seconds=600)
    assert (await client.confirm("kept")).state == pb.RESERVATION_STATE_CONFIRMED
    assert first.engine is not None and first.engine.ids is not None
    key = first.engine.ids.claims.key("kept")
    await client.close()
    await first.stop(grace_s=0.1)
    r = aredis.Redis.from_url(redis_url)
    try:
        assert await r.pexpire(key, CLAIM_LEFT_MS), "the record's claim was made"
        second, _ = await start_process(port=held_port(), host="127.0.0.1")
        await until(lambda: serves_every_group(second), "the next process serving every group")
        assert second.engine is not None and second.engine.ids is not None
        guard = second.engine.ids
        for _ in range(SHARDS + 1):  # passes enough for one record per group (and a pass to start them)
            guard.refresh_step()
            await asyncio.gather(*guard._refreshing)
        remembered_ms = second.config.limits.retention_ms  # resolved any moment: remembered this long
        assert await r.pttl(key) > remembered_ms, "the confirmed record's claim not extended after the restart"
        assert await r.get(key) is not None
    finally:
        await r.aclose()
