"""A Redis Cluster primary paused (SIGSTOP) while its replica takes its slots over (``CLUSTER FAILOVER
TAKEOVER``), then continued: for a moment it still believes itself the primary, and a write it held
may run there, on data it will drop as it turns replica of the new one. With ``wait_replicas`` 1 no
replica confirms that write, so it is never acknowledged: it is in doubt, and its settle's fence must
be confirmed on the new primary before the log is read (R7). What the settle says landed is in the
log of the new primary once the old one follows it, and the shard writes on after it."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from atp_service.storage.durability import STORAGE_ERRORS, landed_of
from atp_service.storage.embedded_cluster import EmbeddedCluster
from atp_service.storage.embedded_redis import EmbeddedRedis
from atp_service.storage.log import LogStore
from atp_service.storage.nodes import open_nodes
from tests.waiting import until

SHARDS = 4


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[EmbeddedCluster]:
    """A cluster of its own (its topology changes), which declares no node failed on its own within
    the test: the takeover alone moves the slots."""
    with EmbeddedCluster(tmp_path / "cluster", primaries=3, replicas=1, node_timeout_ms=600_000,
                         sync_delay_s=0) as formed:
        yield formed


def _role(node: EmbeddedRedis) -> str:
    with redis.Redis(host="127.0.0.1", port=node.port) as client:
        return str(client.info("replication")["role"])


def _in_sync(node: EmbeddedRedis) -> bool:
    with redis.Redis(host="127.0.0.1", port=node.port) as client:
        replication = client.info("replication")
    return bool(replication["role"] == "slave" and replication["master_link_status"] == "up")


async def test_a_write_held_by_a_paused_primary_replaced_meanwhile_is_settled_from_the_new_one(
        cluster: EmbeddedCluster) -> None:
    store = LogStore(open_nodes(cluster.url, 1.0, cluster=True, wait_replicas=1, wait_timeout_ms=500), "t:",
                     pipeline_max=64)
    try:
        await store.claim(SHARDS)
        for seq in (1, 2, 3):
            await store.submit(0, seq, f"acked {seq}".encode())
        port = int(store.client.get_node_from_key(store.keys.log(0)).port)
        index = next(i for i, node in enumerate(cluster.primaries) if node.port == port)
        old, new = cluster.primaries[index], cluster.replicas[index]
        assert old.process is not None
        os.kill(old.process.pid, signal.SIGSTOP)
        try:
            with pytest.raises(STORAGE_ERRORS):  # held by the paused primary: in doubt
                await store.submit(0, 4, b"in doubt")
            with redis.Redis(host="127.0.0.1", port=new.port) as client:
                client.execute_command("CLUSTER", "FAILOVER", "TAKEOVER")
            await until(lambda: _role(new) == "master", "the replica took the slots over")
        finally:
            os.kill(old.process.pid, signal.SIGCONT)  # it runs what it held, then learns it was replaced
        settle = landed_of(store, 0, 3, [(4, Any, b"in doubt")])  # type: ignore[list-item]
        landed = await asyncio.wait_for(settle, 60)
        assert landed is not None
        top = 3 + len(landed)
        await until(lambda: _in_sync(old), "the old primary follows the new one", 60)
        await asyncio.wait_for(_written(store, top + 1), 60)
        seqs = [seq async for seq, _ in store.entries_after(0, 0)]
        assert seqs == list(range(1, top + 2)), (landed, seqs)
        with redis.Redis(host="127.0.0.1", port=new.port) as client:  # read from the new primary itself
            assert client.xlen(store.keys.log(0)) == top + 1
    finally:
        await store.nodes.aclose()


async def _written(store: LogStore, seq: int) -> None:
    """Entry ``seq`` of shard 0 appended, tried again while the slot map settles."""
    while True:
        try:
            await store.submit(0, seq, b"after")
            return
        except STORAGE_ERRORS:
            landed = await landed_of(store, 0, seq - 1, [(seq, Any, b"after")])  # type: ignore[list-item]
            if landed:
                return
