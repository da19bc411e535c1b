"""A webhook receiver that answers in ways a publisher must not get wrong: a batch too large for it
(413), a redirect (3xx), a ``Retry-After`` that cannot be a wait. Real local HTTP server, real Redis."""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest
import redis.asyncio as aioredis

from publishers import DeliveryError, HttpSettings, Publisher, PublisherMetrics, WebhookAdapter
from tests.publishers.http_helpers import Answer, Clock, serve
from tests.publishers.test_publisher import SECRET, config, pending, publish, run_until, update
from tests.publishers.test_webhook import Recorder

DEAD_LETTERS = "atp:{avail}:web:dlq:webhook"


class SizeLimited:
    """A receiver that takes at most ``most`` updates per request and answers 413 to a larger one."""

    def __init__(self, most: int) -> None:
        self.most = most
        self.sizes: list[int] = []
        self.accepted: list[dict[str, Any]] = []
        self.lock = threading.Lock()

    def handle(self, path: str, headers: dict[str, str], body: bytes) -> Answer:
        updates = json.loads(body)["updates"]
        with self.lock:
            self.sizes.append(len(updates))
            if len(updates) > self.most:
                return 413, {}, b"request entity too large"
            self.accepted.extend(updates)
            return 200, {}, b""


async def test_a_batch_too_large_for_the_receiver_is_split_until_it_fits(client: aioredis.Redis) -> None:
    """A 413 refused the batch's size, not its updates: the whole batch was dead-lettered as refused,
    stock-out included, and redelivered (at the next start only) in batches as large, refused again:
    the receiver never got the 0 while its limit stood below --batch."""
    receiver = SizeLimited(most=2)
    updates = [update("a", 5, 1), update("b", 0, 2), update("c", 7, 3), update("d", 1, 4), update("e", 2, 5)]
    await publish(client, updates)
    with serve(receiver.handle) as url:
        publisher = Publisher(config(delivery_batch=5), client, WebhookAdapter(url, SECRET), PublisherMetrics())

        async def settled() -> bool:  # delivered, or dead-lettered: either way nothing left pending
            done = len(receiver.accepted) >= 5 or await client.xlen(DEAD_LETTERS) > 0
            return done and await pending(client) == 0

        try:
            await run_until(publisher, settled)
        finally:
            await publisher.adapter.close()
    assert await client.xlen(DEAD_LETTERS) == 0
    # The stock-out first (C2), every update once, in the batch's order; halves down to what fits.
    assert [(u["sku"], u["version"]) for u in receiver.accepted] == [("b", 2), ("a", 1), ("c", 3), ("d", 4),
                                                                     ("e", 5)]
    # The stock-out in a request of its own (C2: it waits for no token of the others), the rest split.
    assert receiver.sizes[:2] == [1, 4] and max(receiver.sizes[2:]) <= 2 and len(receiver.sizes) <= 1 + 2 * 4 - 1


async def test_an_update_too_large_alone_is_refused_naming_the_413_and_the_rest_delivered() -> None:
    receiver = SizeLimited(most=1)
    big = update("b" * 4000, 0, 2)  # a receiver limits bytes: this one update is over its limit alone

    def handle(path: str, headers: dict[str, str], body: bytes) -> Answer:
        return (413, {}, b"too large") if len(body) > 3000 else receiver.handle(path, headers, body)

    with serve(handle) as url:
        adapter = WebhookAdapter(url, SECRET)
        try:
            refused = await adapter.deliver("web", [update("a", 5, 1), big, update("c", 7, 3)])
            with pytest.raises(DeliveryError) as alone:  # a batch of one: nothing left to split
                await adapter.deliver("web", [big])
        finally:
            await adapter.close()
    assert [(r.update.version, r.reason) for r in refused] == [(2, "HTTP 413: too large")]
    assert [u["version"] for u in receiver.accepted] == [1, 3]
    assert not alone.value.retryable and alone.value.reason == "HTTP 413: too large"


