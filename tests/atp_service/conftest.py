"""Fixtures shared by the service's tests."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from atp_client import AtpClient
from atp_service import AtpService, ServiceConfig
from atp_service.storage.embedded_cluster import EmbeddedCluster


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[EmbeddedCluster]:
    """A Redis Cluster of the test's own (three primaries, no replica; a node of it may be stopped), whose nodes never
    declare one failed within the test: a hung node keeps its slots and the others serve theirs (no ``CLUSTERDOWN``).
    A test module that needs another cluster defines its own ``cluster``."""
    with EmbeddedCluster(tmp_path / "cluster", primaries=3, replicas=0, node_timeout_ms=600_000) as formed:
        yield formed


@contextlib.asynccontextmanager
async def served(config: ServiceConfig, url: str, timeout_s: float) -> AsyncIterator[tuple[AtpService, AtpClient]]:
    """``async with served(config, url, timeout_s) as (service, client)``: the service started with ``config`` on the
    Redis (or Redis Cluster) at ``url``, and a client of it whose calls are bounded by ``timeout_s`` (a bound against
    a hang, not a timing); however the block ends, the client closed and the service stopped."""
    service = AtpService(config, url)
    await service.start()
    client = AtpClient(f"127.0.0.1:{service.port}", timeout_s=timeout_s)
    try:
        yield service, client
    finally:
        await client.close()
        await service.stop(grace_s=0.1)
