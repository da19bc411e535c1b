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
from atp_service.storage.hash_scan import HashScan
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



async def test_a_hash_scan_on_a_connection_of_its_own_follows_ask_to_where_the_hash_is(
        client: Any, redis_cluster: EmbeddedCluster, moves: list[SlotMove]) -> None:
    """``HashScan`` (the desk's feeds loaded at start, a publisher's resync: C4) sends ``HSCAN`` on a connection it
    holds, past redis-py's redirections: it followed MOVED, and raised ASK — its hash's slot migrating, the hash
    moved already, every scan of it refused (the start waiting for Redis, a resync never ending) for as long as the
    slot migrated, for good where a reshard was left half-done. It asks the node named, the sweep begun at the
    other node going again from its start there (another table: another life), and stays there, each sweep of one
    life, for as long as the slot map names the node that answered ASK."""
    key, fields = "t:{askscan}:state", {f"f{i}": i for i in range(2000)}  # past a listpack: pages of a table
    with redis.RedisCluster.from_url(redis_cluster.url) as admin:
        admin.delete(key)
        admin.hset(key, mapping=fields)
        slot, source = admin.keyslot(key), int(admin.get_node_from_key(key).port)
    scan = HashScan(client)
    try:
        cursor, _, began = await scan.hscan(key, 0, 10)
        assert cursor, "a page of the hash, more to come"
        move = SlotMove(redis_cluster, slot, source, next(n.port for n in redis_cluster.primaries if n.port != source))
        moves.append(move)
        move.begin()
        move.move_keys()
        _, _, life = await scan.hscan(key, cursor, 10)
        assert life != began, "the next page from another node, whose table the cursor is not of: the sweep again"
        for _ in range(2):  # each sweep of one life: the node asked held on to
            found, cursor, lives = {}, 0, set()
            while True:
                cursor, page, now = await scan.hscan(key, cursor, 50)
                found.update(page)
                lives.add(now)
                if not cursor:
                    break
            assert lives == {life} and len(found) == len(fields)
    finally:
        await scan.aclose()
