"""A private cluster's topology changes (``EmbeddedCluster.take_over``, ``fail_over``, ``rejoin``) waited for until
every running node agrees (``cluster_agreement``), and a killed node started again at the port it had."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import redis

from atp_service.storage.cluster_agreement import ClusterDidNotAgree, NodeState, agreed, restart, wait_agreed
from atp_service.storage.embedded_cluster import EmbeddedCluster
from atp_service.storage.embedded_redis import EmbeddedRedis, RedisDidNotStart
from tests.waiting import until

SLOTS = ((0, 8191, 7001), (8192, 16383, 7002))


def _seen(port: int, epoch: int = 6, owners: tuple[tuple[int, int, int], ...] = SLOTS, state: str = "ok",
          link: str | None = None) -> NodeState:
    return NodeState(port, "master" if link is None else "slave", state, epoch, owners, link)


def test_agreed_is_one_epoch_one_owner_per_slot_every_node_serving_every_replica_linked() -> None:
    assert agreed([_seen(7001), _seen(7002), _seen(7003, link="up")])
    assert not agreed([_seen(7001), _seen(7002, epoch=7)]), "a node has not heard of the newest epoch"
    assert not agreed([_seen(7001), _seen(7002, owners=((0, 16383, 7002),))]), "they disagree on an owner"
    assert not agreed([_seen(7001), _seen(7002, state="fail")]), "a node refuses commands CLUSTERDOWN"
    assert not agreed([_seen(7001), _seen(7003, link="down")]), "a replica not following its primary"
    assert not agreed([_seen(7001), ":7002 no answer (Connection refused)"])
    assert not agreed([_seen(7001, owners=SLOTS[:1])]), "slots no node serves"
    assert not agreed([])


def test_a_wait_past_its_bound_says_what_each_node_saw(redis_cluster: EmbeddedCluster) -> None:
    with pytest.raises(ClusterDidNotAgree, match="not the impossible within 0s: :") as raised:
        wait_agreed(redis_cluster.nodes, "the impossible", lambda _: False, timeout_s=0)
    for node in redis_cluster.nodes:
        assert f":{node.port} " in str(raised.value)
    assert "epoch" in str(raised.value) and "state ok" in str(raised.value)


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[EmbeddedCluster]:
    """A primary and its replica: a cluster of their own, as the tests kill a node."""
    with EmbeddedCluster(tmp_path / "c", primaries=1, replicas=1, node_timeout_ms=1000, sync_delay_s=0) as formed:
        yield formed


def _refusals(node: EmbeddedRedis) -> int:
    """Starts of ``node`` refused a port so far, as its log says."""
    return (node.data_dir / "redis.log").read_bytes().count(b"Address already in use")


@pytest.mark.parametrize("which", ["port", "bus port"])
async def test_a_killed_node_starts_again_at_its_port_once_another_process_lets_it_go(
        pair: EmbeddedCluster, which: str) -> None:
    """A killed node's port (or cluster bus port) may be taken a while by another process — a connection the
    kernel gave it as its local port: the start is tried again there, not given up at the first refusal."""
    (replica,) = pair.replicas
    port = replica.port if which == "port" else pair._bus_ports[replica.data_dir]
    replica.kill()
    refused = _refusals(replica)
    with ThreadPoolExecutor(1) as pool, socket.socket() as squatter:
        # Beside the node's connections the kill left in TIME_WAIT at that port, as redis-server binds.
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        back = pool.submit(pair.rejoin, replica)
        await until(lambda: _refusals(replica) > refused or back.done(), "the start refused the port taken", 30)
        squatter.close()
        back.result()
    with redis.Redis(host="127.0.0.1", port=replica.port) as node:
        assert node.info("replication")["master_link_status"] == "up"


def test_a_port_still_taken_past_the_bound_is_named(pair: EmbeddedCluster) -> None:
    (replica,) = pair.replicas
    bus = pair._bus_ports[replica.data_dir]
    replica.kill()
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", replica.port))
        squatter.listen()
        with pytest.raises(RedisDidNotStart, match=f"could not listen again on 127.0.0.1:{replica.port} "
                                                   rf"\(cluster bus port {bus}\): still taken"):
            restart(replica, bus, timeout_s=0)


def test_a_takeover_returns_once_every_node_agrees_the_replica_serves_the_slots(pair: EmbeddedCluster) -> None:
    """Each takeover is agreed by every node before the next: its new epoch known to all, no collision."""
    (primary,), (replica,) = pair.primaries, pair.replicas
    for promoted in (replica, primary, replica):
        pair.take_over(promoted)
        seen = wait_agreed(pair.nodes, "agreed", timeout_s=0)
        assert {port for *_, port in seen.owners} == {promoted.port}
