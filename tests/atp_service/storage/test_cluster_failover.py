"""A Redis Cluster primary killed while the log writes to every group: the writer finds the promoted
replica, every entry it acknowledged is still in the log, and every entry it was unsure of is
settled by a fence and a read (R7). With ``wait_replicas`` 1 an entry is acknowledged only once a
replica holds it, so a failover to that replica loses nothing acknowledged."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from atp_service.storage.durability import STORAGE_ERRORS, landed_of
from atp_service.storage.embedded_cluster import EmbeddedCluster
from atp_service.storage.embedded_redis import EmbeddedRedis
from atp_service.storage.log import LogStore
from atp_service.storage.nodes import open_nodes
from tests.waiting import until

SHARDS = 6
ACKED_AFTER_FAILOVER = 20
"""Entries per shard acknowledged after the failover before the test stops writing."""
T = TypeVar("T")


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[EmbeddedCluster]:
    """A cluster of its own: this test changes its topology."""
    with EmbeddedCluster(tmp_path / "cluster", primaries=3, replicas=1, node_timeout_ms=1000, sync_delay_s=0) as formed:
        yield formed


class Writer:
    """Appends to every shard in turn; an append that fails is settled before the shard goes on."""

    def __init__(self, store: LogStore) -> None:
        self.store = store
        self.acked: dict[int, int] = dict.fromkeys(range(SHARDS), 0)  # the newest acknowledged seq per shard
        self.settled_landed = self.settled_lost = 0
        self.failures = 0

    async def append(self, shard: int) -> None:
        seq = self.acked[shard] + 1
        data = f"{shard}/{seq}".encode()
        try:
            await self.store.submit(shard, seq, data)
        except STORAGE_ERRORS:
            self.failures += 1
            landed = await landed_of(self.store, shard, seq - 1, [(seq, Any, data)])  # type: ignore[list-item]
            assert landed is not None, "this writer is the only owner"
            if not landed:
                self.settled_lost += 1
                return
            self.settled_landed += 1
        self.acked[shard] = seq


async def test_a_primary_killed_under_load_loses_nothing_acknowledged(cluster: EmbeddedCluster) -> None:
    nodes = open_nodes(cluster.url, 1.0, cluster=True, wait_replicas=1, wait_timeout_ms=500)
    store = LogStore(nodes, "t:", pipeline_max=64)
    writer = Writer(store)
    try:
        await _answered(lambda: store.claim(SHARDS))
        victim = _primary_of(cluster, store, 0)
        for _ in range(5):
            await asyncio.gather(*(writer.append(s) for s in range(SHARDS)))
        before = dict(writer.acked)
        victim.kill()  # kill -9, before the writer goes on: it must feel it
        restart = asyncio.get_running_loop().run_in_executor(None, cluster.fail_over, victim)  # back as a replica
        while min(writer.acked[s] - before[s] for s in range(SHARDS)) < ACKED_AFTER_FAILOVER:
            await asyncio.wait_for(asyncio.gather(*(writer.append(s) for s in range(SHARDS))), 60)
        await restart
        assert writer.failures > 0, "the kill was felt"
        for shard in range(SHARDS):
            seqs = await _answered(lambda shard=shard: _seqs(store, shard))  # type: ignore[misc]
            assert seqs == list(range(1, writer.acked[shard] + 1)), f"shard {shard}: acknowledged entries lost"
    finally:
        await nodes.aclose()


async def _answered(call: Callable[[], Awaitable[T]], bound_s: float = 60.0) -> T:
    """``call()`` — one that may be sent again: a claim (the service sends its own again until it is
    answered), a read — until Redis answers it, within ``bound_s``. A process stalled past the 1 s Redis
    timeout (a busy machine) finds the reply and the deadline due together, and the deadline may win."""
    deadline = asyncio.get_running_loop().time() + bound_s
    while True:
        try:
            return await call()
        except STORAGE_ERRORS:
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.1)


async def _seqs(store: LogStore, shard: int) -> list[int]:
    return [seq async for seq, _ in store.entries_after(shard, 0)]


def _primary_of(cluster: EmbeddedCluster, store: LogStore, shard: int) -> EmbeddedRedis:
    port = int(store.client.get_node_from_key(store.keys.log(shard)).port)
    (node,) = [n for n in cluster.primaries if n.port == port]
    return node


def _fences_counted(store: LogStore) -> list[int]:
    """A count of ``store``'s fence calls (a settle's tries: each begins with one), kept in the list returned."""
    count, fence = [0], store.fence

    async def counted(shard: int) -> Any:
        count[0] += 1
        return await fence(shard)

    store.fence = counted  # type: ignore[method-assign]
    return count


async def test_a_settle_waits_out_a_cluster_no_node_of_which_answers(tmp_path: Path) -> None:
    """Every node unreachable at once (a restart of the whole cluster, a partition): the cluster
    client says so with ``RedisClusterException``, no ``RedisError``. A settle waits for Redis as
    long as it takes (R8: the shard must not die of it), then reads what landed."""
    # appendfsync always: with everysec, Redis postpones its AOF write while a background fsync
    # runs late (a busy disk), so an acknowledged entry may not be written yet when kill -9 comes.
    with EmbeddedCluster(tmp_path / "one", primaries=1, replicas=0, appendfsync="always") as alone:
        # A generous Redis timeout: the node is killed, so each call is refused at once and the timeout plays no
        # part; a short one (0.5 s) failed the setup's claim when the process stalled past it (a busy machine).
        store = LogStore(open_nodes(alone.url, 5.0, cluster=True), "t:", pipeline_max=64)
        try:
            await store.claim(2)
            await store.submit(0, 1, b"one")
            (node,) = alone.primaries
            node.kill()
            with pytest.raises(STORAGE_ERRORS):
                await store.submit(0, 2, b"in doubt")
            tries = _fences_counted(store)
            settle = asyncio.ensure_future(landed_of(store, 0, 1, [(2, Any, b"in doubt")]))  # type: ignore[list-item]
            # Several tries, each refreshing the slot map in vain: counted, not slept on (a sleep of 3 s passed a
            # settle that gave up at its first failure wherever that came later than the sleep).
            await until(lambda: settle.done() or tries[0] >= 3, "three tries at the fence, two failed")
            assert not settle.done(), f"the settle ended while no node answered: {settle.exception()!r}"
            node.start()
            assert await asyncio.wait_for(settle, 60) == []
            await store.submit(0, 2, b"the shard goes on")
        finally:
            await store.nodes.aclose()
