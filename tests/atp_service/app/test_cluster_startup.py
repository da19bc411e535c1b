"""What the service checks of a Redis Cluster at start (``redis_cluster``): every node's
``maxmemory-policy``, not only the one node a cluster client sends ``CONFIG GET`` to."""

from __future__ import annotations

import contextlib
import logging
import threading

import pytest
import redis
from prometheus_client import CollectorRegistry, Gauge
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.cluster import RedisCluster

from atp_service import AtpService
from atp_service.app.keyspace import StartupError, version_refusal, watch_eviction
from atp_service.storage.embedded_cluster import EmbeddedCluster
from atp_service.storage.log import LogStore
from atp_service.storage.nodes import open_nodes
from atp_service.storage.redis_config import node_versions
from tests.conftest import test_config as make_config
from tests.ports import held_port
from tests.waiting import until


def _replicas_listed(url: str, replicas: int) -> bool:
    """Whether CLUSTER SLOTS (where a cluster client learns its nodes) lists ``replicas`` replicas:
    Redis leaves out a replica that has no data replicated yet. Counted once each: a primary owning
    several slot ranges (after a resharding test) lists its replica under each."""
    with redis.Redis.from_url(url) as r:
        listed = {(node[0], node[1]) for section in r.execute_command("CLUSTER SLOTS") for node in section[3:]}
    return len(listed) == replicas


async def test_a_cluster_node_that_may_evict_keys_is_refused_at_start_naming_it(
        redis_cluster: EmbeddedCluster, cluster_url: str) -> None:
    """redis-py sends ``CONFIG GET`` to one node of a cluster (its default node): a primary set to
    ``allkeys-lru`` elsewhere would evict the logs of its shards (acknowledged holds lost: oversold),
    and a replica so set does once a failover promotes it. Each node in turn is refused, by name."""
    with RedisCluster.from_url(cluster_url) as cluster:
        for i in range(64):  # a key in every primary's slots: each replica has data to follow
            cluster.set(f"warm{i}", i)
    await until(lambda: _replicas_listed(cluster_url, len(redis_cluster.replicas)), "every replica listed", 30)
    for node in redis_cluster.nodes:
        with redis.Redis(host="127.0.0.1", port=node.port) as r:
            r.config_set("maxmemory-policy", "allkeys-lru")
        service = AtpService(make_config(redis_cluster=True, input_streams=(), port=held_port(),
                                         host="127.0.0.1"), cluster_url)
        try:
            with pytest.raises(StartupError, match=rf"127\.0\.0\.1:{node.port}.* maxmemory-policy is allkeys-lru"):
                await service.start()
        finally:
            with redis.Redis(host="127.0.0.1", port=node.port) as r:
                r.config_set("maxmemory-policy", "noeviction")  # first: the session's cluster is every test's
            await service.stop()


async def test_every_cluster_node_is_asked_its_redis_version(redis_cluster: EmbeddedCluster, cluster_url: str) -> None:
    """The service refuses a Redis older than 7.0 at start, each node by name: such a node refuses
    the snapshot and fence scripts (Lua flags), found hours into serving otherwise."""
    await until(lambda: _replicas_listed(cluster_url, len(redis_cluster.replicas)), "every replica listed", 30)
    client = AsyncRedisCluster.from_url(cluster_url)
    try:
        versions = await node_versions(client)
    finally:
        await client.aclose()
    assert {where.split()[2] for where, _ in versions} == {f"127.0.0.1:{n.port}" for n in redis_cluster.nodes}
    assert all(version_refusal(where, version) is None for where, version in versions), versions


@pytest.mark.parametrize("version", ["6.2.14", "5.0.7", "unknown"])
def test_a_redis_older_than_7_is_refused_naming_the_node_and_why(version: str) -> None:
    refusal = version_refusal("Redis node 10.0.0.5:6379 (primary)", version)
    assert refusal is not None
    assert f"10.0.0.5:6379 (primary) runs Redis {version}" in refusal and "7.0 or newer" in refusal


@pytest.mark.parametrize("version", ["7.0.0", "7.0.15", "7.4.1", "8.0.2", "10.1.0"])
def test_redis_7_and_newer_are_served(version: str) -> None:
    assert version_refusal("Redis", version) is None


