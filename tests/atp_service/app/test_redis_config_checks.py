"""What the start checks of the Redis it is given, each against a real redis-server started with the
setting: a Redis that would lose what the service acknowledges is not written to (R7)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry, Gauge

from atp_service import AtpService, EmbeddedRedis
from atp_service.app.keyspace import eviction_refusal, watch_eviction
from atp_service.storage.log import LogStore
from atp_service.storage.nodes import open_nodes
from tests.atp_service.app.test_healthcheck import health, starting_until_logged
from tests.conftest import test_config as make_config
from tests.waiting import until


async def test_a_writable_replica_is_not_written_to_but_waited_on_until_promoted(tmp_path: Path) -> None:
    """``redis_url`` naming a replica with ``replica-read-only no`` took every write: the service
    started and acknowledged changes that the replica drops at its next full resync from its primary
    (a restart, a broken link), and that no other copy ever had. A replica is now waited on as a
    read-only one is (a failover may promote it), named in the warning, nothing written to it."""
    primary = EmbeddedRedis(tmp_path / "primary").start()
    replica = EmbeddedRedis(tmp_path / "replica", extra_args=[
        "--replicaof", "127.0.0.1", str(primary.port), "--replica-read-only", "no"]).start()
    service = AtpService(make_config(redis_timeout_s=1.0), replica.url)
    admin = aioredis.Redis.from_url(replica.url)
    try:
        async with starting_until_logged(service, "is a replica") as starting:
            assert not starting.done(), starting.exception()  # waiting, not started on it
            assert (await health(service.port))[0] == 1  # NOT_SERVING
            assert await admin.dbsize() == 0  # nothing the resync would drop
            await admin.replicaof("NO", "ONE")  # promoted
            await asyncio.wait_for(starting, 30)
            assert (await health(service.port))[0] == 0
    finally:
        await admin.aclose()
        await service.stop(grace_s=0)
        replica.stop()
        primary.stop()


async def _start_warnings(tmp_path: Path, caplog: pytest.LogCaptureFixture, **redis: Any) -> list[str]:
    """The warnings a start on a redis-server started with ``redis`` logs."""
    with EmbeddedRedis(tmp_path / "redis", **redis) as server:
        service = AtpService(make_config(), server.url)
        with caplog.at_level(logging.INFO, logger="atp_service.app.keyspace"):
            await service.start()
        await service.stop(grace_s=0)
    return [r.getMessage() for r in caplog.records
            if r.name == "atp_service.app.keyspace" and r.levelno >= logging.WARNING]


async def test_an_aof_the_os_flushes_when_it_likes_is_warned_of(tmp_path: Path,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    """``appendfsync no`` leaves the flush to the OS (Linux: about every 30 s): a host crash loses that
    much of what was acknowledged, thirty times ``everysec``'s window. It was logged at INFO as "AOF on"."""
    warnings = await _start_warnings(tmp_path, caplog, appendfsync="no")
    assert any("appendfsync is no" in w and "appendfsync always" in w for w in warnings), warnings


