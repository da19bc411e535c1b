"""A real Redis Cluster on loopback (``EmbeddedCluster``): formed, routed by redis-py's cluster client,
and the constraint the service's scripts must meet there — every key of one script in one slot."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from redis.cluster import RedisCluster

from atp_client import AtpClient
from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_service.storage.embedded_cluster import EmbeddedCluster
from atp_service.storage.embedded_redis import EmbeddedRedis, RedisDidNotStart
from tests.atp_service.edge.test_api import receipt
from tests.waiting import FAST_RECONNECT_S

TWO_KEYS = "return redis.call('SET', KEYS[1], ARGV[1]) and redis.call('SET', KEYS[2], ARGV[1])"


@pytest.fixture
def cluster(redis_cluster: EmbeddedCluster, cluster_url: str) -> EmbeddedCluster:
    return redis_cluster


@pytest.fixture
def client(cluster: EmbeddedCluster) -> Iterator[RedisCluster]:
    with RedisCluster.from_url(cluster.url) as c:
        yield c


def test_every_slot_is_served_and_every_primary_owns_a_share(cluster: EmbeddedCluster, client: RedisCluster) -> None:
    info = client.cluster_info()
    assert info["cluster_state"] == "ok" and int(info["cluster_slots_assigned"]) == 16384
    assert int(info["cluster_known_nodes"]) == 6
    owners = {client.get_node_from_key(f"k{i}").port for i in range(200)}
    assert owners == {node.port for node in cluster.primaries}
    nodes = client.cluster_nodes().values()
    primary_ids = {node["node_id"] for node in nodes if "master" in node["flags"]}
    assert sorted(node["master_id"] in primary_ids for node in nodes if "slave" in node["flags"]) == [True] * 3


def test_a_script_over_one_hash_tag_runs_and_one_over_two_slots_is_refused(client: RedisCluster) -> None:
    assert client.keyslot("atp:{g3}:log") == client.keyslot("atp:{g3}:fence") != client.keyslot("atp:{g4}:log")
    client.eval(TWO_KEYS, 2, "atp:{g3}:log", "atp:{g3}:fence", "1")
    assert client.get("atp:{g3}:fence") == b"1"
    with pytest.raises(redis.RedisClusterException, match="same key slot"):  # the client refuses first
        client.eval(TWO_KEYS, 2, "atp:{g3}:log", "atp:{g4}:log", "1")
    owner = client.get_node_from_key("atp:{g3}:log")
    with redis.Redis(host=owner.host, port=owner.port) as direct, pytest.raises(redis.ResponseError, match="same slot"):
        direct.eval(TWO_KEYS, 2, "atp:{g3}:log", "atp:{g4}:log", "1")  # and so does the server
    assert client.get("atp:{g4}:log") is None


def test_a_data_directory_a_cluster_was_formed_in_is_refused(cluster: EmbeddedCluster) -> None:
    again = EmbeddedCluster(cluster.data_dir, primaries=3, replicas=1)
    with pytest.raises(RedisDidNotStart, match=r"formed in .* before"):
        again.start()
    assert all(node.process is None for node in again.nodes)


def test_no_cluster_of_no_primaries(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="primaries"):
        EmbeddedCluster(tmp_path, primaries=0)


async def test_make_cluster_serves_on_the_cluster_and_stops_it_all(tmp_path: Path) -> None:
    """``make cluster``: the cluster, then the service on it; SIGTERM stops the service, then Redis."""
    port = consecutive_free_ports(1)  # below the ephemeral range: no cluster node can take it first
    proc = _make_cluster(tmp_path / "c", port)
    try:
        async with AtpClient(f"127.0.0.1:{port}", timeout_s=10, reconnect_max_s=FAST_RECONNECT_S) as client:
            await client.wait_ready(60)
            await client.record_events([receipt(f"s-{sku}", sku, "DC", 5) for sku in ("A", "B", "C", "D")])
            held = await client.reserve("o", [(sku, "DC", 1) for sku in ("A", "B", "C", "D")], ttl_seconds=60)
            assert held.state == pb.RESERVATION_STATE_HELD
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 60) == 0
    except BaseException:
        _stop_all(proc, tmp_path / "c")  # a failed test leaves nothing running; a passing one checks below
        raise
    assert "Redis Cluster ready" in (tmp_path / "c.log").read_text()
    assert not _redis_left(tmp_path / "c")


def _make_cluster(data_dir: Path, port: int, *extra: str, **env_extra: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "ATP_PORT": str(port), "ATP_METRICS_PORT": "-1", "ATP_DEMO": "false", "ATP_AUTH": "off",
           **env_extra}
    log = data_dir.with_suffix(".log").open("wb")  # a file, not a pipe nobody reads until the end
    return subprocess.Popen([sys.executable, "-m", "atp_service.storage.embedded_cluster", "--data-dir",
                             str(data_dir), "--sync-delay-s", "0", "--serve", *extra], env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)


async def test_make_cluster_with_processes_runs_them_leased_and_stops_once_none_is_left(tmp_path: Path) -> None:
    """``make cluster PROCESSES=2``: two leased processes on consecutive ports, each owning a share of
    the groups; when both die, the script says so and stops the cluster (status 1)."""
    port = consecutive_free_ports(2)
    proc = _make_cluster(tmp_path / "c", port, "--processes", "2", ATP_LEASE_MS="1000")
    log = tmp_path / "c.log"
    try:
        addresses = [f"127.0.0.1:{port}", f"127.0.0.1:{port + 1}"]
        async with (AtpClient(addresses[0], timeout_s=10, reconnect_max_s=FAST_RECONNECT_S) as first,
                    AtpClient(addresses[1], timeout_s=10, reconnect_max_s=FAST_RECONNECT_S) as second):
            await asyncio.gather(first.wait_ready(60), second.wait_ready(60))
            for _ in range(600):
                table = await first.stub.GetRouting(pb.GetRoutingRequest())
                if {route.address for route in table.groups} == set(addresses):
                    break
                await asyncio.sleep(0.05)
            assert {route.address for route in table.groups} == set(addresses)
        pids = [int(line.rsplit("pid ", 1)[1].rstrip(")")) for line in log.read_text().splitlines()
                if line.startswith("service process ") and "(pid " in line]
        assert len(pids) == 2
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        assert await asyncio.to_thread(proc.wait, 60) == 1
    except BaseException:
        _stop_all(proc, tmp_path / "c")  # a failed test leaves nothing running; a passing one checks below
        raise
    out = log.read_text()
    assert out.count("exited with status -9") == 2 and "no service process is left" in out, out[-2000:]
    assert not _redis_left(tmp_path / "c")


def consecutive_free_ports(n: int) -> int:
    """The first of ``n`` free consecutive ports, below the kernel's ephemeral range: the cluster's
    nodes (and every other socket bound to port 0) cannot take the second while it waits to be used."""
    rng = random.Random()
    for _ in range(200):
        first = rng.randrange(20_000, 32_000 - n)
        try:
            for port in range(first, first + n):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port))
        except OSError:
            continue
        return first
    raise RuntimeError(f"no {n} free consecutive ports below 32000")


def _stop_all(proc: subprocess.Popen[bytes], data_dir: Path) -> None:
    """Whatever the test did: the script, and the nodes it started (they run in sessions of their own)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    for pid in [int(p.read_text()) for p in data_dir.glob("*/redis-server.pid") if p.read_text().strip()]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _redis_left(data_dir: Path) -> list[int]:
    """The redis-server processes of ``data_dir``'s nodes still running."""
    pids = [int(p.read_text()) for p in data_dir.glob("*/redis-server.pid")]
    assert pids, "the nodes wrote their pid files"
    return [pid for pid in pids if Path(f"/proc/{pid}").exists()]


