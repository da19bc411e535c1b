"""What ``/metrics`` says of a shard that cannot take its mail (real Redis, the real service and its
metrics endpoint): ``atp_shard_mailbox_depth`` (alert ATPShardMailboxDeep) counts the calls waiting
whenever it is scraped, not what waited when the shard last took a batch."""

from __future__ import annotations

import asyncio
import os
import signal
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_service.storage.embedded_redis import EmbeddedRedis
from tests.atp_service.edge.test_api import receipt
from tests.conftest import ServiceFactory, services_on
from tests.waiting import until

WAITING = 12


def mailbox_depth(port: int) -> float:
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    (value,) = [sample.value for family in text_string_to_metric_families(body) for sample in family.samples
                if sample.name == "atp_shard_mailbox_depth" and sample.labels == {"shard": "0"}]
    return value


async def test_the_mailbox_depth_counts_the_calls_waiting_behind_a_write_redis_does_not_answer(
        tmp_path: Path) -> None:
    """One shard, one log entry in flight at a time: Redis stopped (it takes connections and answers
    nothing), the first Reserve's append hangs and every later one waits in the mailbox while the
    actor waits on that write. The gauge was set only as the actor took a batch, so it said 0 for
    as long as the write hung, however many calls piled up behind it."""
    with EmbeddedRedis(tmp_path / "redis") as server:
        async with services_on(server.url, redis_timeout_s=60) as start:
            await _calls_behind_a_hung_write(server, start)


async def _calls_behind_a_hung_write(server: EmbeddedRedis, start: ServiceFactory) -> None:
    service, client = await start(shards=1, pipeline_depth=1, metrics_port=0)
    await client.record_events([receipt("in", "A", "S1", 100)])
    assert service.engine is not None and server.process is not None
    actor = service.engine.actors[0]

    def waiting() -> int:
        return len(actor._mailbox) + len(actor._set_aside)

    os.kill(server.process.pid, signal.SIGSTOP)
    try:
        first = asyncio.ensure_future(client.reserve("r0", [("A", "S1", 1)]))
        await until(lambda: actor._inflight, "r0's append sent, unanswered")
        later = [asyncio.ensure_future(client.reserve(f"r{n}", [("A", "S1", 1)])) for n in range(1, WAITING + 1)]
        await until(lambda: waiting() >= WAITING, "the later calls waiting")
        assert actor._inflight, "still stuck on r0's write"
        # The scrape runs in the endpoint's thread while this (the loop's) waits on it: nothing
        # changes meanwhile. A maintenance request may wait beside the calls: it counts too.
        assert mailbox_depth(service.metrics_port) == waiting() >= WAITING
    finally:
        os.kill(server.process.pid, signal.SIGCONT)
    answers = await asyncio.gather(first, *later)
    assert all(answer.state == pb.RESERVATION_STATE_HELD for answer in answers)
    await until(lambda: mailbox_depth(service.metrics_port) == 0, "the gauge back to 0: nothing waits")
