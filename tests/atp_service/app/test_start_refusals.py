"""Refusals Redis gives for a while at start, and stops giving without anyone touching the service:
the start waits them out (health NOT_SERVING) rather than stop as refused for its data (exit 2),
which supervisors do not restart."""

from __future__ import annotations

import asyncio
from pathlib import Path

import redis.asyncio as aioredis

from atp_service import AtpService, EmbeddedRedis
from tests.atp_service.app.test_healthcheck import health, starting_until_logged
from tests.conftest import test_config as make_config


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
