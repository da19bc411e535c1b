"""Fixtures shared by the service's tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from atp_service.storage.embedded_cluster import EmbeddedCluster


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[EmbeddedCluster]:
    """A Redis Cluster of the test's own (three primaries, no replica; a node of it may be stopped), whose nodes never
    declare one failed within the test: a hung node keeps its slots and the others serve theirs (no ``CLUSTERDOWN``).
    A test module that needs another cluster defines its own ``cluster``."""
    with EmbeddedCluster(tmp_path / "cluster", primaries=3, replicas=0, node_timeout_ms=600_000) as formed:
        yield formed
