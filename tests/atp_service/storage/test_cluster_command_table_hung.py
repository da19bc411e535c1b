"""On a Redis Cluster one of whose primaries hangs (SIGSTOP: it takes connections and bytes, answers nothing), a cluster
client that reads its slot map again — after a connection to another node broke (that node restarted, a connection
killed), every few MOVED of a reshard, a CLUSTERDOWN — goes on serving the keys of the primaries that answer. redis-py
(8.1) read its command table again at each such read, from one node (the first primary it lists: slot 0's, the node
it read the table from first), and with that node hung the read failed, and with it every command of the client on
every node, for as long as the node hung: the input streams, the channel feeds, the publishers stalled whole.
Here the client never sent the hung node anything (its keys are elsewhere), as the input streams' and a publisher's
client do not, so redis-py has no reason of its own to ask another node first."""

from __future__ import annotations

import os
import signal
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError

from atp_service.storage.embedded_cluster import EmbeddedCluster


async def test_the_slot_map_read_again_while_the_first_primary_hangs_leaves_the_others_served(
        cluster: EmbeddedCluster, cluster_client: Any) -> None:
    await cluster_client.initialize()
    first = int(cluster_client.get_default_node().port)  # the node redis-py reads the command table from
    hung = next(node for node in cluster.primaries if node.port == first)
    other = next(node for node in cluster.primaries if node.port != first)
    key = next(k for k in (f"k:{{{i}}}" for i in range(1000))
               if int(cluster_client.get_node_from_key(k).port) == other.port)
    await cluster_client.xadd(key, {"f": "v"})
    assert hung.process is not None
    os.kill(hung.process.pid, signal.SIGSTOP)
    try:
        async with aioredis.Redis(host="127.0.0.1", port=other.port) as direct:  # the client's connection broken
            await direct.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
        with pytest.raises(RedisConnectionError):
            await cluster_client.get(key + ":none")  # met the broken connection: the slot map is read again next
        assert await cluster_client.get(key + ":none") is None
        assert len((await cluster_client.xread({key: "0"}, count=5))[0][1]) == 1
        assert int(cluster_client.get_default_node().port) == hung.port  # the map read again with it first, as before
    finally:
        os.kill(hung.process.pid, signal.SIGCONT)