async def test_a_replica_busy_with_a_long_script_leaves_no_cluster_node_unchecked_at_start(
        redis_cluster: EmbeddedCluster, cluster_url: str) -> None:
    """A replica running a long script (a read-only one: replicas serve them) answers every other command
    ``BUSY``. The start asks each node its settings: that one refusal was taken for ``CONFIG`` forbidden,
    and no node's ``maxmemory-policy`` was checked — a primary set to ``allkeys-lru`` served, its shards'
    logs free to be evicted (acknowledged holds lost). A busy replica is passed over as one that does not
    answer is, named in a warning; every other node is still checked, and the primary is refused by name."""
    await until(lambda: _replicas_listed(cluster_url, len(redis_cluster.replicas)), "every replica listed", 30)
    roles = {node.port: redis.Redis(host="127.0.0.1", port=node.port).info("replication")["role"]
             for node in redis_cluster.nodes}
    primary = next(node for node in redis_cluster.nodes if roles[node.port] == "master")
    replica = next(node for node in redis_cluster.nodes if roles[node.port] == "slave")
    evicting, busy = redis.Redis(host="127.0.0.1", port=primary.port), redis.Redis(host="127.0.0.1", port=replica.port)
    spinning = threading.Thread(target=_spin, args=(replica.port,), daemon=True)
    service = AtpService(make_config(redis_cluster=True, input_streams=(), port=held_port(), host="127.0.0.1"),
                         cluster_url)
    try:
        evicting.config_set("maxmemory-policy", "allkeys-lru")
        busy.config_set("busy-reply-threshold", 10)  # BUSY after 10 ms of a script, not 5 s
        spinning.start()
        await until(lambda: _busy(replica.port), "the replica answering BUSY")
        with pytest.raises(StartupError, match=rf"127\.0\.0\.1:{primary.port}.* maxmemory-policy is allkeys-lru"):
            await service.start()
    finally:  # the session's cluster is every test's
        evicting.config_set("maxmemory-policy", "noeviction")
        if spinning.is_alive():
            with contextlib.suppress(redis.ResponseError):  # (NOTBUSY: it never began)
                busy.script_kill()
            spinning.join()
        busy.config_set("busy-reply-threshold", 5000)
        evicting.close()
        busy.close()
        await service.stop()


async def test_a_replica_busy_with_a_long_script_while_serving_keeps_its_unsafe_policy_said(
        redis_cluster: EmbeddedCluster, cluster_url: str, caplog: pytest.LogCaptureFixture) -> None:
    """While serving, each node's ``maxmemory-policy`` is read again (``watch_eviction``). A replica set to evict
    (a failover promotes it) that runs a long script answered ``BUSY``: it was passed over as a node no longer
    asked, its ``atp_redis_eviction_policy_unsafe`` taken away (``ATPRedisEvictionPolicyUnsafe`` resolved, never
    firing for a replica busy once a minute) and said again (``redis_eviction_unsafe``) each time it answered. It
    keeps the value last read, and the change is said once."""
    await until(lambda: _replicas_listed(cluster_url, len(redis_cluster.replicas)), "every replica listed", 30)
    roles = {node.port: redis.Redis(host="127.0.0.1", port=node.port).info("replication")["role"]
             for node in redis_cluster.nodes}
    replica = next(node for node in redis_cluster.nodes if roles[node.port] == "slave")
    label = f"127.0.0.1:{replica.port}"
    busy = redis.Redis(host="127.0.0.1", port=replica.port)
    gauge = Gauge("atp_redis_eviction_policy_unsafe", "", ["node"], registry=CollectorRegistry())
    store = LogStore(open_nodes(cluster_url, 2.0, cluster=True), "atp:", 1)
    spinning = threading.Thread(target=_spin, args=(replica.port,), daemon=True)

    def unsafe() -> dict[str, float]:
        return {s.labels["node"]: s.value for m in gauge.collect() for s in m.samples}

    try:
        busy.config_set("maxmemory-policy", "allkeys-lru")
        caplog.set_level(logging.INFO, logger="atp_service.app.keyspace")
        assert await watch_eviction(store, gauge)
        assert unsafe()[label] == 1
        busy.config_set("busy-reply-threshold", 10)  # BUSY after 10 ms of a script, not 5 s
        spinning.start()
        await until(lambda: _busy(replica.port), "the replica answering BUSY")
        assert await watch_eviction(store, gauge)
        assert unsafe().get(label) == 1  # was: None, the series gone
        busy.script_kill()
        spinning.join()
        assert await watch_eviction(store, gauge)
        assert unsafe()[label] == 1
        said = [r for r in caplog.records if getattr(r, "event", None) == "redis_eviction_unsafe"
                and getattr(r, "node", None) == label]
        assert len(said) == 1, said  # was: 2, said again once it answered
    finally:  # the session's cluster is every test's
        if spinning.is_alive():
            with contextlib.suppress(redis.ResponseError):  # (NOTBUSY: it never began)
                busy.script_kill()
            spinning.join()
        busy.config_set("busy-reply-threshold", 5000)
        busy.config_set("maxmemory-policy", "noeviction")
        busy.close()
        await store.nodes.aclose()


def _spin(port: int) -> None:
    """A script that runs until ``SCRIPT KILL`` ends it (it writes nothing, so it can be killed)."""
    with redis.Redis(host="127.0.0.1", port=port) as r, contextlib.suppress(redis.ResponseError):
        r.eval("while true do end", 0)


def _busy(port: int) -> bool:
    with redis.Redis(host="127.0.0.1", port=port) as r:
        try:
            r.ping()
        except redis.ResponseError as exc:
            return str(exc).startswith("BUSY")
    return False
