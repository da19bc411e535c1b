"""The owner check (``AtpService._check_owner``) after a failover of a Redis Cluster of one primary and its
replica, the service started on it while it was new: Redis names a replica in ``CLUSTER SLOTS`` only once its
primary has heard it holds data, so the reads' client knew the primary alone. The primary killed and its
replica promoted (``CLUSTER FAILOVER TAKEOVER``) lacking the last entries the service acknowledged
(``redis_wait_replicas`` 0), the check must read the promoted replica and stop the shard whose log went back
(R7: never memory ahead of the log).

Defect: the check's reads went to the dead primary alone, for ever (redis-py's client reads the map again from
the nodes its last map named); the check failed each time and said nothing, and an idle shard served what Redis
had lost (GetAvailability, the channel feeds) for as long as nothing wrote to it — only a write's failure had
the map read again with every node seen (``Nodes``). Now a check no node answered has it read so too."""

from __future__ import annotations

import pytest
import redis

from atp_service.storage.embedded_cluster import EmbeddedCluster
from tests.atp_service.conftest import served
from tests.atp_service.edge.test_api import receipt
from tests.atp_service.storage.test_cluster_lone_primary import cluster
from tests.conftest import test_config as make_config
from tests.waiting import until

__all__ = ["cluster"]  # the fixture, used by name

pytestmark = pytest.mark.slow


def _info(port: int) -> dict[str, object]:
    with redis.Redis(host="127.0.0.1", port=port) as client:
        return dict(client.info("replication"))


async def test_the_owner_check_reads_the_promoted_replica_of_a_lone_primary_and_stops_a_shard_it_lacks(
        cluster: EmbeddedCluster) -> None:
    (primary,), (replica,) = cluster.primaries, cluster.replicas
    config = make_config(redis_cluster=True, input_streams=(), shards=2, redis_timeout_s=1.0, owner_check_s=0.1)
    async with served(config, cluster.url, 30.0) as (service, client):
        engine = service.engine
        assert engine is not None
        shard = engine.place("A")
        with redis.Redis(host="127.0.0.1", port=replica.port) as r:
            r.config_set("masteruser", "nobody")  # its link to the primary, once cut, is never made again
            r.config_set("masterauth", "wrong")
            r.client_kill_filter(_type="master")
        await until(lambda: _info(replica.port)["master_link_status"] == "down", "the replica cut off")
        await client.record_events([receipt("stock", "A", "S1", 10)])  # acknowledged by the primary alone
        primary.kill()
        with redis.Redis(host="127.0.0.1", port=replica.port) as r:
            r.execute_command("CLUSTER", "FAILOVER", "TAKEOVER")
            assert not r.exists(engine._log.keys.log(shard)), "the promoted replica lacks the shard's entry"
        await until(lambda: _info(replica.port)["role"] == "master", "the replica promoted")
        await until(lambda: engine.actors[shard].failure is not None, "the shard whose log went back stopped")
