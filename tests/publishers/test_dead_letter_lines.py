"""A destination refusing every request (credentials revoked, a schema changed): each batch is dead-lettered at
once, and the log says so at most once a second with a count of what it left out, not once per batch. Real Redis,
a real local HTTP server; the line's clock is a fake one."""

from __future__ import annotations

import logging

import pytest
import redis.asyncio as aioredis

from atp_service.logs import EveryInterval
from publishers import Publisher, PublisherMetrics, WebhookAdapter
from tests.publishers.http_helpers import Answer, serve
from tests.publishers.test_publisher import SECRET, config, pending, publish, run_until, update

DEAD_LETTERS = "atp:{avail}:web:dlq:webhook"
BATCHES = 20


def _refuses(path: str, headers: dict[str, str], body: bytes) -> Answer:
    return 422, {}, b"unknown field"


def _dead_letter_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "publishers._redeliver" and "dead-lettered" in r.getMessage()]


async def test_batches_dead_lettered_one_after_another_are_said_once_a_while(
        client: aioredis.Redis, caplog: pytest.LogCaptureFixture) -> None:
    """20 batches refused for good: 20 WARNING lines, one per batch (a line per update where updates come one at a
    time), for as long as the destination refuses. Now one, the next carrying in ``left_out`` the 19 left out;
    every update is still in the dead-letter stream with its reason."""
    now = [0.0]
    await publish(client, [update(f"sku-{n}", 1, n) for n in range(1, BATCHES + 1)])
    with serve(_refuses) as url:
        adapter = WebhookAdapter(url, SECRET)
        publisher = Publisher(config(delivery_batch=1), client, adapter, PublisherMetrics())
        publisher.dead_letter_lines = EveryInterval(publisher.dead_letter_lines.interval_s, lambda: now[0])
        published_last = False

        async def settled() -> bool:
            nonlocal published_last
            dead = await client.xlen(DEAD_LETTERS)
            # The clock moved once the 20th batch's line is counted, not once its letter is in Redis: the publisher
            # writes the letter, then (its next step) counts the line; a clock moved between the two said that line.
            counted = publisher.dead_letter_lines.left_out == BATCHES - 1
            if dead == BATCHES and counted and not published_last:  # a second later, one more batch refused
                now[0] += publisher.dead_letter_lines.interval_s
                await publish(client, [update("sku-last", 1, BATCHES + 1)])
                published_last = True
            return dead == BATCHES + 1 and await pending(client) == 0

        try:
            with caplog.at_level(logging.WARNING, logger="publishers"):
                await run_until(publisher, settled)
        finally:
            await adapter.close()
    said = _dead_letter_lines(caplog)
    assert len(said) == 2, [r.getMessage() for r in said]
    assert (said[0].event, said[0].updates) == ("publisher_dead_lettered", 1)  # type: ignore[attr-defined]
    assert said[1].left_out == BATCHES - 1  # type: ignore[attr-defined]
    reasons = {fields[b"reason"] for _, fields in await client.xrange(DEAD_LETTERS)}
    assert reasons == {b"HTTP 422: unknown field"}
