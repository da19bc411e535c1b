"""Each important fault, caused on a real service with a real Redis, fires its alert over the values
the service's own /metrics endpoint exports; a healthy service fires none."""

from __future__ import annotations

from pathlib import Path

import grpc

from atp_service.storage.embedded_redis import EmbeddedRedis
from reservation import Limits
from tests.atp_service.edge.test_api import receipt
from tests.conftest import ServiceFactory, services_on

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
        async for start in services_on(server.url, redis_timeout_s=0.5):
            service, client = await start(metrics_port=0)
            await client.record_events([receipt("stock", "A", "S1", 1000)])
            await client.reserve("ok-0", [("A", "S1", 1)])
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
            break
