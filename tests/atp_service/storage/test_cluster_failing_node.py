"""A Redis Cluster node that is down stays listed in ``CLUSTER NODES`` (flagged ``fail?``, then ``fail``)
until an operator forgets it — for ever, if none does — while ``CLUSTER SLOTS`` leaves it out. The writer
learns the cluster's nodes from ``CLUSTER NODES`` so that a read of the slot map can ask the ones it did
not name: a node flagged failing must not be among them. Asked, each read of the map connected to its
address, in turn with the nodes that answer; where that address no longer leads anywhere (a host or pod
gone: no refusal, no answer) every read of the map that tried it first waited out the connect timeout,
and the calls waiting for that read with it (liveness).

Here every node is asked (a slot is served by none, so no answer names them all), and the failing node's
address is a listener that counts the connections it is sent."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from atp_service.storage.durability import STORAGE_ERRORS
from atp_service.storage.embedded_cluster import EmbeddedCluster
from atp_service.storage.nodes import Call, Script, open_nodes
from tests.waiting import until

pytestmark = pytest.mark.slow

_ONE = Script("return 1")


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[EmbeddedCluster]:
    """A cluster of its own (a node of it is killed): a primary and a replica, the replica flagged
    failing soon after it stops answering."""
    with EmbeddedCluster(tmp_path / "cluster", primaries=1, replicas=1, node_timeout_ms=500,
                         sync_delay_s=0) as formed:
        yield formed


def _failing(primary: int, port: int) -> bool:
    """Whether the node at ``primary`` flags the node at ``port`` failing (``fail?`` or ``fail``)."""
    with redis.Redis(host="127.0.0.1", port=primary) as client:
        listed = client.execute_command("CLUSTER", "NODES").decode()
    line = next(line for line in listed.splitlines() if f":{port}@" in line)
    return bool({"fail", "fail?"} & set(line.split()[2].split(",")))


async def test_a_node_listed_failing_is_not_asked_for_the_slot_map(cluster: EmbeddedCluster) -> None:
    (primary,), (replica,) = cluster.primaries, cluster.replicas
    replica.kill()
    await until(lambda: _failing(primary.port, replica.port), "the replica flagged failing")
    asked = 0

    def count(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal asked
        asked += 1
        writer.close()

    listener = await asyncio.start_server(count, "127.0.0.1", replica.port)
    nodes = open_nodes(cluster.url, 2.0, cluster=True)
    try:
        assert await nodes.run_one(Call(_ONE, ["k"], [])) == 1  # the map read, and the nodes learned
        with redis.Redis(host="127.0.0.1", port=primary.port) as client:
            slot = client.cluster("KEYSLOT", "k")
            client.cluster("DELSLOTS", slot)  # every node is asked at the next read of the map
        with pytest.raises(STORAGE_ERRORS):
            await nodes.run_one(Call(_ONE, ["k"], []))  # CLUSTERDOWN: the map is read again
        with pytest.raises(STORAGE_ERRORS):
            await nodes.run_one(Call(_ONE, ["k"], []))  # that read: no node serves the slot
        assert asked == 0, "a read of the slot map asked the node the cluster lists as failing"
    finally:
        listener.close()
        await nodes.aclose()
