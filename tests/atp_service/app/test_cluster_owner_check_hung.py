"""The owner check's read of every shard's log end (``Engine.check_logs_reach``) on a Redis Cluster one of
whose primaries hangs (SIGSTOP: it takes connections and bytes, answers nothing): each primary's shards
are judged on their own. Redis losing the entries of a shard on a primary that answers (R7) stops that
shard while the other primary hangs, and the check names the shards it could not read, on the node that
did not answer — it does not end with that node's timeout, every shard left unchecked for as long as it
hangs (liveness: a hung primary holds only its own shards)."""

from __future__ import annotations

import logging
import os
import signal

import pytest
import redis.asyncio as aioredis

from atp_service.storage.embedded_cluster import EmbeddedCluster
from tests.atp_service.app.test_cluster_hung_primary import _a_sku_per_shard
from tests.atp_service.conftest import served
from tests.atp_service.edge.test_api import receipt
from tests.conftest import test_config as make_config
from tests.waiting import until

SHARDS = 8


async def test_a_hung_primary_leaves_the_owner_check_of_the_other_primaries_shards_whole(
        cluster: EmbeddedCluster, caplog: pytest.LogCaptureFixture) -> None:
    """The service's own owner check (``AtpService._check_owner``: whether this instance still owns the
    keyspace, then the log ends), every ``owner_check_s``."""
    config = make_config(redis_cluster=True, input_streams=(), shards=SHARDS, redis_timeout_s=1.0, owner_check_s=0.1)
    async with served(config, cluster.url, 30.0) as (service, client):
        engine = service.engine
        assert engine is not None and service.membership is None
        skus = _a_sku_per_shard(engine)
        await client.record_events([receipt(f"stock-{sku}", sku, "S1", 10) for sku in skus.values()])
        nodes = {shard: engine.log_client.get_node_from_key(engine._log.keys.log(shard)) for shard in skus}
        hung = next(node for node in cluster.primaries if node.port == int(nodes[0].port))
        behind = sorted(shard for shard in skus if int(nodes[shard].port) == hung.port)
        lost = next(shard for shard in skus if int(nodes[shard].port) != hung.port)
        assert hung.process is not None
        caplog.set_level(logging.WARNING)
        os.kill(hung.process.pid, signal.SIGSTOP)
        try:
            # Redis lost the log of a shard on a primary that answers (restarted empty): R7, the shard must stop.
            r = aioredis.Redis(host=nodes[lost].host, port=int(nodes[lost].port))
            try:
                assert await r.delete(engine._log.keys.log(lost)) == 1
            finally:
                await r.aclose()
            await until(lambda: engine.actors[lost].failure is not None, "the shard whose log Redis lost stopped")
            assert all(engine.actors[s].failure is None for s in skus if s != lost)
            named = [r for r in caplog.records if getattr(r, "event", "") == "log_end_unread"]
            assert [(r.node, r.shards) for r in named] == [(nodes[0].name, behind)]
            await engine.check_logs_reach()  # the node hangs on: judged without it again, said once while it lasts
            assert len([r for r in caplog.records if getattr(r, "event", "") == "log_end_unread"]) == 1
        finally:
            os.kill(hung.process.pid, signal.SIGCONT)
