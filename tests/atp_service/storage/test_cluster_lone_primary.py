"""A Redis Cluster of one primary and its replica, the service started on it while it was new: Redis
lists a replica in ``CLUSTER SLOTS`` only once its primary has heard that it holds data, so the
first read of the slot map named the primary alone, and the cluster client knows a cluster by the
nodes its last read of the map named. The primary killed (kill -9) and its replica promoted
(``CLUSTER FAILOVER TAKEOVER``: a lone primary has no peers to elect one), the writer must find the
promoted replica: it asked the dead primary alone, again and again, and every shard waited — its
appends in doubt never settled — until that primary was started again (liveness)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from atp_service.storage.durability import STORAGE_ERRORS, landed_of
from atp_service.storage.embedded_cluster import EmbeddedCluster
from atp_service.storage.log import LogStore
from atp_service.storage.nodes import open_nodes
from tests.waiting import until

pytestmark = pytest.mark.slow


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[EmbeddedCluster]:
    """A new cluster of its own (its topology changes) that declares no node failed on its own."""
    with EmbeddedCluster(tmp_path / "cluster", primaries=1, replicas=1, node_timeout_ms=600_000,
                         sync_delay_s=0) as formed:
        yield formed


def _role(port: int) -> str:
    with redis.Redis(host="127.0.0.1", port=port) as client:
        return str(client.info("replication")["role"])


async def test_the_promoted_replica_of_a_lone_primary_is_found(cluster: EmbeddedCluster) -> None:
    store = LogStore(open_nodes(cluster.url, 0.5, cluster=True), "t:", pipeline_max=64)
    (old,), (replica,) = cluster.primaries, cluster.replicas
    try:
        await store.claim(2)  # the slot map read while the replica holds nothing yet
        await store.submit(0, 1, b"one")
        with redis.Redis(host="127.0.0.1", port=old.port) as client:
            assert client.wait(1, 10_000) == 1  # the replica holds entry 1
        old.kill()
        with redis.Redis(host="127.0.0.1", port=replica.port) as client:
            client.execute_command("CLUSTER", "FAILOVER", "TAKEOVER")
        await until(lambda: _role(replica.port) == "master", "the replica promoted")
        with pytest.raises(STORAGE_ERRORS):  # sent to the dead primary: in doubt
            await store.submit(0, 2, b"two")
        settle = landed_of(store, 0, 1, [(2, Any, b"two")])  # type: ignore[list-item]
        assert await asyncio.wait_for(settle, 30) == [], "settled on the promoted replica"
        await store.submit(0, 2, b"two")  # the shard writes on
        assert [seq async for seq, _ in store.entries_after(0, 0)] == [1, 2]
    finally:
        await store.nodes.aclose()
