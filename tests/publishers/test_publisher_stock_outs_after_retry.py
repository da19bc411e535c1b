"""Stock-outs first also after a retry: a read's stock-outs that failed every try while the destination was
down go again as soon as it answers, before the read's other changes (C2). A real Redis written as the desk
writes, a real local webhook receiver."""

from __future__ import annotations

import asyncio
from typing import Any

import redis.asyncio as aioredis

from atp_service.storage.channel_store import ChannelStore
from publishers import Publisher, PublisherMetrics, WebhookAdapter
from tests.publishers.test_publisher import SECRET, Receiver, config, pending, receiver_factory
from tests.publishers.test_publisher_redeliver import DLQ, REMEMBERED, last_values
from tests.publishers.test_publisher_trimmed import desk_writes, value
from tests.waiting import until

__all__ = ["receiver_factory"]  # a fixture


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
    running = Publisher(config(max_attempts=2, delivery_batch=2, redeliver_interval_s=3600.0), client,
                        WebhookAdapter(receiver_factory(receiver), SECRET), PublisherMetrics())
    task = asyncio.create_task(running.run())

    async def settled() -> bool:
        return (len(last_values(receiver)) == 5 and await pending(client) == 0
                and await client.hlen(REMEMBERED) == 0)

    try:
        await until(settled, "every value delivered, the read settled and nothing owed")
    finally:
        running.stop()
        await asyncio.wait_for(task, 5)
        await running.adapter.close()
    order = [u["sku"] for u in receiver.accepted]
    assert order == ["a", "b", "z", "c", "d"], order  # the request that told the destination is back, then "z"
    assert await client.xlen(DLQ) == 1  # "z", once
