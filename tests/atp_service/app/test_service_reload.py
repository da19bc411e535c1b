"""ReloadEstate under faults: reloads racing each other, and Redis not answering while the new
channels' feeds load. A reload is all or nothing, and the configuration that runs is the file's
as the last acknowledged reload read it."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest

from atp_client import AtpClient
from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_service import AtpService, EmbeddedRedis, ManualClock
from tests.atp_service.channel_helpers import ESTATE, write_estate
from tests.atp_service.redis_proxy import HoldingProxy
from tests.atp_service.refusals import said
from tests.conftest import test_config as make_config
from tests.waiting import until

T = 1_700_000_000_000
OUTLET = '\n[[channels]]\nname = "outlet"\nsells_from = ["dc-1"]\nthrottle_ms = 0\n'


async def _behind_a_proxy(redis_server: EmbeddedRedis, path: Path, timeout_s: float
                          ) -> tuple[AtpService, AtpClient, HoldingProxy]:
    proxy = HoldingProxy("127.0.0.1", redis_server.port)
    service = AtpService(make_config(estate=path, redis_timeout_s=timeout_s), await proxy.start(),
                         clock=ManualClock(T))
    await service.start()
    return service, AtpClient(f"127.0.0.1:{service.port}"), proxy


async def _stop(service: AtpService, client: AtpClient, proxy: HoldingProxy) -> None:
    await client.close()
    await service.stop(grace_s=0.1)
    await proxy.close()


async def test_a_reload_acknowledged_last_is_the_configuration_that_runs(
        redis_server: EmbeddedRedis, redis_url: str, tmp_path: Path) -> None:  # redis_url: a clean keyspace
    """Defect: reloads were not serialised. A reload adding a channel (SIGHUP, say) waited for
    Redis to load that channel's feed; meanwhile the operator fixed the file and reloaded again,
    was answered with the new channels — and then the first reload finished and put the file's
    older content back, for good, with nobody told."""
    path = write_estate(tmp_path)
    service, client, proxy = await _behind_a_proxy(redis_server, path, 30)
    try:
        desk = service.channels
        assert desk is not None
        path.write_text(ESTATE + OUTLET)  # a channel added
        proxy.hold(b"{avail}:outlet\r\n")  # XINFO: the first reload's last read of the new feed waits here
        first = asyncio.ensure_future(service.reload_estate())
        await until(lambda: len(proxy.held) == 1, "the first reload loading the outlet's feed")
        path.write_text(ESTATE)  # the operator takes the outlet back out, and reloads
        proxy.hold()
        second = asyncio.ensure_future(client.stub.ReloadEstate(pb.ReloadEstateRequest()))
        await until(lambda: second.done() or service._servicer.drain.active == 1, "the second reload under way")
        await proxy.land(proxy.held[0])
        await first
        assert [c.name for c in (await second).channels] == ["market", "pickup", "web"]
        assert sorted(desk.estate.channels) == sorted(desk.feeds) == ["market", "pickup", "web"]
    finally:
        await _stop(service, client, proxy)


async def test_a_reload_whose_feeds_redis_does_not_answer_is_refused_retryable_and_changes_nothing(
        redis_server: EmbeddedRedis, redis_url: str, tmp_path: Path) -> None:  # redis_url: a clean keyspace
    """Defect: Redis not answering while a new channel's feed loaded ended the ReloadEstate call
    UNKNOWN ("Unexpected <class 'redis.exceptions.TimeoutError'>") with a traceback in the log,
    a status no client retries and no reason to act on."""
    path = write_estate(tmp_path)
    service, client, proxy = await _behind_a_proxy(redis_server, path, 0.5)
    try:
        path.write_text(ESTATE + OUTLET)
        proxy.hold(b"outlet:state")  # never answered: the read times out
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await client.stub.ReloadEstate(pb.ReloadEstateRequest())
        assert said(refused.value) == (grpc.StatusCode.UNAVAILABLE, "STORAGE_UNREACHABLE")
        assert service.channels is not None and sorted(service.channels.feeds) == ["market", "pickup", "web"]
        proxy.drop()
        proxy.hold()
        reply = await client.stub.ReloadEstate(pb.ReloadEstateRequest())  # the retry, once Redis answers
        assert [c.name for c in reply.channels] == ["market", "outlet", "pickup", "web"]
    finally:
        await _stop(service, client, proxy)
