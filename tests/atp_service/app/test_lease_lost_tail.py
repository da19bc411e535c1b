"""R7 under leases (``ownership = leases``): Redis coming back with older data (a primary restarted from
an older AOF or RDB, a lagging replica promoted) loses entries a leased group acknowledged. The group
must not go on serving them: it is given up and recovered again from what Redis holds.

The older data is made as in ``test_redis_lost_tail``: every key DUMPed, more acknowledged changes, then
every key deleted and RESTOREd. The leases come back too, still this process's: nothing but the log's
end tells it that Redis lost what it holds in memory. On a Redis Cluster every primary comes back so."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
import redis.asyncio as aioredis

from atp_client import AtpClient
from atp_service import AtpService
from tests.atp_service.app.test_redis_lost_tail import restored, saved, services_and_primaries
from tests.atp_service.edge.test_api import receipt
from tests.conftest import ServiceFactory
from tests.ports import held_port
from tests.waiting import until

LEASE_MS = 9000
"""Long enough that a lease RESTOREd with the TTL it had when saved is renewed well before it runs out:
the group is never lost for its lease (which would re-recover it for another reason)."""

LEASED = {"ownership": "leases", "lease_ms": LEASE_MS, "shards": 4, "input_streams": (), "owner_check_s": 0.05}


@pytest.fixture(params=["one Redis", "cluster"])
async def setup(request: pytest.FixtureRequest) -> AsyncIterator[tuple[ServiceFactory, list[aioredis.Redis]]]:
    """A factory of leased processes, and a direct client of every primary (each is restored alone)."""
    async with services_and_primaries(request, LEASED) as pair:
        yield pair


async def _reserved(client: AtpClient) -> int | None:
    """SKU's reserved units at DC as served now (None: its group between owners)."""
    try:
        (position,) = await client.availability([("SKU", "DC")])
    except grpc.aio.AioRpcError:
        return None
    return position.reserved


def _given_up(service: AtpService, why: str) -> float:
    value = service.metrics.registry.get_sample_value("atp_groups_given_up_total", {"why": why})
    assert value is not None
    return value


async def test_an_idle_leased_group_is_recovered_again_when_redis_lost_entries_it_made_durable(
        setup: tuple[ServiceFactory, list[aioredis.Redis]]) -> None:
    """Defect: the owner check that reads each shard's log end ran in keyspace mode only (``leased groups
    are checked by their renewals``, which never read a log). Redis back from data older than a Reserve
    but newer than the group's taking: the lease and owner key still this process's, its renewals went
    on succeeding, and the idle group served the lost reservation's hold — 4 units fewer available than
    Redis holds, health SERVING — until its next write. Now every leased group's log end is read on the
    owner check's cadence: the group finds its log short, is given up (``failed``) and taken again,
    recovered from what Redis holds."""
    start, primaries = setup
    service, client = await start(port=held_port(), host="127.0.0.1")
    await client.record_events([receipt("e1", "SKU", "DC", 10)])
    images = [await saved(primary) for primary in primaries]
    await client.reserve("r1", [("SKU", "DC", 4)], ttl_seconds=600)
    assert await _reserved(client) == 4
    for primary, image in zip(primaries, images, strict=True):
        await restored(primary, image)  # r1's entry is gone; the leases and owner keys are as they were
    await until(lambda: _is_zero(client), "the group serving what Redis holds (r1 lost)", timeout_s=40)
    (position,) = await client.availability([("SKU", "DC")])
    assert (position.on_hand, position.reserved) == (10, 0)
    assert _given_up(service, "failed") >= 1 and _given_up(service, "lease") == 0
    await until(lambda: service.membership is not None and len(service.membership.leases.held) == 4,
                "every group owned again", 40)


async def _is_zero(client: AtpClient) -> bool:
    return await _reserved(client) == 0
