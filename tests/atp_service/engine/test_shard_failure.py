"""No silent death: a shard whose task ends is seen at once by callers, health and metrics."""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from tests.atp_service.app.test_health_truth import not_serving, status
from tests.atp_service.edge.test_api import receipt
from tests.atp_service.refusals import said
from tests.conftest import ServiceFactory
from tests.waiting import until


async def test_a_failed_shard_turns_health_not_serving_and_the_others_keep_answering(
        start_service: ServiceFactory) -> None:
    service, client = await start_service(shards=2)
    engine = service.engine
    assert engine is not None
    sick = engine.actors[engine.place("A")]
    healthy_sku = next(f"S{i}" for i in range(100) if engine.place(f"S{i}") != sick.shard)
    await client.record_events([receipt("a", "A", "DC", 5), receipt("b", healthy_sku, "DC", 5)])

    def bug(now: int, answers: list[Any]) -> None:
        raise RuntimeError("a bug outside any command")

    sick._seal = bug  # type: ignore[method-assign]
    with pytest.raises(grpc.aio.AioRpcError) as told:
        await client.reserve("r1", [("A", "DC", 1)], ttl_seconds=60)
    assert said(told.value) == (grpc.StatusCode.UNAVAILABLE, "SHARD_STOPPED")
    await until(lambda: service.failed.is_set(), "the service told to stop")
    assert service.metrics.registry.get_sample_value("atp_shard_failures_total") == 1  # this service's own
    await until(lambda: not_serving(status(client.channel)), "health NOT_SERVING")
    assert (await client.reserve("r2", [(healthy_sku, "DC", 1)], ttl_seconds=60)).state == 1  # HELD
