"""Watches cancelled by their callers while they wait for the desk to settle a write in doubt (C4), against a real
primary, its replica and the real service: ``redis_wait_replicas`` 1 and the replica gone, the desk's write is on
the primary unconfirmed and its settle waits. Each watch found the entry and waits (``_until_settled``); cancelled
there, over and over, none keeps its place among ``max_watchers`` nor its wait on the desk's confirmations."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest

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
LIMIT = 3
ROUNDS = 10


async def test_watches_cancelled_while_waiting_on_a_write_in_doubt_give_their_places_back_C4(
        primary_and_replica: tuple[EmbeddedRedis, EmbeddedRedis], tmp_path: Path) -> None:
    primary, replica = primary_and_replica
    clock = ManualClock(T)
    config = make_config(redis_wait_replicas=1, redis_wait_timeout_ms=100, redis_timeout_s=1.0, input_streams=(),
                         max_watchers=LIMIT, estate=write_estate(tmp_path, one_dc_market(THROTTLE_MS, 1000.0)))
    service = AtpService(config, primary.url, clock=clock)
    await service.start()
    client = AtpClient(f"127.0.0.1:{service.port}", timeout_s=5.0)
    try:
        assert service.channels is not None
        desk, feed = service.channels, service.channels.feeds["market"]
        watchers = service._servicer._watchers
        await client.record_events([fact("c1", "COUNT", "sku-a", "dc-1", 40, T)])
        await until(lambda: feed.published_version == V0 + 1 and not feed.in_flight, "the baseline published", 30)
        await client.record_events([fact("s1", "SALE", "sku-a", "dc-1", 10, T + 1)])
        await until(lambda: feed.pending, "the change waiting for its throttle interval", 30)
        replica.stop()
        clock.advance(THROTTLE_MS)
        desk.poke()  # its write lands on the primary, unconfirmed: in doubt, settled once the replica is back
        await until(lambda: feed.in_flight, "the change being written", 30)

        def waiting() -> int:
            return len(desk.confirmations.next()._waiters or ())  # watches waiting for the desk to settle

        for n in range(ROUNDS):
            calls = [client.stub.WatchAvailability(pb.WatchAvailabilityRequest(channel="market", since_version=V0 + 1))
                     for _ in range(LIMIT)]
            await until(lambda: waiting() == LIMIT and watchers.open == LIMIT, f"round {n}: every watch waiting", 30)
            assert feed.in_flight and feed.published_version == V0 + 1
            for call in calls:
                call.cancel()
            await until(lambda: watchers.open == 0 and waiting() == 0, f"round {n}: every place given back", 20)
        replica.start()
        _until_in_sync(replica)
        calls = [client.stub.WatchAvailability(pb.WatchAvailabilityRequest(channel="market", since_version=V0 + 1))
                 for _ in range(LIMIT)]
        for call in calls:  # the limit, exactly; each told the change once it is settled
            message = await asyncio.wait_for(call.read(), 30)
            assert message.kind == pb.WatchAvailabilityResponse.KIND_CHANGES and message.version == V0 + 2
        refused = client.stub.WatchAvailability(pb.WatchAvailabilityRequest(channel="market"))
        with pytest.raises(grpc.aio.AioRpcError) as ended:
            await refused.read()
        assert ended.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        for call in calls:
            call.cancel()
    finally:
        await client.close()
        await service.stop(grace_s=0.1)
