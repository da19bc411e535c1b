"""Liveness across shards (R2, R7, R8): a change across shards never holds a shard that is fine
paused behind another shard's settle. Real Redis behind a proxy that holds the writes, real gRPC.

A coordinator pauses its shards in order; the next shard's pause waits for room in a full mailbox.
That shard's append then fails (in doubt): its waiting messages are refused, and the pause, put
into the room freed, waited there behind the settle — which waits for Redis as long as it takes —
with the first shard paused all that while: every call to it (reads of memory included) ran into
its deadline, its health saying SERVING."""

from __future__ import annotations

import asyncio
import hashlib
import zlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import grpc
import pytest
from grpc_health.v1 import health_pb2

from atp_client import AtpClient
from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_service import AtpService, EmbeddedRedis
from atp_service.engine.shard import ShardActor
from atp_service.storage.scripts import APPEND_SCRIPT, FENCE_SCRIPT
from tests.atp_service.app.test_health_truth import health
from tests.atp_service.edge.test_api import receipt
from tests.atp_service.redis_proxy import HoldingProxy
from tests.atp_service.refusals import said
from tests.conftest import test_config as service_config
from tests.waiting import until

APPEND_SHA = hashlib.sha1(APPEND_SCRIPT.encode()).hexdigest().encode()  # a group commit on the wire
FENCE_SHA = hashlib.sha1(FENCE_SCRIPT.encode()).hexdigest().encode()  # a settle's first write
CALL_S = 20.0
"""The deadline of the calls that must be answered: a bound for a broken run (a shard that never
answers), not a timing. The change across shards waits longer (``PATIENT_S``): given up, it would
let the shard go."""
PATIENT_S = 600.0
MAILBOX = 2
SKU_0, SKU_1 = "D", "A"  # on shards 0 and 1 of two
assert (zlib.crc32(SKU_0.encode()) % 2, zlib.crc32(SKU_1.encode()) % 2) == (0, 1)


@asynccontextmanager
async def _service(redis_server: EmbeddedRedis) -> AsyncIterator[tuple[HoldingProxy, AtpService, AtpClient]]:
    """Two shards of one entry in flight each and a mailbox of two messages, writes through a proxy;
    a held append waits for the test's cue (``redis_timeout_s`` far longer than the test)."""
    proxy = HoldingProxy("127.0.0.1", redis_server.port)
    service = AtpService(service_config(shards=2, pipeline_depth=1, mailbox_size=MAILBOX, redis_timeout_s=60.0,
                                        maintenance_interval_ms=3_600_000), await proxy.start())
    client: AtpClient | None = None
    try:
        await service.start()
        client = AtpClient(f"127.0.0.1:{service.port}", timeout_s=CALL_S)
        yield proxy, service, client
    finally:
        proxy.hold()  # the settle may fence now: the service can stop
        proxy.drop()
        if client is not None:
            await client.close()
        await service.stop(grace_s=0.1)
        await proxy.close()


async def test_a_pause_waiting_for_room_in_a_shard_that_goes_into_doubt_leaves_the_other_shards_answering(
        redis_url: str, redis_server: EmbeddedRedis) -> None:
    async with _service(redis_server) as (proxy, service, client):
        assert service.engine is not None
        first, second = service.engine.actors
        await client.record_events([receipt("r0", SKU_0, "DC", 100), receipt("r1", SKU_1, "DC", 100)])
        held = await client.reserve("held-0", [(SKU_0, "DC", 1)], ttl_seconds=600)
        assert held.state == pb.RESERVATION_STATE_HELD
        patient = AtpClient(f"127.0.0.1:{service.port}", timeout_s=PATIENT_S)
        try:
            across = await _across_waiting_for_room(proxy, client, patient, second)
            # Redis takes no more writes of the shards (a settle's fence included); the held append is lost.
            proxy.hold(APPEND_SHA, FENCE_SHA, reset=True)
            proxy.cut(proxy.held[0])
            await until(lambda: second.in_doubt, "the second shard settling")

            # The first shard had nothing to do with it: it answers (from memory: nothing of it in flight).
            assert (await client.get_reservation("held-0")).state == pb.RESERVATION_STATE_HELD
            assert not first._inflight and not first.in_doubt
            with pytest.raises(grpc.aio.AioRpcError) as refused:  # at once: the second shard decides nothing now
                await across
            assert said(refused.value)[0] == grpc.StatusCode.UNAVAILABLE, refused.value
            assert await health(service.port) == health_pb2.HealthCheckResponse.SERVING  # and the shards answer
        finally:
            await patient.close()


async def _across_waiting_for_room(proxy: HoldingProxy, client: AtpClient, patient: AtpClient,
                                   second: ShardActor) -> asyncio.Future[pb.ReserveResponse]:
    """The second shard's append held, its mailbox full behind it; a Reserve across both shards
    (``patient``'s) has the first paused and waits for room in the second's mailbox."""
    proxy.hold(APPEND_SHA)
    calls = [asyncio.ensure_future(client.reserve("in-flight", [(SKU_1, "DC", 1)], ttl_seconds=600))]
    await until(lambda: len(proxy.held) == 1, "the second shard's append held")
    calls += [asyncio.ensure_future(client.reserve(f"waiting-{n}", [(SKU_1, "DC", 1)], ttl_seconds=600))
              for n in range(MAILBOX + 1)]  # one set aside behind the entry in flight, the rest queued
    await until(second._mailbox.full, "the second shard's mailbox full")
    across = asyncio.ensure_future(patient.reserve("across", [(SKU_0, "DC", 1), (SKU_1, "DC", 1)], ttl_seconds=600))
    await until(lambda: second._mailbox._putters, "the first shard paused, the second's pause waiting for room")
    for call in calls:  # once the append fails: answered UNAVAILABLE, not left to their deadlines
        call.add_done_callback(lambda done: done.exception())
    return across
