"""Fixtures of the storage tests."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from atp_service.storage.embedded_redis import EmbeddedRedis


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
