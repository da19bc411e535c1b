"""The service's cluster client (``clients.connect_any``) follows an ASK redirection — a slot migrating, the key on
the importing node already — to a node it holds several connections to: ``ASKING`` and the command on one. To a node
no slot map names yet (one an operator just added): tests/atp_service/app/test_cluster_added_node.py."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis

from atp_service.storage.clients import close_any, connect_any
from atp_service.storage.embedded_cluster import EmbeddedCluster
from tests.slot_moves import SlotMove

KEY = "t:{ask}:state"


@pytest.fixture
async def client(cluster_url: str) -> AsyncIterator[Any]:
    cluster = connect_any(cluster_url, 5.0, cluster=True)
    yield cluster
    await close_any(cluster)


def asked(cluster: EmbeddedCluster, target: int | None = None) -> SlotMove:
    """``KEY``'s slot migrating from its primary to ``target`` (another primary unless given), ``KEY`` moved there:
    its primary answers ASK for it."""
    with redis.RedisCluster.from_url(cluster.url) as admin:
        admin.hset(KEY, mapping={f"f{i}": i for i in range(20)})
        slot, source = admin.keyslot(KEY), int(admin.get_node_from_key(KEY).port)
    move = SlotMove(cluster, slot, source, target or next(n.port for n in cluster.primaries if n.port != source))
    move.begin()
    move.move_keys()
    return move


async def test_a_read_asked_to_a_node_holding_connections_free_is_answered_there(
        client: Any, redis_cluster: EmbeddedCluster, moves: list[SlotMove]) -> None:
    """redis-py's node hands out the connection free the longest: with two free, ``ASKING`` went on one and the
    command on the other, which the importing node answered MOVED back to the node that had answered ASK, until
    redis-py gave up ('TTL exhausted.', naming nothing): every read of a migrating slot's moved keys failed."""
    moves.append(move := asked(redis_cluster))
    await client.initialize()
    target = client.get_node(host="127.0.0.1", port=move.target)
    free = [target.acquire_connection(), target.acquire_connection()]  # two connections free to the target
    for conn in free:
        target.release(conn)
    assert len(await client.hgetall(KEY)) == 20
    reads = await asyncio.gather(*(client.hgetall(KEY) for _ in range(4)))
    assert [len(read) for read in reads] == [20] * 4
    assert len(await client.hgetall(KEY)) == 20  # after several went at once: connections free there again

