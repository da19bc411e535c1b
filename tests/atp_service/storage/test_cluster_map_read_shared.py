"""A slot moved to another primary while the writer's slot map still names the old one: the call
sent there is answered MOVED (nothing applied) and the map is read again before the next call to
that primary. A call to it made while that read is still under way (another shard's commit, a
fence, a snapshot part) must wait for the same read too, not go with the map already known to be
out of date: sent there it is refused MOVED again, failing its shard's write for no cause."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from atp_service.storage.embedded_cluster import EmbeddedCluster
from atp_service.storage.embedded_redis import EmbeddedRedis
from atp_service.storage.nodes import Call, Script, open_nodes

NOTHING = Script("return redis.call('EXISTS', KEYS[1])")  # writes nothing: an empty slot can be moved


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[EmbeddedCluster]:
    """A cluster of its own: a slot is moved in it."""
    with EmbeddedCluster(tmp_path / "cluster", primaries=2, replicas=0) as formed:
        yield formed


def _move(cluster: EmbeddedCluster, slot: int, to: EmbeddedRedis) -> None:
    """The empty ``slot`` given to ``to``, as every node sees it."""
    with redis.Redis(port=to.port) as target:
        node_id = target.cluster("myid")
    node_id = node_id.decode() if isinstance(node_id, bytes) else node_id
    for node in [to, *(n for n in cluster.primaries if n is not to)]:
        with redis.Redis(port=node.port) as client:
            client.execute_command("CLUSTER", "SETSLOT", slot, "NODE", node_id)


async def _turns() -> None:
    """Turns of the event loop enough for a call to be routed: steps of tasks, no waiting on a socket."""
    for _ in range(20):
        await asyncio.sleep(0)


async def test_a_call_made_while_the_map_is_read_again_waits_for_that_read(cluster: EmbeddedCluster) -> None:
    nodes = open_nodes(cluster.url, 2.0, cluster=True)
    key = "{moved}k"
    try:
        assert await nodes.run([Call(NOTHING, [key], [])]) == [0]  # the map read, the slot on its first owner
        owner = int(nodes.reader.get_node_from_key(key).port)
        _move(cluster, nodes.reader.keyslot(key), next(n for n in cluster.primaries if n.port != owner))
        (moved,) = await nodes.run([Call(NOTHING, [key], [])])
        assert isinstance(moved, redis.exceptions.MovedError), moved  # the map is read again before the next
        lock = nodes.reader.nodes_manager._initialize_lock  # held: that read stays under way (a slow node)
        await lock.acquire()
        try:
            first = asyncio.ensure_future(nodes.run([Call(NOTHING, [key], [])]))
            await _turns()
            assert not nodes._suspect, "the first call's read of the map has begun"
            second = asyncio.ensure_future(nodes.run([Call(NOTHING, [key], [])]))
            await _turns()  # the second call routed (without a read to wait for: sent)
        finally:
            lock.release()
        assert await first == [0]
        assert await second == [0], "sent with the map the first call found out of date"
    finally:
        await nodes.aclose()
