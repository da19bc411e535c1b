"""The input streams' reader on a Redis Cluster none of whose nodes answers for a while: the cluster
client raises ``RedisClusterException``, which is no ``RedisError``. The reader waits and reads
again; it must not end (nothing would read the streams until a restart, and nothing would say so)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis.cluster import RedisCluster

from atp_client import AtpClient
from atp_service import AtpService
from atp_service.storage.embedded_cluster import EmbeddedCluster
from tests.atp_service.fact_helpers import F
from tests.conftest import test_config as make_config
from tests.waiting import until

IN = {"input_streams": ("atp:{in}:pos",), "dead_letter_stream": "atp:{in}:dlq",
      "quarantine_stream": "atp:{in}:quarantine"}


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[EmbeddedCluster]:
    """One primary and no replica: stopping it leaves no node that answers."""
    with EmbeddedCluster(tmp_path / "cluster", primaries=1, replicas=0) as formed:
        yield formed


async def test_the_reader_waits_out_a_cluster_no_node_of_which_answers(cluster: EmbeddedCluster) -> None:
    service = AtpService(make_config(redis_cluster=True, redis_timeout_s=0.5, **IN), cluster.url)
    await service.start()
    client = AtpClient(f"127.0.0.1:{service.port}", timeout_s=5.0)
    try:
        assert service.ingestor is not None
        (node,) = cluster.nodes
        reader = service.ingestor._task
        assert reader is not None
        failed_before = _read_failures(service)
        await asyncio.to_thread(node.stop)  # no node answers: every read fails for a while
        # Several reads fail meanwhile: counted (``atp_ingest_read_failures_total``), not slept on — a sleep passed a
        # reader that ended at its first failure wherever that came later than the sleep.
        await until(lambda: reader.done() or _read_failures(service) >= failed_before + 3, "three reads failed")
        assert not reader.done(), "the reader ended while the cluster did not answer"
        await asyncio.to_thread(node.start)
        await asyncio.to_thread(_publish, node.port)
        for _ in range(300):
            if (await client.availability([("A", "S1")]))[0].on_hand == 5:
                break
            await asyncio.sleep(0.05)
        assert (await client.availability([("A", "S1")]))[0].on_hand == 5, "the reader read again"
    finally:
        await client.close()
        await service.stop(grace_s=0.1)


def _read_failures(service: AtpService) -> float:
    return float(service.metrics.intake.ingest_read_failures.collect()[0].samples[0].value)


def _publish(port: int) -> None:
    with RedisCluster(host="127.0.0.1", port=port) as r:
        r.xadd("atp:{in}:pos", F("after", "RECEIPT", "A", "S1", 5, int(time.time() * 1000) - 100).fields())
