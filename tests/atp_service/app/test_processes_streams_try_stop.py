"""A try of a failed owner that the reading loop started and does not wait for (``OwnerSends.to_owners``,
``wait=False``) is the reader's own task: a stop of the reader ends it (cancelled) with the rest, never left
running past the stop (its peer channel closed under it), nor waited out to its send's timeout."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest
import redis

from atp_service.edge import record
from tests.atp_service.app.test_processes import group_of, owned
from tests.atp_service.app.test_processes_streams import STREAMS, start_leased
from tests.atp_service.app.test_processes_streams_probe import reader_and_owner
from tests.atp_service.fact_helpers import F
from tests.conftest import ServiceFactory
from tests.waiting import until

__all__ = ["start_leased"]  # the fixture, used here


async def test_a_stop_ends_a_try_of_a_paused_owner_under_way(
        start_leased: ServiceFactory, redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    reader, sends, owner, elsewhere = await reader_and_owner(start_leased, redis_url, tmp_path, monkeypatch)
    away = next(s for s in (f"try-{i}" for i in range(64)) if group_of(s) not in owned(reader))
    r = redis.Redis.from_url(redis_url)
    owner.send_signal(signal.SIGSTOP)
    try:
        r.xadd(STREAMS[0], F("away", "RECEIPT", away, "DC", 1, int(time.time() * 1000) - 1000).fields())
        await until(lambda: not sends.due(elsewhere), "the paused owner's send failed: skipped")
        monkeypatch.setattr(record, "SEND_TIMEOUT_S", 3600.0)  # a try now outlasts any stop
        await until(lambda: bool(sends.tries), "the paused owner tried again by the reading loop, not waited for")
        tries = sends.tries
        await reader.stop()
        assert all(task.done() for task in tries), "a try left running past the reader's stop"
        assert all(task.cancelled() for task in tries), "a try waited out instead of ended by the stop"
        assert not sends.tries
    finally:
        owner.send_signal(signal.SIGCONT)
