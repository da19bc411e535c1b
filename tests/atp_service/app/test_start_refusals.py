"""Refusals Redis gives for a while at start, and stops giving without anyone touching the service:
the start waits them out (health NOT_SERVING) rather than stop as refused for its data (exit 2),
which supervisors do not restart."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import redis
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from atp_client import AtpClient
from atp_service import AtpService, EmbeddedRedis
from atp_service.app.keyspace import StartupError
from atp_service.config import ServiceConfig
from tests.atp_service.app.test_healthcheck import health, starting_until_logged
from tests.atp_service.channel_helpers import write_estate
from tests.atp_service.edge.test_api import receipt
from tests.conftest import test_config as make_config
from tests.ports import held_port
from tests.waiting import until


async def test_writes_refused_noreplicas_at_start_are_waited_out(tmp_path: Path) -> None:
    """A Redis with ``min-replicas-to-write 1`` whose replica is away (restarting, resyncing)
    refuses every write NOREPLICAS until it is back. The start's writes (the keyspace check, the
    claim) were refused so and the start stopped with a StartupError (exit status 2: never
    restarted), though the refusal ends on its own as NotReplicated does, which the start waits out."""
    server = EmbeddedRedis(tmp_path / "redis", extra_args=["--min-replicas-to-write", "1"]).start()
    service = AtpService(make_config(redis_timeout_s=1.0), server.url)
    try:
        async with starting_until_logged(service, "waiting for Redis") as starting:
            assert not starting.done(), starting.exception()  # waiting, not refused
            assert (await health(service.port))[0] == 1  # NOT_SERVING
            admin = aioredis.Redis.from_url(server.url)
            await admin.config_set("min-replicas-to-write", 0)  # the replica is back
            await admin.aclose()
            await asyncio.wait_for(starting, 30)
            assert (await health(service.port))[0] == 0
    finally:
        await service.stop(grace_s=0)
        server.stop()


async def test_writes_refused_misconf_at_start_are_waited_out(tmp_path: Path) -> None:
    """A Redis whose RDB saves fail (its disk full or gone) refuses every write ``MISCONF`` while
    ``stop-writes-on-bgsave-error`` is on, the default, until a save succeeds — which Redis tries
    again by itself every few seconds, so the refusal ends once the disk has room, without anyone
    touching the service. The start's writes were refused so and the start stopped with a
    StartupError (exit status 2: never restarted), as though Redis had refused it for its data."""
    data = tmp_path / "redis"
    server = EmbeddedRedis(data, extra_args=["--enable-protected-configs", "yes"]).start()  # (CONFIG SET dir)
    admin = redis.Redis.from_url(server.url)
    service = AtpService(make_config(redis_timeout_s=1.0), server.url)
    try:
        _save_into_a_removed_dir(admin, tmp_path / "disk-gone")
        await until(lambda: admin.info("persistence")["rdb_last_bgsave_status"] == "err", "the RDB save failed")
        with pytest.raises(ResponseError, match=r"^MISCONF"):
            admin.set("probe", 1)
        async with starting_until_logged(service, "waiting for Redis") as starting:
            assert not starting.done(), starting.exception()  # waiting, not refused
            assert (await health(service.port))[0] == 1  # NOT_SERVING
            admin.config_set("dir", str(data.resolve()))  # the disk is back: the next save succeeds
            admin.bgsave(schedule=True)
            await asyncio.wait_for(starting, 30)
            assert (await health(service.port))[0] == 0
    finally:
        await service.stop(grace_s=0)
        admin.close()
        server.stop()


def _save_into_a_removed_dir(admin: redis.Redis, gone: Path) -> None:
    """Redis's RDB save failing: it saves into a directory removed since, with a save point set, so that
    ``stop-writes-on-bgsave-error`` (on by default) refuses writes ``MISCONF`` once the save has failed."""
    gone.mkdir()
    admin.config_set("dir", str(gone))
    gone.rmdir()
    admin.config_set("save", "3600 1")
    admin.bgsave(schedule=True)  # (an AOF rewrite at Redis's start may be under way)


async def test_a_leased_start_is_refused_on_a_keyspace_whose_channel_feeds_would_freeze(tmp_path: Path) -> None:
    """Leased processes serve no channel feeds: moved to leases, a keyspace's feeds would stay at their
    last values and a stock-out never reach the channels' destinations (C2, C4), without a word."""
    with EmbeddedRedis(tmp_path / "redis") as server:
        client = aioredis.Redis.from_url(server.url)
        keyspace = AtpService(make_config(estate=write_estate(tmp_path)), server.url)
        await keyspace.start()
        try:
            async with AtpClient(f"127.0.0.1:{keyspace.port}") as atp:
                await atp.record_events([receipt("in-1", "A", "dc-1", 5)])
            await until(lambda: client.exists("atp:{avail}:web:state"), "the web channel published", 30)
        finally:
            await keyspace.stop(grace_s=0.1)
        await client.hset("atp:meta", "ownership", "leases")  # as the ownership refusal says to
        leased = AtpService(_leased(), server.url)
        with pytest.raises(StartupError, match=r"channel feeds: .*atp:\{avail\}:.* ownership=leases"):
            await leased.start()
        await leased.stop(grace_s=0.1)
        for key in [k async for k in client.scan_iter(match="atp:{avail}:*")]:
            if not key.endswith((b":owner", b":fence")):
                await client.delete(key)  # as the refusal says to
        await client.aclose()
        again = AtpService(_leased(), server.url)
        await again.start()
        await again.stop(grace_s=0.1)


def _leased() -> ServiceConfig:
    return make_config(ownership="leases", lease_ms=5_000, input_streams=(), port=held_port())
