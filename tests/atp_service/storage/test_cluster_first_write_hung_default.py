"""The writer (``Nodes``) lists the cluster's nodes (``CLUSTER NODES``, best effort) after its first read of the slot
map, and redis-py sends that to its default node, the primary of the first slots. Awaited before the first write,
with that node hung (SIGSTOP: it takes connections and bytes, answers nothing) every shard's first write waited out
the socket timeout, whichever primary held it."""

from __future__ import annotations

import asyncio

import pytest

from atp_service.storage.embedded_cluster import EmbeddedCluster
from atp_service.storage.nodes import Call, Nodes, Script, open_nodes
from tests.atp_service.storage.test_cluster_hung_other_node import _a_key_per_primary, _stopped

TIMEOUT_S = 30.0
"""Long: the write is answered while the list is still unanswered, whatever the machine's pace."""


async def test_the_first_write_to_a_primary_is_answered_while_the_default_node_hangs(cluster: EmbeddedCluster) -> None:
    nodes = open_nodes(cluster.url, TIMEOUT_S, cluster=True)
    try:
        await nodes.reader.initialize()
        default = nodes.reader.get_default_node().port
        keys = await _a_key_per_primary(nodes.reader, cluster)
        key = next(key for port, key in keys.items() if port != default)
        with _stopped(next(node for node in cluster.primaries if node.port == default)):
            written = await nodes.run_one(Call(Script("return redis.call('SET', KEYS[1], ARGV[1])"), [key], ["v"]))
            assert written == b"OK"
            assert nodes._learning is not None and not nodes._learning.done()  # the list: still unanswered
    finally:
        await nodes.aclose()


async def test_first_writes_made_together_leave_no_list_of_the_nodes_running_past_the_close(
        cluster: EmbeddedCluster, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each shard's first write, made together before the map was read: each began a list of the nodes once the map
    was read, and kept only the last in ``_learning``. The others ran unowned: not cancelled at the close, nor
    awaited (a list the default node never answers, as here, pending for good)."""
    listing: list[asyncio.Task[None]] = []

    async def unanswered(self: Nodes) -> None:  # CLUSTER NODES to a default node that never answers
        listing.append(asyncio.current_task())  # type: ignore[arg-type]
        await asyncio.Event().wait()

    monkeypatch.setattr(Nodes, "_learn_nodes", unanswered)
    nodes = open_nodes(cluster.url, TIMEOUT_S, cluster=True)
    try:
        script = Script("return redis.call('SET', KEYS[1], ARGV[1])")
        written = await asyncio.gather(*(nodes.run_one(Call(script, [f"k:{{{i}}}"], ["v"])) for i in range(3)))
        assert written == [b"OK"] * 3
        await asyncio.sleep(0)  # each list begun: under way
    finally:
        await nodes.aclose()
    left = [task for task in listing if not task.done()]
    for task in left:
        task.cancel()
    assert listing and not left, f"{len(left)} of {len(listing)} lists of the nodes still running after the close"
