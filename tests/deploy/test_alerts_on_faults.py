"""Each important fault, caused on a real service with a real Redis, fires its alert over the values
the service's own /metrics endpoint exports; a healthy service fires none."""

from __future__ import annotations

from pathlib import Path

import grpc
import redis
import redis.asyncio as aioredis

from atp_service.metrics import APPEND_FAILURE_REASONS
from atp_service.storage.embedded_redis import EmbeddedRedis
from reservation import Limits
from tests.atp_service.app.test_redis_lost_tail import restored, saved
from tests.atp_service.edge.test_api import receipt
from tests.conftest import ServiceFactory, services_on
from tests.waiting import answered, until

from .scraped_alerts import firing, scrape


async def test_a_healthy_busy_service_fires_no_alert(start_service: ServiceFactory, tmp_path: Path) -> None:
    service, client = await start_service(metrics_port=0)
    await client.record_events([receipt("stock", "A", "S1", 1000)])
    before = scrape(service.metrics_port)
    for n in range(50):
        await client.reserve(f"ok-{n}", [("A", "S1", 1)])
    after = scrape(service.metrics_port)
    assert firing(before, after, tmp_path) == set()


async def test_new_reserves_refused_at_a_shards_bound_fire_an_alert(
        start_service: ServiceFactory, tmp_path: Path) -> None:
    """A shard remembering ``max_resolved_reservations_per_shard`` refuses every new Reserve of its
    SKUs CAPACITY_REACHED (RESOURCE_EXHAUSTED) — a sold-out launch hammered by bots with new ids —
    and no alert fired: those refusals are not counted as shed, and no rule read them."""
    bound = 20
    service, client = await start_service(metrics_port=0, limits=Limits(
        max_live_reservations_per_shard=10, max_resolved_reservations_per_shard=bound, retention_ms=3_600_000))
    await client.record_events([receipt("stock", "A", "S1", 5)])
    for n in range(bound):
        await client.reserve(f"bot-{n}", [("A", "S1", 6)])  # refused for want of stock: remembered (R5)
    refused = 0
    for n in range(bound, 3 * bound):
        if n == bound + 1:
            before = scrape(service.metrics_port)  # the refusals' series are there: Prometheus has seen them
        try:
            await client.reserve(f"bot-{n}", [("A", "S1", 1)])
        except grpc.aio.AioRpcError as exc:
            assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            refused += 1
    assert refused == 2 * bound  # every new Reserve on the shard is refused CAPACITY_REACHED
    after = scrape(service.metrics_port)
    assert firing(before, after, tmp_path) == {"ATPReservationsCapacityReached"}


async def test_redis_gone_fires_the_append_failure_alerts(tmp_path: Path) -> None:
    """The service's own Redis killed: every Reserve is answered UNAVAILABLE (nothing applied), and no
    input stream is read. ATPCallsUnavailable fires from the first UNAVAILABLE answers: the series it
    reads was there, at 0, before them (a series born with its first value shows no rise to rate())."""
    with EmbeddedRedis(tmp_path / "redis") as server:
        async with services_on(server.url, redis_timeout_s=0.5) as start:
            service, client = await start(metrics_port=0)
            await answered(lambda: client.record_events([receipt("stock", "A", "S1", 1000)]))
            await answered(lambda: client.reserve("ok-0", [("A", "S1", 1)]))
            before = scrape(service.metrics_port)
            server.kill()
            unavailable = 0
            for n in range(20):
                try:
                    await client.reserve(f"gone-{n}", [("A", "S1", 1)])
                except grpc.aio.AioRpcError as exc:
                    assert exc.code() == grpc.StatusCode.UNAVAILABLE
                    unavailable += 1
            assert unavailable == 20
            after = scrape(service.metrics_port)
            assert {"ATPRedisAppendFailures", "ATPIngestReadFailing", "ATPCallsUnavailable"} <= firing(
                before, after, tmp_path)


async def test_a_shard_stopped_by_redis_losing_its_entries_fires_an_alert(
        start_service: ServiceFactory, redis_url: str, tmp_path: Path) -> None:
    """Redis restarted from older data lost a reservation's entry (R7): the shard stops (LogDiverged) and
    the process is told to stop, exit status 4. Scraped before it goes, ATPShardFailed fires."""
    service, client = await start_service(metrics_port=0, owner_check_s=0.05)
    await client.record_events([receipt("e1", "SKU", "DC", 10)])
    direct = aioredis.Redis.from_url(redis_url)
    try:
        image = await saved(direct)
        await client.reserve("r1", [("SKU", "DC", 4)], ttl_seconds=600)
        before = scrape(service.metrics_port)
        await restored(direct, image, at_once=True)  # r1's entry is gone; the claim is still this instance's
        await until(lambda: service.failed.is_set(), "the shard stopped on the lost entry", timeout_s=20)
    finally:
        await direct.aclose()
    after = scrape(service.metrics_port)
    assert after['atp_shard_failures_total{instance="atp:9464", job="atp-service"}'] == 1
    assert "ATPShardFailed" in firing(before, after, tmp_path)


async def test_redis_out_of_memory_is_told_apart_and_fires_its_own_alert(tmp_path: Path) -> None:
    """Redis at its ``maxmemory`` (``noeviction``) refuses every write while health stays SERVING and
    reads answer: ``atp_log_append_failures_total`` rose as for a timeout or a lost connection, and
    the alert sent the operator to the runbook of an unreachable Redis. The failures carry their
    reason, and a full Redis fires ATPRedisOutOfMemory, not ATPRedisAppendFailures."""
    with EmbeddedRedis(tmp_path / "redis") as server:
        admin = redis.Redis.from_url(server.url)
        async with services_on(server.url) as start:
            service, client = await start(metrics_port=0, shards=1)
            await client.record_events([receipt("stock", "A", "S1", 1000)])
            await client.reserve("ok-0", [("A", "S1", 1)])
            before = scrape(service.metrics_port)
            admin.config_set("maxmemory", 1)  # full: every write that may grow it is refused OOM
            try:
                for n in range(5):
                    try:
                        await client.reserve(f"full-{n}", [("A", "S1", 1)])
                        raise AssertionError("a write on a full Redis was accepted")
                    except grpc.aio.AioRpcError as exc:
                        assert "Redis is out of memory" in (exc.details() or ""), exc.details()
            finally:
                admin.config_set("maxmemory", 0)
            after = scrape(service.metrics_port)
            failures = {reason: after[f'atp_log_append_failures_total{{instance="atp:9464", job="atp-service", '
                                      f'reason="{reason}"}}'] for reason in APPEND_FAILURE_REASONS}
            assert failures == {**dict.fromkeys(APPEND_FAILURE_REASONS, 0.0), "out_of_memory": 5.0}
            fired = firing(before, after, tmp_path)
            assert "ATPRedisOutOfMemory" in fired and "ATPRedisAppendFailures" not in fired, fired
        admin.close()
