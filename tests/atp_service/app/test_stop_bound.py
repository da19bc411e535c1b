"""A stop whose caller gives up on it (``atp-service serve`` bounds its stop) never leaves gRPC serving."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
from functools import partial
from pathlib import Path

import pytest

from atp_service import AtpService
from atp_service.storage.embedded_redis import EmbeddedRedis
from tests.atp_service.edge.test_api import receipt
from tests.conftest import services_on
from tests.waiting import until


async def test_a_stop_cut_short_by_its_bound_still_stops_grpc(tmp_path: Path) -> None:
    """``serve`` waits for ``stop()`` a bounded time, then ends its event loop. A stop held before
    gRPC's own stop (a call in progress through the whole grace, Redis not answering it) was given
    up with gRPC still serving: the loop ended with a live server, and the process hung at exit
    for ever (gRPC's poller thread joined while the server's calls were pending) — a pod stuck
    Terminating until SIGKILL. gRPC is stopped before the given-up stop returns."""
    with EmbeddedRedis(tmp_path / "redis") as server:
        async with services_on(server.url, redis_timeout_s=60.0, shutdown_grace_s=60.0) as start:
            service, client = await start(shards=1)
            await client.record_events([receipt("stock", "A", "DC", 5)])
            assert server.process is not None
            os.kill(server.process.pid, signal.SIGSTOP)
            try:
                held = asyncio.ensure_future(client.reserve("held", [("A", "DC", 1)], ttl_seconds=60))
                await until(partial(_in_progress, service), "the call in progress", 30)
                with pytest.raises(TimeoutError):  # the drain waits up to the 60 s grace for "held"
                    await asyncio.wait_for(service.stop(), timeout=0.5)
                with pytest.raises(ConnectionRefusedError):
                    socket.create_connection(("127.0.0.1", service.port), timeout=10).close()
            finally:
                os.kill(server.process.pid, signal.SIGCONT)
            await asyncio.gather(held, return_exceptions=True)  # answered, or cancelled with the server


def _in_progress(service: AtpService) -> bool:
    return service._servicer.drain.active > 0
