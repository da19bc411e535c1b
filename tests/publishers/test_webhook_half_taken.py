"""A batch sent in halves whose later half fails (retryable) after the receiver took the first: the part
taken counts as delivered, only the rest is retried and dead-lettered. Real local HTTP server, real Redis."""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest
import redis.asyncio as aioredis

from publishers import DeliveryError, Publisher, PublisherMetrics, WebhookAdapter
from publishers._delivery import Refused, in_halves
from reservation import ChannelUpdate
from tests.publishers.http_helpers import Answer, serve
from tests.publishers.test_publisher import SECRET, config, pending, publish, run_until, update

DEAD_LETTERS = "atp:{avail}:web:dlq:webhook"


class TakesTwoDownForC:
    """Takes at most two updates a request (413 past that); a request holding sku ``c`` gets a 503."""

    def __init__(self) -> None:
        self.accepted: list[tuple[str, int]] = []
        self.lock = threading.Lock()

    def handle(self, path: str, headers: dict[str, str], body: bytes) -> Answer:
        updates: list[dict[str, Any]] = json.loads(body)["updates"]
        with self.lock:
            if len(updates) > 2:
                return 413, {}, b"too large"
            if any(u["sku"] == "c" for u in updates):
                return 503, {}, b"busy"
            self.accepted += [(u["sku"], u["version"]) for u in updates]
            return 200, {}, b""


async def test_the_half_a_receiver_took_is_delivered_not_resent_nor_dead_lettered(client: aioredis.Redis) -> None:
    """The retryable failure of the second half failed the whole batch: each retry sent the first half
    again, and after the last the receiver's [a, b] were dead-lettered with [c, d] (counted failed,
    remembered owed and sent once more by the redelivery): dead letters and metrics overstated failures."""
    receiver, metrics = TakesTwoDownForC(), PublisherMetrics()
    await publish(client, [update("a", 5, 1), update("b", 6, 2), update("c", 7, 3), update("d", 8, 4)])
    with serve(receiver.handle) as url:
        adapter = WebhookAdapter(url, SECRET)
        publisher = Publisher(config(delivery_batch=4, max_attempts=3), client, adapter, metrics)

        async def settled() -> bool:
            return await client.xlen(DEAD_LETTERS) > 0 and await pending(client) == 0

        try:
            await run_until(publisher, settled)
        finally:
            await adapter.close()
    assert receiver.accepted == [("a", 1), ("b", 2)]  # once: its retries sent only what was not taken
    dead = [(fields[b"sku"], int(fields[b"version"])) for _, fields in await client.xrange(DEAD_LETTERS)]
    assert dead == [(b"c", 3), (b"d", 4)]
    assert set(await client.hkeys("atp:{avail}:web:redeliver:webhook")) == {b"c\t", b"d\t"}

    def count(outcome: str) -> float:
        labels = {"channel": "web", "adapter": "webhook", "outcome": outcome}
        return metrics.registry.get_sample_value("atp_publisher_deliveries_total", labels) or 0.0

    assert (count("delivered"), count("retried")) == (2, 3 * 2)


async def test_the_parts_answered_before_a_retryable_failure_are_named_at_every_depth() -> None:
    """Halves of halves: what was taken or refused alone before the failing part is named with the failure."""
    updates = [update(sku, 5, n) for n, sku in enumerate("abcdefgh", 1)]

    async def send(part: list[ChannelUpdate]) -> list[Refused]:
        skus = "".join(u.sku for u in part)
        if len(part) > 2:
            raise DeliveryError("HTTP 413", retryable=False, splittable=True)
        if "c" in skus:
            raise DeliveryError("HTTP 400: no such sku", retryable=False, splittable=True)
        if skus == "gh":
            raise DeliveryError("HTTP 503")
        return []

    with pytest.raises(DeliveryError) as failed:
        await in_halves("web", updates, send)
    assert failed.value.retryable
    assert [u.sku for u in failed.value.taken] == ["a", "b", "d", "e", "f"]
    assert [(r.update.sku, r.reason) for r in failed.value.refused] == [("c", "HTTP 400: no such sku")]
