"""What a read delivered before Redis failed part-way through it (a dead letter not written) is known
delivered: read again once Redis answers, it is not sent again. Real local HTTP server, real Redis."""

from __future__ import annotations

import json
import threading

import redis.asyncio as aioredis

from publishers import Publisher, PublisherMetrics, WebhookAdapter
from tests.publishers.http_helpers import Answer, serve
from tests.publishers.test_publisher import SECRET, config, pending, publish, run_until, update

DEAD_LETTERS = "atp:{avail}:web:dlq:webhook"


class DownForB:
    """Takes every request but one holding sku ``b``: a 503 to that."""

    def __init__(self) -> None:
        self.got: list[list[str]] = []
        self.lock = threading.Lock()

    def handle(self, path: str, headers: dict[str, str], body: bytes) -> Answer:
        skus = [u["sku"] for u in json.loads(body)["updates"]]
        with self.lock:
            self.got.append(skus)
        return (503, {}, b"busy") if "b" in skus else (200, {}, b"")


async def _a_read_failed_part_way(client: aioredis.Redis) -> DownForB:
    """Sku ``a`` (a stock-out, version 1) delivered in a request of its own, then the dead letter of ``b``'s
    request refused three times (the stream's key of another type), the read taken again each time; then the
    dead letter written and the read settled. Returns the receiver."""
    receiver = DownForB()
    await client.set(DEAD_LETTERS, "not a stream")  # a dead letter's write fails (WRONGTYPE) until deleted
    await publish(client, [update("a", 0, 1), update("b", 5, 2)])  # the stock-out first, in a request of its own
    with serve(receiver.handle) as url:
        adapter = WebhookAdapter(url, SECRET)
        publisher = Publisher(config(max_attempts=1, redis_retry_s=0.01), client, adapter, PublisherMetrics())

        async def settled() -> bool:
            with receiver.lock:
                tried_b = sum("b" in skus for skus in receiver.got)
            if await client.type(DEAD_LETTERS) == b"string":
                if tried_b < 3:
                    return False
                await client.delete(DEAD_LETTERS)  # the write is taken from now on
            return await client.xlen(DEAD_LETTERS) > 0 and await pending(client) == 0

        try:
            await run_until(publisher, settled)
        finally:
            await adapter.close()
    return receiver


async def test_a_redis_error_part_way_through_a_read_loses_not_what_it_delivered(client: aioredis.Redis) -> None:
    """The versions a read delivered lived in a local of the delivery until the read settled: a Redis error
    after some were delivered (here the dead letter of the next request refused: the stream's key of
    another type) lost them, and the read taken again once Redis answered sent them again, at every
    retry while Redis kept failing."""
    receiver = await _a_read_failed_part_way(client)
    assert receiver.got.count(["a"]) == 1, receiver.got
    assert [fields[b"sku"] for _, fields in await client.xrange(DEAD_LETTERS)] == [b"b"]


async def test_what_a_read_delivered_before_a_redis_error_is_recorded_when_it_settles(client: aioredis.Redis) -> None:
    """Skipped when the read is taken again (known delivered), ``a``'s version was in no read's record: the read
    settled (its entries acknowledged) with the group's record of what was delivered (the hash the next holder, a
    restart or a takeover, starts from: C3, C4) below what the destination held, until the key changed again."""
    await _a_read_failed_part_way(client)
    assert await client.hgetall(config().delivered_key) == {b"a\t": b"1"}  # b dead-lettered