def test_a_node_whose_picked_port_another_process_took_starts_on_fresh_ports(tmp_path: Path) -> None:
    """A free port is free only when it is picked: another process (a parallel test, a service) took a
    node's cluster bus port before redis-server bound it, and the whole cluster failed to start —
    every test sharing it with it. The node is made again on fresh ports."""
    cluster = EmbeddedCluster(tmp_path / "c", primaries=3)
    first = cluster.primaries[0]
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", cluster._bus_ports[first.data_dir]))
        squatter.listen()
        with cluster:
            assert cluster.primaries[0] is not first
            with RedisCluster.from_url(cluster.url) as client:
                client.set("k", "v")
                assert client.get("k") == b"v"


def test_a_data_dir_whose_cluster_was_formed_on_fresh_ports_is_refused_again(tmp_path: Path) -> None:
    """A node made again on fresh ports (its port taken) lives in a directory of another name: a
    later start on the same data directory looked for ``nodes.conf`` only where its own nodes go,
    and formed a new cluster beside the one holding the data."""
    cluster = EmbeddedCluster(tmp_path / "c", primaries=1)
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", cluster.primaries[0].port))
        squatter.listen()
        with cluster:
            assert cluster.primaries[0].data_dir.name != "p0"
    with pytest.raises(RedisDidNotStart, match="a cluster was formed in"):
        EmbeddedCluster(tmp_path / "c", primaries=1).start()


def _handshakes(node: EmbeddedRedis) -> int:
    with redis.Redis(port=node.port) as client:
        return sum(1 for seen in client.cluster("NODES").values() if "handshake" in seen["flags"])


def _until(done: Callable[[], bool], what: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not done():
        assert time.monotonic() < deadline, f"not {what} within {timeout_s}s"
        time.sleep(0.02)


class FirstStalledAtTheMeeting(EmbeddedCluster):
    """The first node stopped (SIGSTOP: a busy host) while the others meet it, until the meeting node
    has dropped its handshake (unanswered for ``cluster-node-timeout``)."""

    stalled = False

    def _meet_first(self) -> None:
        if self.stalled:
            return super()._meet_first()
        self.stalled = True
        first = self.primaries[0].process
        assert first is not None
        os.kill(first.pid, signal.SIGSTOP)
        try:
            super()._meet_first()
            meeting = self.primaries[1]
            _until(lambda: _handshakes(meeting) == 1, "the handshake begun")
            _until(lambda: _handshakes(meeting) == 0, "the handshake dropped")
        finally:
            os.kill(first.pid, signal.SIGCONT)


def test_a_meeting_dropped_while_the_first_node_was_stalled_is_made_again(tmp_path: Path) -> None:
    """A node drops a meeting its peer did not answer within ``cluster-node-timeout`` and never tries it
    again: on a busy host the cluster then never formed ("not meet within 30.0s"). A node that does
    not know every other one yet meets the first again."""
    with FirstStalledAtTheMeeting(tmp_path / "c", primaries=2, node_timeout_ms=500) as cluster:
        assert cluster.stalled
        with RedisCluster.from_url(cluster.url) as client:
            client.set("k", "v")
            assert client.get("k") == b"v"
