"""WatchAvailability while the desk's write is in doubt (C4), against a real primary, its replica and
the real service: ``redis_wait_replicas`` 1 and the replica gone, the write lands on the primary
unconfirmed and the desk's settle waits for the replica (its fence is not confirmed either). The
watch holds the entry it found until the settle, and reads the stream again only then."""

from __future__ import annotations

import asyncio
from pathlib import Path

import redis

from atp_client import AtpClient
from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_service import AtpService, EmbeddedRedis, ManualClock
from atp_service.channels.feeds import VERSIONS_PER_MS
from tests.atp_service.channel_helpers import fact, one_dc_market, write_estate
from tests.atp_service.storage.test_replicated_writes import _until_in_sync, primary_and_replica
from tests.conftest import test_config as make_config
from tests.waiting import until

__all__ = ["primary_and_replica"]  # the fixture, used by name
T = 1_700_000_000_000
V0 = T * VERSIONS_PER_MS  # the start marker's, the run's first version: its updates follow on from it
"""The version before the first this start hands out (C3: a start's versions begin at its clock's floor)."""
THROTTLE_MS = 60_000
FENCES_FAILED = 8
"""Tries of the settle's fence that fail before the replica comes back (its backoff: about 5 s)."""


def _reads(port: int) -> int:
    """XREAD calls the primary has run: the watch's reads of the channel stream (no input streams here)."""
    with redis.Redis(host="127.0.0.1", port=port) as node:
        return int(node.info("commandstats").get("cmdstat_xread", {}).get("calls", 0))


async def test_a_watch_waiting_on_a_write_in_doubt_reads_the_stream_again_only_once_the_desk_settled_it_C4(
        primary_and_replica: tuple[EmbeddedRedis, EmbeddedRedis], tmp_path: Path) -> None:
    """Each watch read its channel's unconfirmed entries again every second for as long as the settle
    waited on the replica, ``watch_batch`` entries decoded a read: with ``max_watchers`` watches, more
    than the event loop can do in a second — every call of the service slowed or shed meanwhile."""
    primary, replica = primary_and_replica
    clock = ManualClock(T)
    config = make_config(redis_wait_replicas=1, redis_wait_timeout_ms=100, redis_timeout_s=1.0, input_streams=(),
                         estate=write_estate(tmp_path, one_dc_market(THROTTLE_MS, 1000.0)))
    service = AtpService(config, primary.url, clock=clock)
    await service.start()
    client = AtpClient(f"127.0.0.1:{service.port}", timeout_s=5.0)
    try:
        assert service.channels is not None
        desk, feed = service.channels, service.channels.feeds["market"]
        await client.record_events([fact("c1", "COUNT", "sku-a", "dc-1", 40, T)])
        await until(lambda: feed.published_version == V0 + 1 and not feed.in_flight, "the baseline published", 30)
        await client.record_events([fact("s1", "SALE", "sku-a", "dc-1", 10, T + 1)])  # durable: the replica is up
        await until(lambda: feed.pending, "the change waiting for its throttle interval", 30)
        call = client.stub.WatchAvailability(pb.WatchAvailabilityRequest(channel="market"))
        failures = desk.metrics.write_failures
        before = sum(s.value for m in failures.collect() for s in m.samples if s.name.endswith("_total"))
        replica.stop()
        clock.advance(THROTTLE_MS)
        desk.poke()  # its write lands on the primary, unconfirmed: in doubt, settled once the replica is back
        await until(lambda: feed.in_flight, "the change being written", 30)
        reads = _reads(primary.port)
        await until(lambda: sum(s.value for m in failures.collect() for s in m.samples if s.name.endswith("_total"))
                    >= before + FENCES_FAILED, "the settle's fence failing while the replica is away", 60)
        assert feed.in_flight and feed.published_version == V0 + 1, "nothing confirmed meanwhile"
        # At most the read that found the entry: nothing the desk confirmed or settled since.
        assert _reads(primary.port) - reads <= 1
        replica.start()
        _until_in_sync(replica)
        message = await asyncio.wait_for(call.read(), 30)  # settled: landed, published, and sent
        assert message.kind == pb.WatchAvailabilityResponse.KIND_CHANGES and message.version == V0 + 2
        assert [(u.sku, u.quantity) for u in message.updates] == [("sku-a", 30)]
        call.cancel()
    finally:
        await client.close()
        await service.stop(grace_s=0.1)
