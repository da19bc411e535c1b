"""Stock-outs first also after a retry: a read's stock-outs that failed every try while the destination was
down go again as soon as it answers, before the read's other changes (C2). A real Redis written as the desk
writes, a real local webhook receiver."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import redis.asyncio as aioredis

from atp_service.storage.channel_store import ChannelStore
from publishers import Publisher, PublisherMetrics, WebhookAdapter
from tests.publishers.test_publisher import SECRET, Receiver, config, pending, receiver_factory
from tests.publishers.test_publisher_redeliver import DLQ, REMEMBERED, last_values
from tests.publishers.test_publisher_trimmed import desk_writes, value
from tests.waiting import until

__all__ = ["receiver_factory"]  # a fixture


async def _deliver_every_value(client: aioredis.Redis, receiver_factory: Any, receiver: Receiver,
                               values: int) -> None:
    """Runs a publisher (two tries a value, requests of two, no redelivery pass but the one after a read) to
    ``receiver`` until its ``values`` values are delivered, the read settled and nothing owed, then stops it."""
    running = Publisher(config(max_attempts=2, delivery_batch=2, redeliver_interval_s=3600.0), client,
                        WebhookAdapter(receiver_factory(receiver), SECRET), PublisherMetrics())
    task = asyncio.create_task(running.run())

    async def settled() -> bool:
        return (len(last_values(receiver)) == values and await pending(client) == 0
                and await client.hlen(REMEMBERED) == 0)

    try:
        await until(settled, "every value delivered, the read settled and nothing owed")
    finally:
        running.stop()
        await asyncio.wait_for(task, 5)
        await running.adapter.close()


async def test_stock_outs_that_failed_every_try_go_before_the_rest_of_the_read_once_it_is_answered_C2(
        store: ChannelStore, client: aioredis.Redis, receiver_factory: Any) -> None:
    """A read of a stock-out and four changes, the destination down for the stock-out's every try and back for
    the next request: the changes were delivered, each request with its tokens (at 10 updates/s, up to ~50 s for
    a read of 500), and only then the stock-out, by the redelivery pass that follows a read — the destination
    selling what is gone meanwhile. Now it goes right after the first request answered, once more (it is owed
    already: dead-lettered once, not twice)."""
    receiver = Receiver(fail_first=2)  # the stock-out's two tries
    await desk_writes(store, [value("z", 0, 1), value("a", 1, 2), value("b", 2, 3), value("c", 3, 4),
                              value("d", 4, 5)])
    await _deliver_every_value(client, receiver_factory, receiver, 5)
    order = [u["sku"] for u in receiver.accepted]
    assert order == ["a", "b", "z", "c", "d"], order  # the request that told the destination is back, then "z"
    assert await client.xlen(DLQ) == 1  # "z", once


class Sizes(Receiver):
    """A ``Receiver`` that also records the SKUs of each request it takes."""

    def __init__(self, fail_first: int) -> None:
        super().__init__(fail_first=fail_first)
        self.taken: list[list[str]] = []

    def handle(self, body: bytes, headers: dict[str, str]) -> int:
        code = super().handle(body, headers)
        if code == 200:
            with self.lock:
                self.taken.append([u["sku"] for u in json.loads(body)["updates"]])
        return code


async def test_the_stock_outs_sent_once_more_go_in_requests_of_the_stock_outs_size_C2(
        store: ChannelStore, client: aioredis.Redis, receiver_factory: Any) -> None:
    """Stock-outs go in requests of their own of at most ``--batch`` and ``--burst`` (a request waits for a token per
    update; Shopify refuses an input of more than 250). Those of every request that failed were sent once more in one
    request of them all: 500 stock-outs to a destination down for two requests of 100, then back, went as one of 200
    (past --batch; past Shopify's limit at --batch 250), its first waiting for the tokens of the last (C2)."""
    receiver = Sizes(fail_first=3)  # [z1, z2] twice, [z3, z4] once (the destination down), then back
    await desk_writes(store, [value("z1", 0, 1), value("z2", 0, 2), value("z3", 0, 3), value("z4", 0, 4),
                              value("a", 1, 5)])
    await _deliver_every_value(client, receiver_factory, receiver, 5)
    assert receiver.taken == [["a"], ["z1", "z2"], ["z3", "z4"]], receiver.taken
    assert await client.xlen(DLQ) == 4  # each stock-out once


class Failing(Sizes):
    """Fails (503) the requests whose numbers (from 1) are in ``fail``."""

    def __init__(self, fail: set[int]) -> None:
        super().__init__(fail_first=0)
        self.fail, self.seen = fail, 0

    def handle(self, body: bytes, headers: dict[str, str]) -> int:
        with self.lock:
            self.seen += 1
            if self.seen in self.fail:
                return 503
        return super().handle(body, headers)


async def test_stock_outs_not_sent_once_more_when_the_first_such_request_fails_go_after_the_next_answered_C2(
        store: ChannelStore, client: aioredis.Redis, receiver_factory: Any) -> None:
    """The first request of the stock-outs sent once more fails (down again): it stays owed, dead-lettered once, and
    those not tried again yet go after the next request answered, not after the read's every change."""
    receiver = Failing({1, 2, 3, 5})  # [z1, z2] twice, [z3, z4] once, [a, b] taken, [z1, z2] again: failed
    await desk_writes(store, [value("z1", 0, 1), value("z2", 0, 2), value("z3", 0, 3), value("z4", 0, 4),
                              value("a", 1, 5), value("b", 2, 6), value("c", 3, 7)])
    await _deliver_every_value(client, receiver_factory, receiver, 7)
    # [z3, z4] right after [c], the next answered; [z1, z2] by the redelivery pass that follows the read.
    assert receiver.taken == [["a", "b"], ["c"], ["z3", "z4"], ["z1", "z2"]], receiver.taken
    assert await client.xlen(DLQ) == 4  # each stock-out once
