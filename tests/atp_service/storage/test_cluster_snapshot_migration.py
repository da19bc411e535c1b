"""A snapshot written in parts while its group's slot migrates to another primary: the parts sent
after the group's keys moved are refused (``ASK``, ``TRYAGAIN``: never run), so the write fails and the
snapshot Redis holds stays the old one, whole, its log untrimmed; once the slot is served by its new
primary a try fenced first (as ``Checkpoints`` does after a failure) lands there, and recovery reads
it back (R7)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.exceptions import AskError, TryAgainError

from atp_service.storage.embedded_cluster import EmbeddedCluster
from atp_service.storage.log import LogStore, encode_snapshot
from atp_service.storage.nodes import Call, Nodes, open_nodes
from atp_service.storage.snapshot_parts import PART_SCRIPT
from reservation import Ledger, Limits
from tests.atp_service.app.test_cluster_reshard import SlotMove

SHARD = 7


class MovingMidway(Nodes):
    """The service's writer, which begins moving the group's slot (every key moved, the slot still
    migrating) once the snapshot's first part was written."""

    move: SlotMove | None = None
    began = False

    async def run_one(self, call: Call, extra_s: float = 0.0) -> Any:
        reply = await super().run_one(call, extra_s)
        if self.move is not None and call.script is PART_SCRIPT and call.args[4] == 0:
            self.move.begin()
            self.move.move_keys()
            self.began = True
        return reply


@pytest.fixture
async def store(cluster_url: str) -> AsyncIterator[LogStore]:
    opened = open_nodes(cluster_url, 5.0, cluster=True, wait_replicas=1, wait_timeout_ms=500)
    nodes = MovingMidway(opened.reader, cluster=True, url=cluster_url, timeout_s=5.0, wait_replicas=1,
                         wait_timeout_ms=500)
    log_store = LogStore(nodes, "t:", pipeline_max=64)
    await log_store.claim(SHARD + 1)
    yield log_store
    await nodes.aclose()


async def test_a_snapshot_in_parts_across_a_slot_migration_leaves_the_old_one_whole(
        store: LogStore, redis_cluster: EmbeddedCluster) -> None:
    for seq in range(1, 5):
        await store.submit(SHARD, seq, f"entry {seq}".encode())
    snapshot = encode_snapshot(1, Ledger(SHARD, Limits()).snapshot())
    await store.write_snapshot(SHARD, 1, snapshot)
    log_key = store.keys.log(SHARD)
    source = int(store.client.get_node_from_key(log_key).port)
    slot = int(await store.client.cluster_keyslot(log_key))
    target = next(node.port for node in redis_cluster.primaries if node.port != source)
    move = SlotMove(redis_cluster, slot, source, target)
    assert isinstance(store.nodes, MovingMidway)
    store.nodes.move = move
    try:
        later = encode_snapshot(3, Ledger(SHARD, Limits()).snapshot())
        with pytest.raises((AskError, TryAgainError)):  # refused before the script ran
            await store.write_snapshot(SHARD, 3, later, part_bytes=16)
        store.nodes.move = None
        assert store.nodes.began
        held = await store.load_snapshot(SHARD)  # read from the target (ASK followed)
        assert held is not None and held.seq == 1
        assert [seq async for seq, _ in store.entries_after(SHARD, 1)] == [2, 3, 4]
    finally:
        store.nodes.move = None
        if store.nodes.began:
            move.finish()
    await store.fence(SHARD)
    await store.write_snapshot(SHARD, 3, later, part_bytes=16)
    held = await store.load_snapshot(SHARD)
    assert held is not None and held.seq == 3
    assert [seq async for seq, _ in store.entries_after(SHARD, 3)] == [4]
    await store.submit(SHARD, 5, b"entry 5")  # the shard writes on, on its new primary
    assert int(store.client.get_node_from_key(log_key).port) == target
