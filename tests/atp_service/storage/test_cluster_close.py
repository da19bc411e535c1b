"""A Redis Cluster writer closed leaves no connection open, and sends nothing more.

redis-py's cluster client closes nothing while it waits to read the slot map again, as it does after
any command of its own that a node did not answer: the writer's ``CLUSTER NODES`` on a node that had
gone left every connection of the client open at the close.

A read of the slot map under way at the close (the service stopping while a node hangs) goes on: the
node it waited on cut off, it asks the next. Each read of the map that ends is followed by a
``CLUSTER NODES`` (the writer learns every node): one begun after the close opened connections again
on the closed client — redis-py's cluster client, closed, connects anew at its next command — and left
them open, its task still running, after the service had stopped."""

from __future__ import annotations

import asyncio
import contextlib

import pytest
import redis

from atp_service.storage.durability import STORAGE_ERRORS
from atp_service.storage.embedded_cluster import EmbeddedCluster
from atp_service.storage.nodes import Call, Nodes, Script, open_nodes
from tests.waiting import until

pytestmark = pytest.mark.slow

_ONE = Script("return 1")
PATIENT_TIMEOUT_S = 15.0
"""The writer's socket timeout: longer than a test takes (none waits it out)."""


def _clients(port: int) -> int:
    """The connections the node at ``port`` holds open, this one's included."""
    with redis.Redis(host="127.0.0.1", port=port) as client:
        return int(client.info("clients")["connected_clients"])


def _cluster_nodes_calls(port: int) -> int:
    with redis.Redis(host="127.0.0.1", port=port) as client:
        return int(client.info("commandstats").get("cmdstat_cluster|nodes", {}).get("calls", 0))


async def _key_on_each(nodes: Nodes) -> dict[int, str]:
    """A key of each primary (by port), each written once: the slot map read, the nodes learned."""
    await nodes.reader.initialize()
    keys: dict[int, str] = {}
    for key in (f"k{i}" for i in range(1000)):
        keys.setdefault(int(nodes.reader.get_node_from_key(key).port), key)
    for key in keys.values():
        assert await nodes.run_one(Call(_ONE, [key], [])) == 1
    return keys


async def test_a_writer_whose_client_met_a_node_gone_closes_every_connection(cluster: EmbeddedCluster) -> None:
    gone, *others = cluster.primaries
    opened_before = {node.port: _clients(node.port) for node in others}
    nodes = open_nodes(others[0].url, PATIENT_TIMEOUT_S, cluster=True)
    keys = await _key_on_each(nodes)
    assert nodes.reader.get_default_node().port == gone.port  # the one asked CLUSTER NODES (made certain)
    gone.kill()
    for _ in range(2):  # refused: the map is read again (the node still listed), then learned from
        with pytest.raises(STORAGE_ERRORS):
            await nodes.run_one(Call(_ONE, [keys[gone.port]], []))
    if nodes._learning is not None:
        await asyncio.wait((nodes._learning,))
    await nodes.aclose()
    for node in others:
        await until(lambda node=node: _clients(node.port) == opened_before[node.port],  # type: ignore[misc]
                    f"every connection to {node.port} closed")


async def test_a_read_of_the_map_ending_after_the_close_sends_nothing_more(cluster: EmbeddedCluster) -> None:
    nodes = open_nodes(cluster.url, PATIENT_TIMEOUT_S, cluster=True)
    keys = await _key_on_each(nodes)
    port, key = next(iter(keys.items()))
    with redis.Redis(host="127.0.0.1", port=port) as admin:
        slot = admin.cluster("KEYSLOT", key)
        admin.cluster("DELSLOTS", slot)
        with pytest.raises(STORAGE_ERRORS):  # CLUSTERDOWN: the map is read again before the next call
            await nodes.run_one(Call(_ONE, [key], []))
        admin.cluster("ADDSLOTS", slot)
    # Held, redis-py's lock keeps the read of the map waiting, as a node that hangs would, and out of the
    # close's reach (a read that the close cuts off asks the next node, which may answer).
    lock = nodes.reader.nodes_manager._initialize_lock
    await lock.acquire()
    try:
        write = asyncio.ensure_future(nodes.run_one(Call(_ONE, [key], [])))
        await until(lambda: nodes._reading is not None, "the slot map being read")
        reading = nodes._reading
        write.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await write
        await nodes.aclose()
    finally:
        lock.release()
    calls = sum(_cluster_nodes_calls(node.port) for node in cluster.primaries)
    assert reading is not None
    await asyncio.wait((reading,))
    assert reading.exception() is None, "the read of the map ended without a map: the test shows nothing"
    if nodes._learning is not None:
        await asyncio.wait((nodes._learning,))
    assert sum(_cluster_nodes_calls(node.port) for node in cluster.primaries) == calls, \
        "the closed writer asked CLUSTER NODES"
