"""While serving, each node's ``maxmemory-policy`` is read again (``watch_eviction``, at each owner check). With one
primary hung (SIGSTOP: it takes connections and bytes, answers nothing), the nodes asked after it went unread: a
node set to evict meanwhile (its keys, a log or a fence, lost under memory pressure) went unseen, its
``atp_redis_eviction_policy_unsafe`` never set, for as long as the other hung. Each node that answers is read; the
one that did not keeps what was read of it last, and the check still ends in its failure (the slot map is read
again after it, as before)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from prometheus_client import CollectorRegistry, Gauge
from redis.exceptions import TimeoutError as RedisTimeoutError

from atp_service.app.keyspace import watch_eviction
from atp_service.storage.embedded_cluster import EmbeddedCluster
from atp_service.storage.log import LogStore
from atp_service.storage.nodes import open_nodes
from tests.atp_service.app.test_cluster_startup import _replicas_listed
from tests.atp_service.storage.test_cluster_hung_other_node import _stopped
from tests.waiting import until


async def test_a_node_set_to_evict_is_seen_while_another_primary_hangs(cluster: EmbeddedCluster) -> None:
    gauge = Gauge("atp_redis_eviction_policy_unsafe", "", ["node"], registry=CollectorRegistry())
    store = LogStore(open_nodes(cluster.url, 1.0, cluster=True), "atp:", 1)

    def unsafe() -> dict[str, float]:
        return {s.labels["node"]: s.value for m in gauge.collect() for s in m.samples}

    try:
        assert await watch_eviction(store, gauge)
        asked = [node.name for node in store.client.get_nodes()]  # in the order they are asked
        assert unsafe() == dict.fromkeys(asked, 0.0)
        hung, evicting = (next(node for node in cluster.primaries if f"127.0.0.1:{node.port}" == name)
                          for name in (asked[0], asked[-1]))
        with redis.Redis(host="127.0.0.1", port=evicting.port) as admin:
            admin.config_set("maxmemory-policy", "allkeys-lru")
            try:
                with _stopped(hung), pytest.raises(RedisTimeoutError):
                    await watch_eviction(store, gauge)
            finally:
                admin.config_set("maxmemory-policy", "noeviction")
        assert unsafe() == {**dict.fromkeys(asked, 0.0), asked[-1]: 1.0}  # the hung one's last value kept
    finally:
        await store.nodes.aclose()


@pytest.fixture
def replicated(tmp_path: Path) -> Iterator[EmbeddedCluster]:
    """A cluster of its own with a replica (its nodes are stopped), none declared failed within the test."""
    with EmbeddedCluster(tmp_path / "replicated", primaries=1, replicas=1, node_timeout_ms=600_000) as formed:
        yield formed


async def test_a_replica_set_to_evict_keeps_its_unsafe_policy_said_while_it_hangs(replicated: EmbeddedCluster) -> None:
    """A replica set to evict (a failover promotes it, and its keys, a log or a fence, go under memory pressure) that
    then does not answer: its ``atp_redis_eviction_policy_unsafe`` was taken away (the node no longer asked), so
    ``ATPRedisEvictionPolicyUnsafe`` resolved though nothing changed. It keeps the value read last, as a hung
    primary's and a BUSY replica's."""
    gauge = Gauge("atp_redis_eviction_policy_unsafe", "", ["node"], registry=CollectorRegistry())
    store = LogStore(open_nodes(replicated.url, 1.0, cluster=True), "atp:", 1)

    def unsafe() -> dict[str, float]:
        return {s.labels["node"]: s.value for m in gauge.collect() for s in m.samples}

    replica = replicated.replicas[0]
    name = f"127.0.0.1:{replica.port}"
    with redis.Redis(host="127.0.0.1", port=replicated.primaries[0].port) as primary:
        primary.set("warm", 1)  # data to follow: listed at once, not at the primary's first replication PING (10 s)
    await until(lambda: _replicas_listed(replicated.url, 1), "the replica listed", 30)  # (once it holds data)
    try:
        with redis.Redis(host="127.0.0.1", port=replica.port) as admin:
            admin.config_set("maxmemory-policy", "allkeys-lru")
        assert await watch_eviction(store, gauge)
        assert unsafe().get(name) == 1.0
        with _stopped(replica):
            assert await watch_eviction(store, gauge)
            assert unsafe().get(name) == 1.0, f"the hung replica's gauge: {unsafe().get(name)}"
    finally:
        await store.nodes.aclose()
