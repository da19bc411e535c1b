"""A write sent with ``WAIT`` to a node that is now a replica (a killed primary back as one, while the
slot map still names it): the node answers the script MOVED and the ``WAIT`` an error. The ``WAIT``
error was raised for the whole round trip, so the MOVED was never seen, the slot map never read
again, and every settle of an append in doubt went back to the replica for as long as nothing else
refreshed the map (seen: a cluster failover test stuck 60 s). Real Redis Cluster."""

from __future__ import annotations

import redis
from redis.exceptions import AskError

from atp_service.storage.embedded_cluster import EmbeddedCluster
from atp_service.storage.nodes import Call, Script, open_nodes


def _key_of_its_primary(replica_port: int) -> str:
    """A key in a slot the replica's primary serves."""
    with redis.Redis(host="127.0.0.1", port=replica_port, decode_responses=True) as r:
        nodes = r.execute_command("CLUSTER NODES").values()  # redis-py parses it: one dict a node
        primary = next(node["master_id"] for node in nodes if "myself" in node["flags"])
        slot = int(next(node for node in nodes if node["node_id"] == primary)["slots"][0][0])
        return next(k for k in (f"k{i}" for i in range(200_000)) if r.execute_command("CLUSTER KEYSLOT", k) == slot)


async def test_a_write_with_wait_reaching_a_replica_reads_the_slot_map_again(
        redis_cluster: EmbeddedCluster, cluster_url: str) -> None:
    replica = redis_cluster.replicas[0]
    key = _key_of_its_primary(replica.port)
    nodes = open_nodes(cluster_url, 2.0, cluster=True, wait_replicas=1, wait_timeout_ms=200)
    try:
        await nodes.reader.initialize()
        lane = nodes._lane(f"127.0.0.1:{replica.port}")  # as a slot map naming the replica would
        (reply,) = await nodes._run_on(lane, [Call(Script("return redis.call('SET', KEYS[1], 1)"), [key], [])])
        assert isinstance(reply, AskError), reply  # MOVED (a subclass): the call's own answer
        assert nodes._suspect, "the slot map is read again before the next call"
    finally:
        await nodes.aclose()
