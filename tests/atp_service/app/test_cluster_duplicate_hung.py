"""A DUPLICATE is answered only once its shard's log end is read (``intake/duplicates.py``). On a Redis Cluster one of
whose primaries hangs (SIGSTOP: it takes connections and bytes, answers nothing), the duplicates of shards on the
primaries that answer are judged on their own. An input stream's batch that also held a duplicate of a shard on the
hung primary had every duplicate refused UNAVAILABLE: the entries of healthy shards' facts stayed pending, read again
and refused again, for as long as that node hung (liveness: a hung primary holds only its own shards, as with the
owner check's read, ``check_logs_reach``)."""

from __future__ import annotations

import json
import os
import signal

import redis.asyncio as aioredis

from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_service.storage.embedded_cluster import EmbeddedCluster
from tests.atp_service.app.test_cluster_hung_primary import _a_sku_per_shard, _shard_ports
from tests.atp_service.conftest import served
from tests.atp_service.fact_helpers import F
from tests.conftest import test_config as make_config
from tests.waiting import until

SHARDS = 8
STREAM = "atp:{in}:pos"
IN = {"input_streams": (STREAM,), "dead_letter_stream": "atp:{in}:dlq", "quarantine_stream": "atp:{in}:quarantine"}
T = 1_700_000_000_000
BOTH = "for i = 1, #KEYS do redis.call('XADD', KEYS[i], '*', unpack(cjson.decode(ARGV[i]))) end"  # at once: one read


async def test_a_hung_primary_leaves_the_duplicates_of_other_primaries_shards_acknowledged(
        cluster: EmbeddedCluster) -> None:
    config = make_config(redis_cluster=True, shards=SHARDS, redis_timeout_s=1.0, owner_check_s=3600.0, **IN)
    async with served(config, cluster.url, 30.0) as (service, client):
        engine = service.engine
        assert engine is not None
        skus = _a_sku_per_shard(engine)
        port = _shard_ports(engine, skus)
        at = engine.log_client.get_node_from_key(STREAM)
        hung = next(n for n in cluster.primaries if n.port != int(at.port) and n.port in port.values())
        away = next(shard for shard in skus if port[shard] == hung.port)
        well = next(shard for shard in skus if port[shard] != hung.port)
        facts = [F(f"e-{skus[s]}", "RECEIPT", skus[s], "S1", 10, T) for s in (away, well)]
        assert [r.outcome for r in await client.record_events([f.pb() for f in facts])] == [
            pb.FACT_OUTCOME_APPLIED] * 2
        r = aioredis.Redis(host=at.host, port=int(at.port))
        assert hung.process is not None
        os.kill(hung.process.pid, signal.SIGSTOP)
        try:  # sent again on the stream, both in one batch: duplicates, the first of a shard on the hung node
            await r.eval(BOTH, 2, STREAM, STREAM, *(json.dumps([x for kv in f.fields().items() for x in kv])
                                                    for f in facts))  # type: ignore[misc]

            async def only_the_hung_ones_pending() -> bool:
                (group,) = await r.xinfo_groups(STREAM)  # type: ignore[misc]
                return group["lag"] == 0 and group["pending"] == 1

            await until(only_the_hung_ones_pending, "the duplicate of a shard whose node answers acknowledged")
        finally:
            os.kill(hung.process.pid, signal.SIGCONT)
            await r.aclose()
