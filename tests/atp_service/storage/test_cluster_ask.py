"""The service's cluster client (``clients.connect_any``) follows an ASK redirection — a slot migrating, the key on
the importing node already — to a node it holds several connections to: ``ASKING`` and the command on one. To a node
no slot map names yet (one an operator just added): tests/atp_service/app/test_cluster_added_node.py."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis
from redis.asyncio.cluster import ClusterNode

from atp_service.storage import clients
from atp_service.storage.clients import ASKED_IDLE_MOST, ASKED_NODES_MOST, _AskedNode, close_any, connect_any
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


async def test_redis_py_still_asks_an_ask_s_node_as_the_cluster_client_relies_on(
        client: Any, redis_cluster: EmbeddedCluster, moves: list[SlotMove]) -> None:
    """``_Cluster`` relies on redis-py's private path of an ASK (``RedisCluster._execute_command``, 8.1): the node
    named is looked up by ``get_node(node_name=...)`` alone; ``ASKING`` is sent as a command of its own through that
    node's ``execute_command``, then the command through it; a node's ``execute_command`` takes its connection
    (``acquire_connection``) and gives it back (``release``, to the right of ``_free``) with nothing of another task
    run between ``ASKING``'s giving back and the command's taking — so ``_AskedNode``, taking the connection freed
    last, sends the command on the connection ``ASKING`` allowed it on. A redis-py upgrade that changes any of these
    fails here, by name, rather than as MOVED answered back until 'TTL exhausted.' under load."""
    moves.append(asked(redis_cluster))
    await client.initialize()
    loop, events = asyncio.get_running_loop(), []
    acquire, release, execute = _AskedNode.acquire_connection, ClusterNode.release, ClusterNode.execute_command

    def acquiring(node: Any, *args: Any) -> Any:
        assert isinstance(node._free, collections.deque), "redis-py's ClusterNode keeps no _free deque"
        conn = acquire(node, *args)
        freed = [ran for kind, _, ran in events if kind == "release"]
        events.append(("acquire", conn, bool(freed and freed[-1])))  # another task run since the last giving back
        return conn

    def releasing(node: Any, conn: Any) -> None:
        other_ran: list[bool] = []
        loop.call_soon(other_ran.append, True)  # runs at the first turn another task may take
        events.append(("release", conn, other_ran))
        release(node, conn)
        assert node._free and node._free[-1] is conn, "redis-py's ClusterNode.release no longer frees to the right"

    async def executing(node: Any, *args: Any, **kwargs: Any) -> Any:
        events.append(("command", args[0], None))
        return await execute(node, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_AskedNode, "acquire_connection", acquiring)
        patch.setattr(_AskedNode, "release", releasing)
        patch.setattr(_AskedNode, "execute_command", executing)
        assert len(await client.hgetall(KEY)) == 20
    assert events, "redis-py no longer looks an ASK's node up by get_node(node_name=...): _Cluster is not asked"
    kinds = [(kind, what) for kind, what, _ in events if kind == "command"]
    assert kinds == [("command", "ASKING"), ("command", "HGETALL")], \
        f"redis-py no longer sends ASKING, then the command, through the asked node's execute_command: {kinds}"
    assert [kind for kind, _, _ in events] == ["command", "acquire", "release", "command", "acquire", "release"]
    (_, asking, _), (_, freed, _), (_, taken, other_ran) = events[1], events[2], events[4]
    assert asking is freed is taken, "the command went on another connection than ASKING's"
    assert not other_ran, "another task could run between ASKING's connection given back and the command's taking"


async def test_the_connections_a_burst_of_asked_reads_opened_are_not_all_kept(
        client: Any, redis_cluster: EmbeddedCluster, moves: list[SlotMove]) -> None:
    """An ASK's node (``_AskedNode``) made a connection for each command asked of it at once, and kept every one
    open until the client closed (the process's life): each reshard's burst left its peak concurrency of idle
    connections at the importing node, on top of those its slot map's node holds. It keeps a few free."""
    moves.append(asked(redis_cluster))
    await client.initialize()
    reads = await asyncio.gather(*(client.hgetall(KEY) for _ in range(16)))
    assert [len(read) for read in reads] == [20] * 16
    (node,) = client._asked.values()
    assert len(node._connections) <= ASKED_IDLE_MOST, len(node._connections)  # was: 16, all free, all open
    assert len(await client.hgetall(KEY)) == 20  # asked again after: ASKING and the command on one connection


async def test_the_connections_kept_free_to_nodes_asked_after_asks_are_bounded(client: Any) -> None:
    """Each node an ASK named kept its connections free until the client closed: nodes replaced over a cluster's
    life (primaries moved to new addresses, scaled out and in) piled up idle connections, to nodes long gone too.
    Only the ``ASKED_NODES_MOST`` asked most recently keep any free."""
    names = [f"10.0.{i // 250}.{i % 250}:6379" for i in range(100)]
    for name in names:  # each asked once: a connection taken and given back (made lazily: nothing is dialled)
        node = client.get_node(node_name=name)
        assert node.name == name
        node.release(node.acquire_connection())
    kept = sum(len(node._connections) for node in client._asked.values())
    assert kept <= ASKED_NODES_MOST * ASKED_IDLE_MOST, kept  # was: 100
    recent = names[-ASKED_NODES_MOST:]  # each keeps its connection free
    assert [len(client.get_node(node_name=name)._connections) for name in recent] == [1] * len(recent)


async def test_the_nodes_asked_after_asks_are_bounded(client: Any) -> None:
    """Each node an ASK named was kept for the client's life, its connections closed but the node remembered: one
    object per address ever asked, for good, over a long life of slot moves to nodes replaced (new addresses). Only
    the ``ASKED_NODES_MOST`` asked most recently are remembered, and those with a connection in use."""
    names = [f"10.1.{i // 250}.{i % 250}:6379" for i in range(100)]
    held = client.get_node(node_name=names[0])
    in_use = held.acquire_connection()  # a command on its way there: the node is not forgotten under it
    for name in names[1:]:
        node = client.get_node(node_name=name)
        node.release(node.acquire_connection())
    assert set(client._asked) == {names[0], *names[-ASKED_NODES_MOST:]}, len(client._asked)  # was: 100
    held.release(in_use)
    assert client.get_node(node_name=names[-1]) is client._asked[names[-1]]  # asked again: the same node
    assert set(client._asked) == set(names[-ASKED_NODES_MOST:])


async def test_a_node_forgotten_while_a_caller_held_it_keeps_no_connection_open(client: Any) -> None:
    """A caller may take a connection of a node it was handed (``HashScan`` holds one across an await) after the
    node was forgotten: once freed, that connection is closed, not left open past the client's close."""
    forgotten = client.get_node(node_name="10.2.0.1:6379")
    for i in range(ASKED_NODES_MOST):
        client.get_node(node_name=f"10.2.1.{i}:6379")
    assert "10.2.0.1:6379" not in client._asked
    forgotten.release(forgotten.acquire_connection())
    assert forgotten._connections == []
    await asyncio.gather(*forgotten._background_tasks)


async def test_a_node_asked_by_a_name_redis_py_spells_otherwise_keeps_its_connection_and_is_forgotten(
        client: Any) -> None:
    """An ASK may name its node ``localhost:port`` (``cluster-preferred-endpoint-type hostname``), a node redis-py
    names ``127.0.0.1:port``: remembered under the one name, looked for under the other, it was taken for forgotten
    when a connection was freed — the one ``ASKING`` freed closed before its command took it, which went without
    it (answered MOVED) — and once asked less recently its forgetting raised KeyError, failing every command
    redirected by an ASK after it, which no caller takes for Redis away."""
    node = client.get_node(node_name="localhost:6390")
    assert node.name == "127.0.0.1:6390"  # redis-py's spelling
    asking = node.acquire_connection()
    node.release(asking)
    assert node.acquire_connection() is asking  # was: a new one, ``ASKING``'s closed
    node.release(asking)
    for i in range(ASKED_NODES_MOST):
        client.get_node(node_name=f"10.3.1.{i}:6379")  # was: KeyError '127.0.0.1:6390'
    assert "localhost:6390" not in client._asked and node._connections == []
    await asyncio.gather(*client._closing)


async def _a_forgotten_node_s_connection_closing(client: Any, port: int, gate: asyncio.Event) -> Any:
    """A connection (open, to ``port``) a caller took of a node already forgotten, freed: closed in the background,
    its closing held until ``gate`` is set."""
    forgotten = client.get_node(node_name=f"127.0.0.1:{port}")
    for i in range(ASKED_NODES_MOST):
        client.get_node(node_name=f"10.4.1.{i}:6379")
    assert f"127.0.0.1:{port}" not in client._asked
    conn = forgotten.acquire_connection()  # taken after it was forgotten: its caller held the node
    await conn.connect()
    disconnect = conn.disconnect

    async def held_disconnect(*args: Any, **kwargs: Any) -> None:
        await gate.wait()
        await disconnect(*args, **kwargs)

    conn.disconnect = held_disconnect
    forgotten.release(conn)
    assert forgotten._background_tasks, "the freed connection's closing under way"
    return conn


async def test_the_client_s_close_waits_for_the_closing_of_a_forgotten_node_s_connection(
        redis_cluster: EmbeddedCluster) -> None:
    """A connection a caller took of a node already forgotten is closed in the background once freed; the client's
    close did not wait for that closing (the node's task, which the client no longer knew of): at a stop the
    connection could still be open as the close returned, its task pending as the loop ended ('Task was destroyed
    but it is pending'). The close waits for it."""
    client, gate = connect_any(redis_cluster.url, 5.0, cluster=True), asyncio.Event()
    conn = await _a_forgotten_node_s_connection_closing(client, redis_cluster.primaries[0].port, gate)
    closing = asyncio.ensure_future(close_any(client))
    for _ in range(100):  # every task able to run has run: nothing here waits on a socket but the held closing
        await asyncio.sleep(0)
    assert not closing.done(), "the client's close returned with a connection's closing still pending"
    gate.set()
    await closing
    assert not client._closing and not conn.is_connected


async def test_the_client_s_close_waits_for_a_closing_a_bounded_while_then_cancels_it(
        redis_cluster: EmbeddedCluster, monkeypatch: pytest.MonkeyPatch) -> None:
    """A closing that never ends holds the client's close only ``CLOSING_WAIT_MOST_S``; it is cancelled then, not
    left pending."""
    monkeypatch.setattr(clients, "CLOSING_WAIT_MOST_S", 0)
    client = connect_any(redis_cluster.url, 5.0, cluster=True)
    gate = asyncio.Event()  # never set while the client closes
    conn = await _a_forgotten_node_s_connection_closing(client, redis_cluster.primaries[0].port, gate)
    (held,) = client._closing
    await close_any(client)
    assert held.cancelled() and not client._closing
    gate.set()
    await conn.disconnect()
