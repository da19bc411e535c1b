"""A private Redis Cluster (``embedded_cluster``) after its topology changed — a takeover, a failover, a node
killed and started again — waited for until every running node agrees, and a killed node started again at
its old port.

Agreed: every running node answers, serves (``cluster_state:ok``), reports the same current epoch and the
same primary for every slot, and every replica's link to its primary is up. A takeover's new epoch and slot
ownership reach the other nodes by gossip: a second takeover begun before every node had heard of the first
could claim its slots at an epoch another node also claimed, and the collision's settling hands the slots
back; a node that has not yet seen a promoted replica reachable refuses every command ``CLUSTERDOWN``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import redis

from .embedded_redis import EmbeddedRedis, RedisDidNotStart

AGREE_TIMEOUT_S = 60.0
"""The bound of a wait for the cluster to agree, and of a restart waiting for its port: for a broken run only."""
PORT_AGAIN_S = 0.2
"""How often a restart whose port is still taken (another process's connection) tries again."""


class ClusterDidNotAgree(RuntimeError):
    """The running nodes did not agree within the bound; the message says what each saw."""


@dataclass(frozen=True, slots=True)
class NodeState:
    """What one node says of the cluster."""

    port: int
    role: str
    state: str
    """``cluster_state``: ``ok`` or ``fail`` (it refuses commands ``CLUSTERDOWN``)."""
    epoch: int
    """``cluster_current_epoch``."""
    owners: tuple[tuple[int, int, int], ...]
    """First slot, last slot and the port of the primary serving them, in slot order."""
    link: str | None
    """A replica's ``master_link_status`` (None: a primary)."""

    @property
    def covered(self) -> bool:
        return sum(last - first + 1 for first, last, _ in self.owners) == 16384

    def __str__(self) -> str:
        slots = ",".join(f"{first}-{last}@{port}" for first, last, port in self.owners)
        link = "" if self.link is None else f" link {self.link}"
        return f":{self.port} {self.role}{link} state {self.state} epoch {self.epoch} slots {slots or 'none'}"


def state_of(node: EmbeddedRedis) -> NodeState | str:
    """``node``'s view, or why it gave none (it did not answer)."""
    try:
        with redis.Redis(host="127.0.0.1", port=node.port, socket_timeout=2.0) as client:
            info = client.cluster("INFO")
            ranges = client.execute_command("CLUSTER", "SLOTS")
            replication = client.info("replication")
    except (redis.RedisError, OSError) as exc:
        return f":{node.port} no answer ({exc})"
    role = str(replication.get("role"))
    return NodeState(node.port, role, str(info["cluster_state"]), int(info["cluster_current_epoch"]),
                     tuple(sorted((int(r[0]), int(r[1]), int(r[2][1])) for r in ranges)),
                     str(replication.get("master_link_status")) if role == "slave" else None)


def agreed(states: Sequence[NodeState | str]) -> bool:
    """Every node answered and serves, all at one current epoch and one primary per slot, every slot held,
    every replica's link up."""
    views = [s for s in states if isinstance(s, NodeState)]
    return (len(views) == len(states) > 0 and all(v.state == "ok" and v.link in (None, "up") for v in views)
            and len({v.epoch for v in views}) == 1 and len({v.owners for v in views}) == 1 and views[0].covered)


def running(nodes: Sequence[EmbeddedRedis]) -> list[EmbeddedRedis]:
    return [node for node in nodes if node.process is not None and node.process.poll() is None]


def wait_agreed(nodes: Sequence[EmbeddedRedis], what: str, also: Callable[[NodeState], bool] = lambda _: True,
                timeout_s: float = AGREE_TIMEOUT_S) -> NodeState:
    """Until every running node of ``nodes`` agrees (``agreed``) on a view ``also`` accepts (one node's view is
    returned: they are the same but for each node's own role and link); ``ClusterDidNotAgree`` past ``timeout_s``,
    naming ``what`` and each node's view."""
    deadline = time.monotonic() + timeout_s
    while True:
        states = [state_of(node) for node in running(nodes)]
        if agreed(states) and isinstance(first := states[0], NodeState) and also(first):
            return first
        if time.monotonic() > deadline:
            seen = "; ".join(map(str, states)) or "no node running"
            raise ClusterDidNotAgree(f"Redis Cluster: not {what} within {timeout_s:g}s: {seen}")
        time.sleep(0.05)


def restart(node: EmbeddedRedis, bus_port: int, timeout_s: float = AGREE_TIMEOUT_S) -> None:
    """``node`` (killed) started again at its port and cluster bus port: the cluster and every client know it
    there. One of them may still be taken for a while — by another process's connection, which the kernel
    gave it as its local port once the node was gone — and is tried again, until ``timeout_s``; a start
    failing for another reason fails at once."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            node.start()
            return
        except RedisDidNotStart as exc:
            if not node.port_was_taken():
                raise
            if time.monotonic() > deadline:
                raise RedisDidNotStart(
                    f"redis-server could not listen again on 127.0.0.1:{node.port} (cluster bus port {bus_port}): "
                    f"still taken by another process after {timeout_s:g}s ({exc})") from exc
        time.sleep(PORT_AGAIN_S)
