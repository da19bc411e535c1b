"""``atpctl events publish --redis-cluster`` while the cluster changes. A primary other than the stream's hangs
(SIGSTOP: it takes connections and bytes, answers nothing): the entries are written to the stream's primary.
redis-py read its command table (``COMMAND``) from its default node — the primary of the first slots — before the
first command, so with that node hung nothing was published (exit 6, "Timeout reading from" that node) for as long
as it hung, whichever primary held the stream. Each primary but the stream's is stopped in turn, so the default
node is among them. And the stream's slot migrates to an added node: the entries follow the ASK there."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from redis.asyncio.cluster import ClusterNode
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from atp_client._cluster import Cluster
from atp_service.storage.embedded_cluster import EmbeddedCluster
from tests.atp_client.test_ctl import receipt
from tests.slot_moves import SlotMove

FIRST_SLOTS_END = 5460
"""The last slot of the first primary's range (three primaries split 16,384 in even ranges)."""


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[EmbeddedCluster]:
    """A cluster of its own (its nodes are stopped), whose nodes never declare one failed within the test."""
    with EmbeddedCluster(tmp_path / "cluster", primaries=3, replicas=0, node_timeout_ms=600_000) as formed:
        yield formed


def test_entries_are_published_to_the_stream_s_primary_while_another_hangs(cluster: EmbeddedCluster,
                                                                            tmp_path: Path) -> None:
    facts = tmp_path / "facts.jsonl"
    facts.write_text(receipt(0, int(time.time() * 1000)) + "\n")
    with redis.RedisCluster.from_url(cluster.url) as admin:
        stream = next(name for n in range(1000) if admin.keyslot(name := f"atp:in:pos{n}") > FIRST_SLOTS_END)
        holder = next(node for node in cluster.primaries if node.port == admin.get_node_from_key(stream).port)
    for hung in cluster.primaries:
        if hung is holder:
            continue
        assert hung.process is not None
        os.kill(hung.process.pid, signal.SIGSTOP)
        try:
            done = subprocess.run([sys.executable, "-m", "atp_client.ctl", "--json", "--timeout", "1", "events",
                                   "publish", str(facts), "--stream", stream, "--redis-url", holder.url,
                                   "--redis-cluster"], capture_output=True, text=True, timeout=60)
        finally:
            os.kill(hung.process.pid, signal.SIGCONT)
        assert done.returncode == 0, (done.returncode, done.stderr)
        assert json.loads(done.stdout) == {"stream": stream, "published": 1, "in_doubt": 0}, done.stdout


def test_entries_are_published_where_an_ask_sends_them_to_a_node_serving_no_slot_yet(tmp_path: Path) -> None:
    """An operator scaling out: the added node imports the stream's slot, the stream moved already, and the node
    that serves the slot answers ASK. redis-py looked the named node up in its slot map, which names no node serving
    no slot yet: the entry ended ``AttributeError`` ('NoneType' object has no attribute 'execute_command'), exit 6,
    for as long as the slot migrated (for good, a reshard left half-done)."""
    facts = tmp_path / "facts.jsonl"
    facts.write_text(receipt(0, int(time.time() * 1000)) + "\n")
    with EmbeddedCluster(tmp_path / "cluster", primaries=1) as cluster:
        source, stream = cluster.primaries[0], "atp:in:pos"
        with redis.Redis(host="127.0.0.1", port=source.port) as admin:
            admin.xadd(stream, {"before": "1"})
            slot = int(admin.execute_command("CLUSTER", "KEYSLOT", stream))
        added = cluster.add_node()
        move = SlotMove(cluster, slot, source.port, added.port)
        move.begin()
        try:
            move.move_keys()  # the slot still the source's, which answers ASK for the stream
            done = subprocess.run([sys.executable, "-m", "atp_client.ctl", "--json", "--timeout", "5", "events",
                                   "publish", str(facts), "--stream", stream, "--redis-url", source.url,
                                   "--redis-cluster"], capture_output=True, text=True, timeout=60)
        finally:
            move.finish()
        assert done.returncode == 0, (done.returncode, done.stderr)
        assert json.loads(done.stdout) == {"stream": stream, "published": 1, "in_doubt": 0}, done.stdout
        with redis.Redis(host="127.0.0.1", port=added.port) as moved:
            assert moved.xlen(stream) == 2


async def test_the_command_table_is_read_where_cluster_nodes_are_not_hashable(
        cluster: EmbeddedCluster, monkeypatch: pytest.MonkeyPatch) -> None:
    """redis-py 7.0 (the client's ``redis>=7.0``) defines ``ClusterNode.__eq__`` without ``__hash__``: its nodes are not
    hashable. atpctl's table read put the nodes to ask in a dict (``dict.fromkeys``), so every ``events publish
    --redis-cluster`` ended ``TypeError: unhashable type: 'ClusterNode'`` there (exit 1) before writing anything."""
    monkeypatch.setattr(ClusterNode, "__hash__", None)  # as redis-py 7.0
    client = Cluster.from_url(cluster.url, retry=Retry(NoBackoff(), 0), socket_timeout=5, socket_connect_timeout=5)
    try:
        assert await client.xadd("atp:in:pos", {"f": "v"})
    finally:
        await client.aclose()
