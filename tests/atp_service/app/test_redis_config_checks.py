"""What the start checks of the Redis it is given, each against a real redis-server started with the
setting: a Redis that would lose what the service acknowledges is not written to (R7)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import redis.asyncio as aioredis

from atp_service import AtpService, EmbeddedRedis
from tests.atp_service.app.test_healthcheck import health, starting_until_logged
from tests.conftest import test_config as make_config


async def test_a_writable_replica_is_not_written_to_but_waited_on_until_promoted(tmp_path: Path) -> None:
    """``redis_url`` naming a replica with ``replica-read-only no`` took every write: the service
    started and acknowledged changes that the replica drops at its next full resync from its primary
    (a restart, a broken link), and that no other copy ever had. A replica is now waited on as a
    read-only one is (a failover may promote it), named in the warning, nothing written to it."""
    primary = EmbeddedRedis(tmp_path / "primary").start()
    replica = EmbeddedRedis(tmp_path / "replica", extra_args=[
        "--replicaof", "127.0.0.1", str(primary.port), "--replica-read-only", "no"]).start()
    service = AtpService(make_config(redis_timeout_s=1.0), replica.url)
    admin = aioredis.Redis.from_url(replica.url)
    try:
        async with starting_until_logged(service, "is a replica") as starting:
            assert not starting.done(), starting.exception()  # waiting, not started on it
            assert (await health(service.port))[0] == 1  # NOT_SERVING
            assert await admin.dbsize() == 0  # nothing the resync would drop
            await admin.replicaof("NO", "ONE")  # promoted
            await asyncio.wait_for(starting, 30)
            assert (await health(service.port))[0] == 0
    finally:
        await admin.aclose()
        await service.stop(grace_s=0)
        replica.stop()
        primary.stop()
