"""On a Redis Cluster one of whose primaries hangs (SIGSTOP: it takes connections and bytes, answers nothing),
a stream read or a script run on a key of another primary is answered by that primary alone. redis-py (8.1) asked
one fixed node — the one it read the command table from — for the keys of every XREAD and XREADGROUP (``COMMAND
GETKEYS``), and loaded a script a node lacked on every primary (``SCRIPT LOAD``): with that node hung, every input
stream and channel feed read failed, and so did a script's first run on any node, for as long as it hung. Each
primary is stopped in turn, so the node redis-py picked is among them whichever it is."""

from __future__ import annotations

import os
import signal
from typing import Any

import pytest
import redis.asyncio as aioredis

from atp_service.storage.clients import streams_named
from atp_service.storage.embedded_cluster import EmbeddedCluster
from atp_service.storage.embedded_redis import EmbeddedRedis

GET = "return redis.call('GET', KEYS[1])"


async def _a_key_per_primary(client: Any, cluster: EmbeddedCluster) -> dict[int, str]:
    """A key of each primary, by port."""
    await client.initialize()
    keys: dict[int, str] = {}
    for i in range(1000):
        keys.setdefault(int(client.get_node_from_key(f"k:{{{i}}}").port), f"k:{{{i}}}")
        if len(keys) == len(cluster.primaries):
            return keys
    raise AssertionError("no key found for every primary")


def _stopped(node: EmbeddedRedis) -> Any:
    """``node`` stopped (SIGSTOP) for the block, continued after it whatever happened."""
    class Stopped:
        def __enter__(self) -> None:
            assert node.process is not None
            os.kill(node.process.pid, signal.SIGSTOP)

        def __exit__(self, *_: object) -> None:
            assert node.process is not None
            os.kill(node.process.pid, signal.SIGCONT)
    return Stopped()


async def test_streams_of_the_primaries_that_answer_are_read_while_any_other_hangs(
        cluster: EmbeddedCluster, cluster_client: Any) -> None:
    keys = await _a_key_per_primary(cluster_client, cluster)
    for key in keys.values():
        await cluster_client.xgroup_create(key, "g", id="0", mkstream=True)
        await cluster_client.xadd(key, {"f": "v"})
    for hung in cluster.primaries:
        with _stopped(hung):
            for port, key in keys.items():
                if port == hung.port:
                    continue
                read = await cluster_client.execute_command("XREAD", "COUNT", 5, "STREAMS", key, "0")
                assert len(read[0][1]) == 1
                assert (await cluster_client.xread({key: "0"}, count=5, block=1))
                assert len(await cluster_client.xreadgroup("g", "c", {key: "0"}, count=5)) == 1  # its own pending
                assert await cluster_client.execute_command("XREADGROUP", "GROUP", "g", "c", "COUNT", 5, "BLOCK", 1,
                                                            "STREAMS", key, "0")


async def test_a_script_a_node_lacks_runs_there_while_another_primary_hangs(
        cluster: EmbeddedCluster, cluster_client: Any) -> None:
    keys = await _a_key_per_primary(cluster_client, cluster)
    script = cluster_client.register_script(GET)
    for key in keys.values():
        await cluster_client.set(key, key)
    for hung in cluster.primaries:
        with _stopped(hung):
            for node in cluster.primaries:
                if node is hung:
                    continue
                direct = aioredis.Redis(host="127.0.0.1", port=node.port)
                try:
                    await direct.script_flush()  # as after a restart or a failover: the node lacks it
                finally:
                    await direct.aclose()
                key = keys[node.port]
                assert await script(keys=[key]) == key.encode()
                assert await script(keys=[key]) == key.encode()  # kept there: EVALSHA


@pytest.mark.parametrize(("command", "args", "streams"), [
    ("XREAD", ("COUNT", 1, "BLOCK", 5, "STREAMS", "a", "b", "0", "0"), ["a", "b"]),
    ("XREADGROUP", ("GROUP", "STREAMS", "c", "COUNT", 1, "STREAMS", "x", ">"), ["x"]),
    ("xreadgroup", (b"GROUP", b"g", b"c", b"NOACK", b"streams", b"x", b">"), [b"x"]),
    ("XREAD", ("STREAMS", "a"), None),  # no id: left to redis-py (which Redis refuses)
    ("XREAD", ("COUNT", 1), None),
    ("XREADGROUP", ("STREAMS", "x", ">"), None),  # no group
    ("GET", ("a",), None),
])
def test_the_streams_a_read_names_are_found_from_its_arguments(command: str, args: tuple[Any, ...],
                                                               streams: list[Any] | None) -> None:
    assert streams_named(command, args) == streams