@pytest.mark.parametrize("asked", ["-30", "nan", "-inf"])
async def test_a_retry_after_that_is_no_wait_is_backed_off_not_resent_at_once(asked: str) -> None:
    """Retry-After is a count of seconds (RFC 9110: digits) or a date: a negative or unreadable count was
    taken as "at once", so a struggling receiver got max_waits + 1 requests back to back per attempt."""
    clock = Clock()
    recorder = Recorder([(429, {"Retry-After": asked}, b"slow down")] * 6)
    with serve(recorder.handle) as url:
        adapter = WebhookAdapter(url, SECRET, HttpSettings(max_wait_s=30, max_waits=5), clock.sleep, clock)
        try:
            with pytest.raises(DeliveryError) as failed:
                await adapter.deliver("web", [update("a", 5, 1)])
        finally:
            await adapter.close()
    # One request, then the publisher's own backoff (the retry loop), as for a 429 without Retry-After.
    assert len(recorder.got) == 1 and clock.slept == []
    assert failed.value.retryable and failed.value.reason.startswith("HTTP 429")


async def test_a_redirect_is_refused_naming_where_it_points() -> None:
    """A 3xx (an endpoint moved, http to https) is not followed: a signed batch is not sent to an address
    nobody configured. The dead letter said only 'HTTP 308: ', nothing an operator could act on."""
    recorder = Recorder([(308, {"Location": "https://moved.example/inventory"}, b"")])
    with serve(recorder.handle) as url:
        adapter = WebhookAdapter(url, SECRET)
        try:
            with pytest.raises(DeliveryError) as refused:
                await adapter.deliver("web", [update("a", 0, 1)])
        finally:
            await adapter.close()
    assert len(recorder.got) == 1 and not refused.value.retryable
    assert "https://moved.example/inventory" in refused.value.reason and "--url" in refused.value.reason


class RefusesOneSku:
    """A receiver that refuses (``status``) any request carrying ``sku`` (one it does not sell, a
    value its schema refuses) and takes every other."""

    def __init__(self, sku: str, status: int) -> None:
        self.sku, self.status = sku, status
        self.accepted: list[dict[str, Any]] = []
        self.lock = threading.Lock()

    def handle(self, path: str, headers: dict[str, str], body: bytes) -> Answer:
        updates = json.loads(body)["updates"]
        with self.lock:
            if any(u["sku"] == self.sku for u in updates):
                return self.status, {}, f"unknown sku {self.sku}".encode()
            self.accepted.extend(updates)
            return 200, {}, b""


@pytest.mark.parametrize("status", [400, 422])
async def test_a_batch_refused_for_one_update_delivers_the_rest_stock_out_included(
        client: aioredis.Redis, status: int) -> None:
    """A receiver refusing a request for one update it cannot take (400, 422) refused that update, not
    the batch: the whole batch was dead-lettered as refused, its stock-out with it, and redelivered at
    the next start only — the 0 of a key sold out in the same batch as the poison never reached the
    destination while the publisher ran (C2, C4)."""
    receiver = RefusesOneSku("poison", status)
    updates = [update("poison", 5, 1), update("b", 0, 2), update("c", 7, 3), update("d", 1, 4)]
    await publish(client, updates)
    with serve(receiver.handle) as url:
        publisher = Publisher(config(delivery_batch=4), client, WebhookAdapter(url, SECRET), PublisherMetrics())

        async def settled() -> bool:  # delivered or dead-lettered: nothing left pending
            return await client.xlen(DEAD_LETTERS) > 0 and await pending(client) == 0

        try:
            await run_until(publisher, settled)
        finally:
            await publisher.adapter.close()
    assert [(u["sku"], u["quantity"]) for u in receiver.accepted] == [("b", 0), ("c", 7), ("d", 1)]
    [(_, dead)] = await client.xrange(DEAD_LETTERS)
    assert dead[b"sku"] == b"poison" and dead[b"reason"] == f"HTTP {status}: unknown sku poison".encode()
