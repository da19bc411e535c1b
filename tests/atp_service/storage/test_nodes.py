"""The writer of scripts (``storage/nodes.py``) against a real Redis: a call that did not run
because its node had lost the script is sent again, alone — one that ran is never run twice."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from atp_service.storage.embedded_redis import EmbeddedRedis
from atp_service.storage.nodes import Call, Nodes, Script, connect, node_url

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


async def test_a_slot_map_refresh_that_failed_is_tried_again_on_the_next_call() -> None:
    """A refresh that failed (no node answered) leaves the slot map as stale as it was: the next
    call reads it again instead of sending to the nodes of the old map."""
    from redis.exceptions import RedisClusterException

    class Manager:
        def __init__(self) -> None:
            self.tries = 0

        async def initialize(self) -> None:
            self.tries += 1
            if self.tries == 1:
                raise RedisClusterException("Redis Cluster cannot be connected")

    class Reader:
        nodes_manager = Manager()

        async def initialize(self) -> None:
            pass

    nodes = Nodes(Reader(), cluster=True)
    nodes._stale = True
    with pytest.raises(RedisClusterException):
        await nodes.run([])
    await nodes.run([])
    assert Reader.nodes_manager.tries == 2


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
