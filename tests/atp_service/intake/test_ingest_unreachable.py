"""The input streams' reader on a Redis Cluster none of whose nodes answers: the cluster client
raises ``RedisClusterException``, which is no ``RedisError``. The reader waits and reads again; it
must not end (nothing would read the streams until a restart, and nothing would say so)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from redis.exceptions import RedisClusterException

from atp_service.config import IngestSettings
from atp_service.intake.ingest import StreamIngestor
from reservation import Limits


class Unreachable:
    """A cluster client whose slot map query found no node, then one that answers with nothing."""

    def __init__(self) -> None:
        self.reads = 0

    def set_response_callback(self, *_: Any) -> None:
        pass

    async def execute_command(self, *_: Any) -> Any:
        self.reads += 1
        if self.reads <= 2:
            raise RedisClusterException("Redis Cluster cannot be connected. Please provide at least one reachable node")
        await asyncio.sleep(0.01)
        return []


async def test_the_reader_waits_out_a_cluster_no_node_of_which_answers() -> None:
    settings = IngestSettings(input_streams=("in",), consumer_group="g", consumer_name="c", ingest_count=10,
                              ingest_inflight=1, ingest_block_ms=10, claim_idle_ms=60_000, dead_letter_stream="dlq",
                              side_stream_maxlen=100, limits=Limits())
    client = Unreachable()
    ingestor = StreamIngestor(client, SimpleNamespace(metrics=None), settings, None)  # type: ignore[arg-type]
    task = asyncio.get_running_loop().create_task(ingestor._run())
    try:
        for _ in range(200):
            if client.reads > 2 or task.done():
                break
            await asyncio.sleep(0.01)
        assert not task.done(), f"the reader ended: {task.exception()!r}"
        assert client.reads > 2, "it read again once the cluster answered"
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