async def test_a_redis_that_keeps_nothing_on_disk_is_warned_of_as_such(tmp_path: Path,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    """``appendonly no`` with ``save ""``: any restart of Redis, even a clean one (an upgrade), comes
    back empty — every stock count and hold gone. The warning said only "not a Redis crash"."""
    warnings = await _start_warnings(tmp_path, caplog, extra_args=["--appendonly", "no", "--save", ""])
    assert any("no persistence" in w and "any restart" in w for w in warnings), warnings


async def test_aof_with_everysec_is_no_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    assert await _start_warnings(tmp_path, caplog, appendfsync="everysec") == []


def _unsafe(service: AtpService) -> float | None:
    return service.metrics.registry.get_sample_value("atp_redis_eviction_policy_unsafe", {"node": "redis"})


async def test_an_eviction_policy_set_while_serving_is_seen(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The start refuses a Redis that may evict the log or a fence; a ``CONFIG SET maxmemory-policy
    allkeys-lru`` while the service ran went unseen until Redis, under memory pressure, evicted one.
    The owner check reads the policy again: the gauge (``ATPRedisEvictionPolicyUnsafe``) and an ERROR
    line say so, and both clear once it is ``noeviction`` again."""
    with EmbeddedRedis(tmp_path / "redis") as server:
        service = AtpService(make_config(owner_check_s=0.05), server.url)
        admin = aioredis.Redis.from_url(server.url)
        try:
            with caplog.at_level(logging.INFO, logger="atp_service.app.keyspace"):
                await service.start()
                await until(lambda: _unsafe(service) == 0.0, "the policy read while serving")
                await admin.config_set("maxmemory-policy", "allkeys-lru")
                await until(lambda: _unsafe(service) == 1.0, "the unsafe policy seen")
                unsafe = [r for r in caplog.records if getattr(r, "event", None) == "redis_eviction_unsafe"]
                assert len(unsafe) == 1 and unsafe[0].levelno == logging.ERROR, unsafe
                assert "allkeys-lru" in unsafe[0].getMessage() and getattr(unsafe[0], "node", None) == "redis"
                await admin.config_set("maxmemory-policy", "noeviction")
                await until(lambda: _unsafe(service) == 0.0, "the policy safe again")
            assert [getattr(r, "event", None) for r in caplog.records].count("redis_eviction_safe") == 1
        finally:
            await admin.aclose()
            await service.stop(grace_s=0)


def test_which_policies_are_unsafe() -> None:
    """The start's rule, shared by the check while serving: ``allkeys-*`` always; ``volatile-*`` with
    leases (a lease has a time to live)."""
    assert eviction_refusal("Redis", "allkeys-lru", leased=False) is not None
    assert eviction_refusal("Redis", "volatile-lru", leased=False) is None
    assert eviction_refusal("Redis", "volatile-ttl", leased=True) is not None
    assert eviction_refusal("Redis", "noeviction", leased=True) is None
    assert eviction_refusal("Redis", None, leased=True) is None


async def test_a_redis_refusing_config_is_asked_no_more_while_serving(redis_url: str) -> None:
    """Where ``CONFIG`` is refused (the least user OPERATIONS.md suggests: ``-@dangerous``; a managed
    Redis that renames it) every owner check, each second, sent a ``CONFIG GET`` refused ``NOPERM``: a
    steady error rate in Redis's error stats and its ``ACL LOG``, where an operator looks for what the
    service was denied. The watch says to ask no more; a Redis that answers is asked again."""
    gauge = Gauge("atp_redis_eviction_policy_unsafe", "", ["node"], registry=CollectorRegistry())
    async with aioredis.Redis.from_url(redis_url) as admin:
        await admin.execute_command("ACL", "SETUSER", "no-config", "reset", "on", ">pw", "~*", "&*", "+@all",
                                    "-config")
        try:
            for url, asked in ((redis_url.replace("redis://", "redis://no-config:pw@", 1), False), (redis_url, True)):
                store = LogStore(open_nodes(url, 2.0), "atp:", 1)
                try:
                    assert await watch_eviction(store, gauge) is asked
                finally:
                    await store.nodes.aclose()
        finally:
            await admin.execute_command("ACL", "DELUSER", "no-config")


async def test_a_redis_whose_config_is_renamed_is_asked_no_more_while_serving(tmp_path: Path) -> None:
    """A managed Redis disables ``CONFIG`` (``rename-command``): answered ``unknown command``, as often."""
    gauge = Gauge("atp_redis_eviction_policy_unsafe", "", ["node"], registry=CollectorRegistry())
    with EmbeddedRedis(tmp_path / "redis", extra_args=["--rename-command", "CONFIG", ""]) as server:
        store = LogStore(open_nodes(server.url, 2.0), "atp:", 1)
        try:
            assert await watch_eviction(store, gauge) is False
        finally:
            await store.nodes.aclose()


async def test_a_node_no_longer_answering_for_the_keyspace_leaves_no_gauge_behind(redis_url: str) -> None:
    """A node seen unsafe, then removed from the cluster (or demoted and no longer asked), kept its
    last value: ``ATPRedisEvictionPolicyUnsafe`` fired until the service restarted. Only the nodes of
    the latest answer keep a value."""
    gauge = Gauge("atp_redis_eviction_policy_unsafe", "", ["node"], registry=CollectorRegistry())
    gauge.labels("10.0.0.9:6379").set(1)
    store = LogStore(open_nodes(redis_url, 2.0), "atp:", 1)
    try:
        assert await watch_eviction(store, gauge) is True
    finally:
        await store.nodes.aclose()
    assert {s.labels["node"]: s.value for m in gauge.collect() for s in m.samples} == {"redis": 0.0}
