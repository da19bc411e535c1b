"""``atp-publisher``'s stop says the rate-limited lines left out since their last (``say_left_out``) and closes its
Redis connections whatever its adapter's close does: an adapter's close that raised skipped both."""

from __future__ import annotations

import asyncio
import logging
import signal

import pytest

from atp_service.logs import EveryInterval, say_left_out
from publishers import PublisherConfig, PublisherMetrics, cli
from tests.waiting import until

OF = "t_publisher_stop_left_out"


class CloseFails:
    """An adapter whose close raises (a destination's connection that would not close cleanly)."""

    name = "close-fails"

    async def deliver(self, channel: str, updates: list[object]) -> None:
        return None

    async def close(self) -> None:
        raise OSError("the destination's connection would not close")


async def test_a_stop_says_the_lines_left_out_though_the_adapter_s_close_raises(
        redis_url: str, caplog: pytest.LogCaptureFixture) -> None:
    say_left_out()  # what earlier tests of this process left out, said before
    caplog.set_level(logging.INFO)
    now = [0.0]
    every = EveryInterval(10.0, lambda: now[0])
    for _ in range(3):  # the first said, two left out
        every.fields(event=OF)
    config = PublisherConfig(channel="web", group="stop-left-out", block_ms=50)
    running = asyncio.ensure_future(cli._run(config, redis_url, CloseFails(), PublisherMetrics()))  # type: ignore[arg-type]
    await until(lambda: running.done() or any("delivers while it holds" in r.getMessage() for r in caplog.records),
                "the publisher running, its stop signal handled")
    signal.raise_signal(signal.SIGTERM)  # its stop: the handler ``_run`` set on this loop
    with pytest.raises(OSError, match="would not close"):
        await running
    said = [(r.of, r.left_out) for r in caplog.records  # type: ignore[attr-defined]
            if getattr(r, "event", None) == "log_lines_left_out" and getattr(r, "of", None) == OF]
    assert said == [(OF, 2)]  # was: [], the adapter's error skipped it
