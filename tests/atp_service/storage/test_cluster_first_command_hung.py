"""On a Redis Cluster one of whose primaries hangs (SIGSTOP: it takes connections and bytes, answers nothing), the first
command of a cluster client that knows no slot map — made now, or closed by redis-py itself (after a CLUSTERDOWN, every
fifth MOVED of a reshard) — goes to its key's node. redis-py (8.1) sent it to a primary drawn at random (the policy of
a command of no key, as it had no map to find one), to be redirected (MOVED) where it answered: drawn hung, it failed
after the socket timeout, one time in as many primaries. Here the draw is made to fall on the hung one."""

from __future__ import annotations

import os
import random
import signal
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.crc import key_slot

from atp_service.storage.clients import close_any, connect_any, node_url
from atp_service.storage.embedded_cluster import EmbeddedCluster

TIMEOUT_S = 1.0


async def test_the_first_command_of_a_client_knowing_no_map_goes_to_its_node_while_another_hangs(
        cluster: EmbeddedCluster, monkeypatch: pytest.MonkeyPatch) -> None:
    hung, other = cluster.primaries[0], cluster.primaries[1]
    async with aioredis.Redis(host="127.0.0.1", port=other.port) as direct:
        served = await _slots(direct, other.port)
        key = next(k for k in (f"k:{{{i}}}" for i in range(1000)) if key_slot(k.encode()) in served)
        await direct.set(key, "v")
    drawn = random.choice

    def worst(seq: Any) -> Any:  # a draw among the primaries: the hung one
        return next((node for node in seq if getattr(node, "port", None) == hung.port), None) or drawn(seq)

    monkeypatch.setattr(random, "choice", worst)
    assert hung.process is not None
    os.kill(hung.process.pid, signal.SIGSTOP)
    try:
        client = connect_any(node_url(cluster.url, "127.0.0.1", other.port), TIMEOUT_S, cluster=True)
        try:
            assert await client.get(key) == b"v"  # made now
            await aioredis.RedisCluster.aclose(client)  # as redis-py closes it after a CLUSTERDOWN
            assert await client.get(key) == b"v"
        finally:
            await close_any(client)
    finally:
        os.kill(hung.process.pid, signal.SIGCONT)


async def _slots(direct: aioredis.Redis, port: int) -> set[int]:
    """The slots the node at ``port`` serves."""
    served: set[int] = set()
    for start, end, primary, *_ in await direct.execute_command("CLUSTER", "SLOTS"):
        if int(primary[1]) == port:
            served.update(range(int(start), int(end) + 1))
    return served
