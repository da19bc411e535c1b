"""Fixtures of the storage tests."""

from __future__ import annotations

import os
import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from atp_service.storage.clients import close_any, connect_any
from atp_service.storage.embedded_cluster import EmbeddedCluster
from atp_service.storage.embedded_redis import EmbeddedRedis
from atp_service.storage.log import LogStore, connect


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    """A redis-server of this test alone: it is stopped, paused and restarted."""
    server = EmbeddedRedis(tmp_path / "r").start()
    try:
        yield server
    finally:
        if server.process is not None and server.process.poll() is None:
            os.kill(server.process.pid, signal.SIGCONT)  # a test that failed while it was paused
        server.stop()


@pytest.fixture
async def store(redis_url: str) -> AsyncIterator[LogStore]:
    """A log store that has claimed a clean keyspace (prefix ``t:``, four shards)."""
    client = connect(redis_url, 5.0)
    log_store = LogStore(client, "t:", pipeline_max=64)
    await log_store.claim(4)
    yield log_store
    await client.aclose()


@pytest.fixture
async def cluster_client(cluster: EmbeddedCluster) -> AsyncIterator[Any]:
    """A cluster client of the service's (``connect_any``) on the test's own ``cluster``, its Redis timeout short
    (1 s): a command sent to a hung node fails well within the test."""
    reached = connect_any(cluster.url, 1.0, cluster=True)
    try:
        yield reached
    finally:
        await close_any(reached)
