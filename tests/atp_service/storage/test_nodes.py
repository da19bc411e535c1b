"""The writer of scripts (``storage/nodes.py``) against a real Redis: a call that did not run
because its node had lost the script is sent again, alone — one that ran is never run twice."""

from __future__ import annotations

import asyncio
from pathlib import Path

import redis
from redis.exceptions import RedisError

from atp_service.storage.embedded_cluster import EmbeddedCluster
from atp_service.storage.embedded_redis import EmbeddedRedis
from atp_service.storage.nodes import Call, Nodes, Script, connect, node_url, open_nodes

COUNTED = Script("return redis.call('INCR', KEYS[1])")
COUNTED_TOO = Script("return redis.call('INCR', KEYS[1]) -- another script, another digest")


async def test_only_the_calls_whose_script_was_missing_are_sent_again(redis_url: str) -> None:
    nodes = Nodes(connect(redis_url, 5.0))
    try:
        await nodes.reader.script_flush()
        await nodes.reader.script_load(COUNTED.body)  # the node knows one script, not the other
        replies = await nodes.run([Call(COUNTED, ["k"], []), Call(COUNTED_TOO, ["k"], [])])
        assert replies == [1, 2]
        assert int(await nodes.reader.get("k")) == 2  # the first call ran once, not again with the second
    finally:
        await nodes.aclose()


def test_a_node_url_keeps_the_credentials_and_options_of_the_seed() -> None:
    assert node_url("rediss://:pw@10.0.0.1:7000/0?ssl_cert_reqs=none", "10.0.0.2", 7001) == \
        "rediss://:pw@10.0.0.2:7001/0?ssl_cert_reqs=none"
    assert node_url("redis://10.0.0.1:7000", "10.0.0.3", 7002) == "redis://10.0.0.3:7002"


class _Node:
    name = "127.0.0.1:1"  # nothing listens there


class _Reader:
    """A cluster client whose every key is on ``_Node`` (nothing listens there), its slot map kept by ``manager``."""

    def __init__(self, manager: object) -> None:
        self.nodes_manager = manager

    async def initialize(self) -> None:
        pass

    async def aclose(self) -> None:
        pass

    def get_node_from_key(self, key: str) -> _Node:
        return _Node()


def _failed_on(manager: object) -> Nodes:
    """The writer over ``_Reader(manager)`` after a call to ``_Node`` failed: its next call reads the map again."""
    nodes = Nodes(_Reader(manager), cluster=True, url="redis://127.0.0.1:1", timeout_s=1.0)
    nodes._suspect = {_Node.name}
    return nodes


async def test_a_slot_map_refresh_that_failed_is_tried_again_on_the_next_call() -> None:
    """A refresh that failed (no node answered) leaves the slot map as stale as it was: the next
    call to the node that failed reads it again instead of sending to the nodes of the old map. The
    refresh's failure is the reply of each call that waited for it (none of them was sent)."""
    from redis.exceptions import RedisClusterException

    class Manager:
        slots_cache: dict[int, list[object]] = {}

        def __init__(self) -> None:
            self.tries = 0

        async def initialize(self, _: object = None, last_failed_node_name: str | None = None) -> None:
            assert last_failed_node_name == _Node.name  # the node that failed asked last
            self.tries += 1
            if self.tries == 1:
                raise RedisClusterException("Redis Cluster cannot be connected")

    manager = Manager()
    nodes = _failed_on(manager)
    (refused,) = await nodes.run([Call(COUNTED, ["k"], [])])
    assert isinstance(refused, RedisClusterException)
    (unreached,) = await nodes.run([Call(COUNTED, ["k"], [])])
    assert manager.tries == 2
    assert isinstance(unreached, OSError | RedisError), unreached  # sent by the map read again: no one there
    await nodes.aclose()


async def test_the_map_is_read_again_with_a_redis_py_whose_read_names_no_failed_node() -> None:
    """redis-py before 8.0 (7.x runs the service): ``NodesManager.initialize`` takes no arguments. The writer's read
    of the map again after a primary did not answer must not pass it the node to ask last: a TypeError at each call,
    the map never read again, and every shard on that primary sent to it for good (liveness)."""

    class Manager:
        slots_cache: dict[int, list[object]] = {}
        tries = 0

        async def initialize(self) -> None:  # redis-py 7.x's
            Manager.tries += 1

    nodes = _failed_on(Manager())
    try:
        (reply,) = await nodes.run([Call(COUNTED, ["k"], [])])
        assert not isinstance(reply, TypeError), reply
        assert Manager.tries == 1  # the map read again, once
        assert isinstance(reply, OSError | RedisError), reply  # sent by the map read again: no one there
    finally:
        await nodes.aclose()


