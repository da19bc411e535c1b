"""R7 over real Redis and gRPC: an append whose reply was lost lands later, after the shard settled it.

The service talks to Redis through a proxy that holds the append script's bytes after the service
gave up on them (what a delayed TCP packet does) and delivers them on demand: the late landing
must be refused (the settle fenced the shard first), and what was acknowledged must be exactly
what a restart finds.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import grpc
import pytest

from atp_client import AtpClient
from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_service import AtpService, EmbeddedRedis
from atp_service.storage.scripts import APPEND_SCRIPT
from tests.atp_service.edge.test_api import receipt
from tests.atp_service.redis_proxy import HoldingProxy
from tests.atp_service.refusals import said
from tests.conftest import test_config as service_config
from tests.waiting import answered, until

APPEND_SHA = hashlib.sha1(APPEND_SCRIPT.encode()).hexdigest().encode()  # a group commit on the wire


@asynccontextmanager
async def _service(url: str) -> AsyncIterator[tuple[AtpService, AtpClient]]:
    service = AtpService(service_config(shards=1, redis_timeout_s=0.5), url)
    await service.start()
    client = AtpClient(f"127.0.0.1:{service.port}", timeout_s=10)
    try:
        yield service, client
    finally:
        await client.close()
        await service.stop(grace_s=0.1)


async def reserve_once_settled(client: AtpClient, rid: str,
                               lines: tuple[tuple[str, str, int], ...] = (("A", "DC", 2),)) -> pb.ReserveResponse:
    """A shard in doubt refuses new work until its settle is done: a maintenance pass (a timer) and
    a read of Redis away. Tried again with a pause and within a bound (``answered``): tried at once, for
    ever, the refused calls kept a core busy beside the settle they waited for, and a settle that never
    came hung the test instead of failing it by name."""
    return await answered(lambda: client.reserve(rid, list(lines), ttl_seconds=600))


async def test_an_append_landing_after_its_settle_is_refused_and_a_restart_finds_what_was_acknowledged(
        redis_url: str, redis_server: EmbeddedRedis) -> None:
    proxy = HoldingProxy("127.0.0.1", redis_server.port)
    url = await proxy.start()
    try:
        async with _service(url) as (service, client):
            await answered(lambda: client.record_events([receipt("stock", "A", "DC", 10)]))
            proxy.hold(APPEND_SHA)
            with pytest.raises(grpc.aio.AioRpcError) as told:
                await client.reserve("r-told-unavailable", [("A", "DC", 3)], ttl_seconds=600)
            assert said(told.value) == (grpc.StatusCode.UNAVAILABLE, "OUTCOME_UNKNOWN")
            proxy.hold()
            acknowledged = await reserve_once_settled(client, "r-acknowledged")
            assert acknowledged.state == pb.RESERVATION_STATE_HELD
            late = await proxy.land(proxy.held[0])  # the first append reaches Redis now, after the settle
            assert late.startswith(b"*1\r\n") and b"STALE" in late  # refused: the shard was fenced
            (before,) = await client.availability([("A", "DC")])
            assert (before.reserved, before.available) == (2, 8)
            await until(lambda: not service.engine.actors[0]._inflight, "nothing in flight")  # type: ignore[union-attr]
    finally:
        await proxy.close()
    async with _service(redis_url) as (_, client):
        (after,) = await client.availability([("A", "DC")])
        assert (after.reserved, after.available) == (2, 8)
        assert (await client.get_reservation("r-acknowledged")).state == pb.RESERVATION_STATE_HELD
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await client.get_reservation("r-told-unavailable")
        assert said(missing.value) == (grpc.StatusCode.NOT_FOUND, "RESERVATION_NOT_FOUND")
