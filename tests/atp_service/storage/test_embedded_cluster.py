"""A real Redis Cluster on loopback (``EmbeddedCluster``): formed, routed by redis-py's cluster client,
and the constraint the service's scripts must meet there — every key of one script in one slot."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from redis.cluster import RedisCluster

from atp_service.storage.embedded_cluster import EmbeddedCluster
from atp_service.storage.embedded_redis import RedisDidNotStart

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
