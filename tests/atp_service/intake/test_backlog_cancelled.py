"""The backlog gauge cancelled once, the cancel landing just as its XINFO GROUPS was written: redis-py sends every
command through ``asyncio.wait_for`` (a socket timeout set), which on Python 3.11 returns the write's result and
drops a cancellation that arrives in that turn (CPython gh-86296). The gauge went on measuring every interval,
its task "cancelling" for ever: asyncio.run's one cancel at the loop's end waited on it for good (the process
hung, deaf to signals). Now the gauge ends at the end of that measure. Real Redis; the cancel is sent from
inside the real write, right after it."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis
from prometheus_client import CollectorRegistry, Gauge

from atp_service.intake.backlog import BacklogGauge
from atp_service.storage.nodes import connect_any
from tests.atp_service.intake.cancel_as_written import cancel_as_written, ended_by_the_cancel


async def test_a_gauge_cancelled_as_its_command_is_written_ends(redis_url: str,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    admin: Any = redis.Redis.from_url(redis_url)
    admin.xgroup_create("in", "atp", id="0", mkstream=True)
    registry = CollectorRegistry()
    pending = Gauge("pending", "", ["stream"], registry=registry)
    lag = Gauge("lag", "", ["stream"], registry=registry)
    client = connect_any(redis_url, 2.0)
    gauge = BacklogGauge(client, "atp", ["in"], pending, lag, Gauge("consumers", "", ["stream"], registry=registry))
    await client.ping()  # its connection made: the next command is the gauge's
    cancels = cancel_as_written(monkeypatch, client, lambda: measuring)
    measuring = asyncio.ensure_future(gauge.run(every_s=0.01))
    try:
        await ended_by_the_cancel(measuring, cancels, "the gauge measured on after its cancel")
    finally:
        measuring.cancel()
        await asyncio.wait((measuring,), timeout=5)
        await client.aclose()
        admin.close()
