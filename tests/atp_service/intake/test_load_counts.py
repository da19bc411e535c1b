"""LoadCounts against a real service and Redis: a block split by shard; quarantined rows reach the
quarantine stream and the counters even when another shard of the same block refuses its part
(E6: never dropped silently), and a quarantine stream that cannot be written refuses the call."""

from __future__ import annotations

from typing import Any

import grpc
import numpy as np
import pytest
import redis

from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_service.app.service import AtpService
from tests.atp_service.edge.test_api import receipt
from tests.atp_service.refusals import said
from tests.conftest import ServiceFactory

HOUR = 3_600_000


def _block(skus: list[str], at: list[int]) -> pb.LoadCountsRequest:
    n = len(skus)
    return pb.LoadCountsRequest(source="erp", skus=skus, locations=["L1"],
                                sku_index=np.arange(n, dtype="<u4").tobytes(), location_index=bytes(4 * n),
                                on_hand=np.full(n, 5, dtype="<i8").tobytes(), as_of=np.array(at, dtype="<i8").tobytes())


def _counted(service: AtpService) -> dict[str, float]:
    """LoadCounts' facts by outcome, those counted at least once (quarantined is exported at 0 from the start)."""
    return {s.labels["outcome"]: s.value for m in service.metrics.registry.collect() for s in m.samples
            if s.name == "atp_facts_total" and s.labels.get("origin") == "load" and s.value}


async def _two_shards(start_service: ServiceFactory) -> tuple[AtpService, Any, str, str]:
    """A service of two shards whose stream time is now, and a SKU on each shard."""
    service, client = await start_service(shards=2)
    engine = service.engine
    assert engine is not None
    first = next(f"A{i}" for i in range(100) if engine.place(f"A{i}") == 0)
    second = next(f"B{i}" for i in range(100) if engine.place(f"B{i}") == 1)
    await client.record_events([receipt("r0", first, "L1", 1), receipt("r1", second, "L1", 1)])
    return service, client, first, second


async def test_a_shard_that_refuses_its_part_leaves_the_others_quarantine_in_the_stream(
        start_service: ServiceFactory, redis_url: str) -> None:
    service, client, first, second = await _two_shards(start_service)
    assert service.engine is not None

    def bug(now: int, answers: list[Any]) -> None:
        raise RuntimeError("a bug outside any command")

    service.engine.actors[1]._seal = bug  # type: ignore[method-assign]  # shard 1 fails on its part
    now = service.clock.now_ms()
    with pytest.raises(grpc.aio.AioRpcError) as told:  # shard 0: one applied, one late; shard 1 fails
        await client.load_counts(_block([f"{first}x", first, second], [now, now - 30 * HOUR, now]))
    assert said(told.value)[0] == grpc.StatusCode.UNAVAILABLE
    entries = redis.Redis.from_url(redis_url).xrange("atp:quarantine")
    assert [(e[b"sku"].decode(), e[b"reason"][:4]) for _, e in entries] == [(first, b"late")]
    assert _counted(service) == {"applied": 1, "quarantined": 1, "unavailable": 1}


async def test_a_quarantine_stream_that_cannot_be_written_refuses_the_call(
        start_service: ServiceFactory, redis_url: str) -> None:
    service, client, first, _ = await _two_shards(start_service)
    redis.Redis.from_url(redis_url).set("atp:quarantine", "not a stream")  # every XADD to it fails
    now = service.clock.now_ms()
    with pytest.raises(grpc.aio.AioRpcError) as told:
        await client.load_counts(_block([f"{first}x", first], [now, now - 30 * HOUR]))
    assert said(told.value) == (grpc.StatusCode.UNAVAILABLE, "STORAGE_UNREACHABLE")
    assert _counted(service) == {"applied": 1, "unavailable": 1}  # the late row: durable, not yet streamed