async def test_an_idle_connection_the_server_closed_is_not_handed_out(tmp_path: Path) -> None:
    """After a Redis restart, the pool's idle connection is dead: the first command must go on a
    fresh one. The clients never retry on their own, so a dead one handed out fails that command."""
    with EmbeddedRedis(tmp_path / "r") as server:
        client = connect(server.url, 5.0)
        try:
            await client.set("k", "1")  # one connection, now idle in the pool
            await asyncio.to_thread(server.stop)
            await asyncio.to_thread(server.start)
            assert await client.get("k") == b"1"
        finally:
            await client.aclose()


SLOW_ECHO = Script("""
local t = redis.call('TIME')
local start = t[1] * 1000000 + t[2]
repeat local n = redis.call('TIME') until n[1] * 1000000 + n[2] - start >= tonumber(ARGV[2])
return ARGV[1]""")


def client_addresses(port: int) -> set[str]:
    """The addresses (host:port, as the node sees them) of the clients of the node at ``port``."""
    with redis.Redis(host="127.0.0.1", port=port) as admin:
        return {client["addr"] for client in admin.client_list(_type="normal")}


async def test_a_failover_retires_the_lane_to_the_former_primary(tmp_path: Path) -> None:
    """A replica promoted (at another address) makes the former primary's lane useless: its
    connections are closed, not kept for the life of the process — one more set of sockets and
    file descriptors with every node replaced."""
    with EmbeddedCluster(tmp_path / "c", primaries=1, replicas=1, node_timeout_ms=1000, sync_delay_s=0) as cluster:
        (former,), (promoted,) = cluster.primaries, cluster.replicas
        nodes = open_nodes(cluster.url, 5.0, cluster=True)
        try:
            assert await nodes.run([Call(COUNTED, ["k"], [])]) == [1]
            (former_lane,) = nodes._lanes.values()
            (conn,) = former_lane._open
            host, port = conn._writer.get_extra_info("sockname")[:2]  # type: ignore[union-attr]
            lane_address = f"{host}:{port}"
            assert lane_address in client_addresses(former.port)
            with redis.Redis(host="127.0.0.1", port=promoted.port) as replica:
                replica.execute_command("CLUSTER FAILOVER")
            deadline = asyncio.get_running_loop().time() + 60
            # CLUSTER FAILOVER answers before the roles switch: a write sent meanwhile still ran on
            # the former primary, its lane kept, and the test failed on a busy machine.
            while cluster.serving_primaries() != [promoted]:
                assert asyncio.get_running_loop().time() < deadline, "the replica was never promoted"
                await asyncio.sleep(0.05)
            while isinstance((reply := (await nodes.run([Call(COUNTED, ["k"], [])]))[0]), BaseException):
                assert asyncio.get_running_loop().time() < deadline, f"no write reached the new primary: {reply!r}"
                await asyncio.sleep(0.1)
            assert list(nodes._lanes) == [f"127.0.0.1:{promoted.port}"]
            assert former_lane.open_connections == 0
            while lane_address in client_addresses(former.port):  # the socket closed, as the node sees it
                assert asyncio.get_running_loop().time() < deadline, "the former primary still holds the lane's sockets"
                await asyncio.sleep(0.05)
        finally:
            await nodes.aclose()


async def test_a_retired_lane_lets_its_exchange_in_flight_finish(redis_url: str) -> None:
    """Retired while a write is in flight, a lane lets it end as it would (its reply read), then
    closes its connection; a later exchange on it fails unsent."""
    nodes = Nodes(connect(redis_url, 5.0))
    try:
        lane = nodes._lane("")
        assert await nodes.run([Call(SLOW_ECHO, ["k"], ["first", 0])]) == [b"first"]  # one connection, idle
        in_flight = asyncio.ensure_future(nodes.run([Call(SLOW_ECHO, ["k"], ["late", 300])]))
        await asyncio.sleep(0)  # one turn: the write takes the idle connection, is sent, awaits its reply
        assert not lane._idle
        lane.retire()
        assert await in_flight == [b"late"]
        assert lane.open_connections == 0
        (unsent,) = await nodes.run([Call(SLOW_ECHO, ["k"], ["never", 0])])
        assert "closed" in str(unsent)
    finally:
        await nodes.aclose()
