"""The service's Redis Cluster client (``nodes.connect_any``) on a real Redis Cluster: it never
retries a command on its own, as the single-node client does not. redis-py's cluster client sends
a command that timed out again, up to ten times by default: an append whose first try only waited
(a primary stalled past the timeout) landed as many times as it was sent — a dead letter or a
channel feed entry written twice — and a call the service bounds by ``redis_timeout_s`` took up
to eleven times as long before its caller heard of the fault."""

from __future__ import annotations

import asyncio
import os
import signal

import redis
from redis.exceptions import TimeoutError as RedisTimeout

from atp_service.storage.embedded_cluster import EmbeddedCluster
from atp_service.storage.nodes import connect_any

STREAM = "t:cluster-client:{dead}"
STALL_S = 1.2
"""How long the primary is stopped: past the client's timeout, short of the cluster's node timeout."""


async def test_a_command_that_timed_out_is_not_sent_again(redis_cluster: EmbeddedCluster, cluster_url: str) -> None:
    client = connect_any(cluster_url, 0.3, cluster=True)
    try:
        await client.delete(STREAM)
        address = client.get_node_from_key(STREAM)
        primary = next(node for node in redis_cluster.primaries if node.port == address.port)
        assert primary.process is not None
        pid = primary.process.pid
        os.kill(pid, signal.SIGSTOP)  # a stalled primary: the kernel still takes connections and bytes
        resumed = asyncio.get_running_loop().call_later(STALL_S, os.kill, pid, signal.SIGCONT)
        try:
            await client.xadd(STREAM, {"reason": "dead letter"})
            timed_out = False
        except RedisTimeout:
            timed_out = True
        finally:
            resumed.cancel()
            os.kill(pid, signal.SIGCONT)
        with redis.Redis.from_url(primary.url) as node:  # after every try buffered ran
            landed = node.xlen(STREAM)
        assert timed_out and landed == 1, f"timed out: {timed_out}; the append landed {landed} times"
    finally:
        await client.aclose()
