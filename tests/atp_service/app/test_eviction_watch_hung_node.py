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
from tests.atp_service.storage.test_cluster_hung_other_node import _stopped


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[EmbeddedCluster]:
    """A cluster of its own (its nodes are stopped), whose nodes never declare one failed within the test."""
    with EmbeddedCluster(tmp_path / "cluster", primaries=3, replicas=0, node_timeout_ms=600_000) as formed:
        yield formed


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
