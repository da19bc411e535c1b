"""``redis_wait_replicas``: a change is acknowledged only once a replica holds it (``WAIT`` on the
writer's own connection). With the replica gone a change is answered in doubt, never as done; once
the replica is back the in-doubt change is settled and a retry with the same id answers what was
decided (R5, R7) — and every shard answers (liveness)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import redis

from atp_client import AtpClient
from atp_service import AtpService, EmbeddedRedis
from tests.atp_service.edge.test_api import receipt
from tests.conftest import test_config as make_config


@pytest.fixture
def primary_and_replica(tmp_path: Path) -> Iterator[tuple[EmbeddedRedis, EmbeddedRedis]]:
    primary = EmbeddedRedis(tmp_path / "primary").start()
    replica = EmbeddedRedis(tmp_path / "replica", extra_args=["--replicaof", "127.0.0.1", str(primary.port)])
    replica.start()
    try:
        _until_in_sync(replica)
        yield primary, replica
    finally:
        replica.stop()
        primary.stop()


def _until_in_sync(replica: EmbeddedRedis) -> None:
    with redis.Redis(host="127.0.0.1", port=replica.port) as client:
        for _ in range(200):
            if client.info("replication").get("master_link_status") == "up":
                return
            time.sleep(0.05)
    raise AssertionError("the replica did not follow its primary")


async def test_a_change_is_acknowledged_only_once_a_replica_holds_it(
        primary_and_replica: tuple[EmbeddedRedis, EmbeddedRedis]) -> None:
    primary, replica = primary_and_replica
    config = make_config(redis_wait_replicas=1, redis_wait_timeout_ms=200, redis_timeout_s=1.0)
    service = AtpService(config, primary.url)
    await service.start()
    client = AtpClient(f"127.0.0.1:{service.port}", timeout_s=5.0)
    try:
        await client.record_events([receipt("stock", "A", "DC", 10)])
        assert (await client.reserve("r1", [("A", "DC", 2)], ttl_seconds=600)).state == 1
        replica.stop()
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await client.reserve("r2", [("A", "DC", 3)], ttl_seconds=600)
        assert refused.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
        replica.start()
        _until_in_sync(replica)
        answer = await _retried(lambda: client.reserve("r2", [("A", "DC", 3)], ttl_seconds=600))
        assert answer.state == 1  # the change in doubt had landed on the primary: settled, then answered
        for sku in ("A", "B", "C", "D", "E", "F", "G", "H"):  # every shard answers again
            await _retried(lambda sku=sku: client.availability([(sku, "DC")]))  # type: ignore[misc]
        (available,) = await client.availability([("A", "DC")])
        assert available.available == 5  # r1 and r2 held, once each
    finally:
        await client.close()
        await service.stop(grace_s=0.1)


async def _retried(call: object, tries: int = 100) -> object:
    for _ in range(tries):
        try:
            return await call()  # type: ignore[operator]
        except grpc.aio.AioRpcError as exc:
            if exc.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise
            await asyncio.sleep(0.1)
    raise AssertionError("no answer after the replica came back")
