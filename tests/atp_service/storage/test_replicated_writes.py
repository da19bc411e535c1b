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


async def test_every_shard_answers_again_after_a_failover_behind_its_address(tmp_path: Path) -> None:
    """The Redis address now reaches the promoted replica (a managed Redis's failover; a proxy
    here), while the service's open connections still reach the old primary, a replica now: its
    READONLY refusals put the shards in doubt, and every shard must settle and answer again (the
    connections kept refused every write, the settle's fence included, for good)."""
    from tests.atp_service.redis_proxy import HoldingProxy
    from tests.waiting import until

    primary = EmbeddedRedis(tmp_path / "p", extra_args=["--repl-diskless-sync-delay", "0"]).start()
    replica = EmbeddedRedis(tmp_path / "r", extra_args=["--replicaof", "127.0.0.1", str(primary.port)]).start()
    proxy = HoldingProxy("127.0.0.1", primary.port)
    service = AtpService(make_config(redis_timeout_s=1.0), await proxy.start())
    client: AtpClient | None = None
    try:
        _until_in_sync(replica)
        await service.start()
        client = AtpClient(f"127.0.0.1:{service.port}", timeout_s=5.0)
        skus = ("A", "B", "C", "D", "E", "F", "G", "H")  # every shard
        await client.record_events([receipt(f"r{sku}", sku, "DC", 10) for sku in skus])
        with redis.Redis(host="127.0.0.1", port=primary.port) as old:
            old.execute_command("FAILOVER")
        with redis.Redis(host="127.0.0.1", port=replica.port) as new:
            await until(lambda: new.info("replication")["role"] == "master", "the replica promoted")
        proxy.port = replica.port  # the address reaches the promoted replica from now on
        for sku in skus:
            answer = await _retried(lambda sku=sku: client.reserve(f"h{sku}", [(sku, "DC", 1)], ttl_seconds=600))
            assert answer.state == 1  # type: ignore[attr-defined]
        assert [a.available for a in await client.availability([(sku, "DC") for sku in skus])] == [9] * len(skus)
    finally:
        if client is not None:
            await client.close()
        await service.stop(grace_s=0.1)
        await proxy.close()
        for node in (primary, replica):
            node.kill()  # a stop waits out its shutdown-timeout here: nothing of them is read again
            node.stop()
