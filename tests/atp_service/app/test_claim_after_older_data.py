"""One writer per keyspace across Redis coming back from older data: a claim that Redis lost (a restart
from an older AOF or RDB, a lagging replica promoted) must never be drawn again by the next claim.

The older data is made as in ``test_redis_lost_tail``: every key DUMPed before instance A claims the
keyspace, then every key deleted and RESTOREd — the owner keys, the claims and the claimants go back to
the claim before A's. Instance B, started before A wrote anything (a rolling deploy, a supervisor), then
claims. B's epoch must be A's no more: A must find itself replaced, not write as B. On a Redis Cluster
(the claim draws its epoch from the claims key, then takes each group) every primary comes back so."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
import redis.asyncio as aioredis

from atp_client import AtpClient
from atp_service import AtpService
from tests.atp_service.app.test_health_truth import health, not_serving
from tests.atp_service.app.test_redis_lost_tail import restored, saved, services_and_primaries
from tests.atp_service.edge.test_api import receipt
from tests.conftest import ServiceFactory
from tests.waiting import until

IDLE = 3600.0
"""A's owner check, made not to run on its own: B claims before A asks (it asks every owner_check_s)."""


@pytest.fixture(params=["one Redis", "cluster"])
async def setup(request: pytest.FixtureRequest) -> AsyncIterator[tuple[ServiceFactory, list[aioredis.Redis]]]:
    """A service factory, and a direct client of every primary (each is restored alone)."""
    cluster = {"input_streams": ()} if request.param == "cluster" else {}
    async with services_and_primaries(request, cluster) as pair:
        yield pair


async def _claim_lost_then_drawn_again(start: ServiceFactory, primaries: list[aioredis.Redis]
                                       ) -> tuple[AtpService, AtpService]:
    """A claims after the save point; Redis comes back from the save; B claims. Returns (A, B)."""
    first, client = await start()
    await client.record_events([receipt("e1", "SKU", "DC", 10)])
    await client.close()
    await first.stop(grace_s=0.1)
    images = [await saved(primary) for primary in primaries]
    older, _ = await start(owner_check_s=IDLE)
    for primary, image in zip(primaries, images, strict=True):
        await restored(primary, image)
    newer, _ = await start(owner_check_s=IDLE)
    return older, newer


async def test_a_claim_redis_lost_is_not_drawn_again_by_the_next_instance(
        setup: tuple[ServiceFactory, list[aioredis.Redis]]) -> None:
    """Defect: a claim drew the highest owner key + 1. Redis back from data older than A's claim held the
    owner keys at the claim before A's, so B drew A's epoch again: A's owner check said A still owned
    the keyspace (an idle A served its memory with health SERVING) and A's writes were accepted as B's —
    two writers deciding against the same units, held apart only by the logs' sequence numbers."""
    older, newer = await _claim_lost_then_drawn_again(*setup)
    assert older._log is not None and newer._log is not None
    assert newer._log.epoch > older._log.epoch
    assert not await older._log.still_owner()  # replaced: the owner keys hold B's claim, not A's
    await until(lambda: older.replaced.is_set(), "A told a newer instance claimed the keyspace", timeout_s=20)
    await until(lambda: not_serving(health(older.port)), "A's health NOT_SERVING")  # replaced: not fit to serve


async def test_an_instance_whose_claim_redis_lost_cannot_write_as_the_next(
        setup: tuple[ServiceFactory, list[aioredis.Redis]]) -> None:
    """A reservation sent to A after B claimed is refused, and nothing of it reaches B's keyspace: B
    sells every unit (before, A's landed as B's, and B stopped at its next write of that shard: its log
    held an entry B never wrote)."""
    older, newer = await _claim_lost_then_drawn_again(*setup)
    a_client, b_client = AtpClient(f"127.0.0.1:{older.port}"), AtpClient(f"127.0.0.1:{newer.port}")
    try:
        with pytest.raises(grpc.aio.AioRpcError):
            await a_client.reserve("r1", [("SKU", "DC", 4)], ttl_seconds=600)
        await b_client.reserve("r2", [("SKU", "DC", 10)], ttl_seconds=600)
        (position,) = await b_client.availability([("SKU", "DC")])
        assert (position.on_hand, position.reserved) == (10, 10)
        assert not newer.failed.is_set()
    finally:
        await a_client.close()
        await b_client.close()
