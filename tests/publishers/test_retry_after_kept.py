"""A destination's ``Retry-After`` holds past the waits one request may make: the request after an
answer handed back to the retry loop (``--max-waits`` waited already) still waits what it asked.
Real local HTTP server, real Redis, an injected clock."""

from __future__ import annotations

import threading

import pytest
import redis.asyncio as aioredis

from publishers import HttpSettings, Publisher, PublisherMetrics, WebhookAdapter
from tests.publishers.http_helpers import Answer, Clock, serve
from tests.publishers.test_publisher import SECRET, config, pending, publish, run_until, update


class Pacing:
    """Answers 429 ``Retry-After: 60`` to the first ``busy`` requests, then 200; notes the clock at each."""

    def __init__(self, clock: Clock, busy: int) -> None:
        self.clock, self.busy = clock, busy
        self.sent_at: list[float] = []
        self.lock = threading.Lock()

    def handle(self, path: str, headers: dict[str, str], body: bytes) -> Answer:
        with self.lock:
            self.sent_at.append(self.clock.now)
            if len(self.sent_at) <= self.busy:
                return 429, {"Retry-After": "60"}, b"slow down"
            return 200, {}, b""


async def test_a_retry_after_past_max_waits_still_paces_the_next_request(client: aioredis.Redis) -> None:
    """After ``max_waits`` waits the 429 went to the retry loop, whose backoff (0.01 s here; 0.25-0.5 s at
    the defaults) replaced the 60 s the destination asked for: every (max_waits + 1)th request went at
    once after a 'Retry-After: 60' (a destination may ban a client that ignores it)."""
    clock = Clock()
    destination = Pacing(clock, busy=5)
    await publish(client, [update("a", 5, 1), update("b", 0, 2)])
    with serve(destination.handle) as url:
        adapter = WebhookAdapter(url, SECRET, HttpSettings(max_wait_s=60, max_waits=1), clock.sleep, clock)
        publisher = Publisher(config(max_attempts=5), client, adapter, PublisherMetrics(), sleep=clock.sleep)

        async def settled() -> bool:
            return len(destination.sent_at) > 5 and await pending(client) == 0

        try:
            await run_until(publisher, settled)
        finally:
            await adapter.close()
    after_429 = [destination.sent_at[n + 1] - destination.sent_at[n] for n in range(5)]
    assert after_429 == [pytest.approx(60.0)] * 5  # the retry loop's backoff was part of the 60 s
