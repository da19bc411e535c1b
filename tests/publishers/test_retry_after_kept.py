"""A destination's ``Retry-After`` holds past the waits one request may make: the request after an
answer handed back to the retry loop (``--max-waits`` waited already) still waits what it asked.
Real local HTTP server, real Redis, an injected clock."""

from __future__ import annotations

import threading

import pytest
import redis.asyncio as aioredis

from publishers import HttpSettings, Publisher, PublisherMetrics, WebhookAdapter
from publishers._http import Http
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
        adapter = WebhookAdapter(url, SECRET, HttpSettings(max_wait_s=60, max_waits=1), clock.sleep, clock, clock)
        publisher = Publisher(config(max_attempts=5), client, adapter, PublisherMetrics(), sleep=clock.sleep)

        async def settled() -> bool:
            return len(destination.sent_at) > 5 and await pending(client) == 0

        try:
            await run_until(publisher, settled)
        finally:
            await adapter.close()
    after_429 = [destination.sent_at[n + 1] - destination.sent_at[n] for n in range(5)]
    assert after_429 == [pytest.approx(60.0)] * 5  # the retry loop's backoff was part of the 60 s


@pytest.mark.parametrize("jump_s", [3600.0, -3600.0], ids=["ahead", "back"])
async def test_a_retry_after_past_max_waits_paces_the_next_request_though_the_wall_clock_jumps(jump_s: float) -> None:
    """The pace a destination asked for ('Retry-After: 5', handed back past ``max_waits``) was kept as a wall time:
    the host's wall clock set an hour ahead before the next request (a bad NTP source, a hand set) sent it at once,
    the destination's pacing ignored (it may ban the client); set back an hour, the next request waited
    ``max_wait_s`` (60 s, stock-outs behind it) for an ask of 5 s. It counts on the monotonic clock."""
    wall, mono = Clock(), Clock(start=1000.0)
    answers = [(429, {"Retry-After": "5"}, b"slow down")]
    with serve(lambda *_: answers.pop(0) if answers else (204, {}, b"")) as url:
        http = Http(HttpSettings(max_wait_s=60, max_waits=0), mono.sleep, wall, mono)
        try:
            assert (await http.post(url, b"{}", dict)).status_code == 429  # handed back: max_waits waited
            wall.now += jump_s
            assert (await http.post(url, b"{}", dict)).status_code == 204
        finally:
            await http.close()
    assert mono.slept == [5.0]
