"""A destination down for a read's whole delivery: its requests are each tried once after one failed every try,
not ``max_attempts`` times each (a real Redis stream, a real local HTTP server)."""

from __future__ import annotations

import json
from typing import Any

import redis.asyncio as aioredis

from publishers import Publisher, PublisherMetrics, WebhookAdapter

from .test_publisher import SECRET, Receiver, config, pending, publish, receiver_factory, run_until, update

__all__ = ["receiver_factory"]  # a fixture


class Poisoned(Receiver):
    """Fails (503) every request that carries a SKU starting with ``poison``; takes the others."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[list[str]] = []

    def handle(self, body: bytes, headers: dict[str, str]) -> int:
        skus = [u["sku"] for u in json.loads(body)["updates"]]
        with self.lock:
            self.sent.append(skus)
        if any(sku.startswith("poison") for sku in skus):
            with self.lock:
                self.attempts += 1
            return 503
        return super().handle(body, headers)


async def _dead_letters(client: aioredis.Redis) -> list[tuple[str, str]]:
    dead = await client.xrange("atp:{avail}:web:dlq:webhook")
    return [(f[b"sku"].decode(), f[b"attempts"].decode()) for _, f in dead]


async def test_a_down_destination_gets_each_other_request_of_a_read_once(client: aioredis.Redis,
                                                                         receiver_factory: Any) -> None:
    """An outage over a read of 25 stock-outs and 5 changes (requests of 10, 10, 5 and 5) sent each request
    ``max_attempts`` times with its backoff: at the defaults 8 tries and about 47 s of backoff per request, a read of
    500 stock-outs at a burst of 10 took 50 such requests (some 40 min) while stock-outs published meanwhile waited
    behind them (C2), all to dead-letter them in the end. Once a request failed its every try, the others of the
    read get one try each, and are dead-lettered after it: owed their newest value by the redelivery as before."""
    down = Receiver(always_fail=True)
    await publish(client, [update(f"gone-{n}", 0, n + 1) for n in range(25)] +
                  [update(f"sku-{n}", n + 1, n + 26) for n in range(5)])
    publisher = Publisher(config(max_attempts=3, burst=10, delivery_batch=10), client,
                          WebhookAdapter(receiver_factory(down), SECRET), PublisherMetrics())

    async def settled() -> bool:
        return await client.xlen("atp:{avail}:web:dlq:webhook") == 30 and await pending(client) == 0

    await run_until(publisher, settled)
    await publisher.adapter.close()
    assert down.attempts == 3 + 1 + 1 + 1, down.attempts
    dead = await _dead_letters(client)
    assert [sku for sku, _ in dead[:25]] == [f"gone-{n}" for n in range(25)]  # the stock-outs first still
    assert [tries for _, tries in dead] == ["3"] * 10 + ["1"] * 20
    owed = await client.hgetall("atp:{avail}:web:redeliver:webhook")
    assert len(owed) == 30  # every key owed its newest value once the destination answers (C4)


async def test_a_request_answered_after_one_failed_gives_the_next_their_every_try(client: aioredis.Redis,
                                                                                   receiver_factory: Any) -> None:
    """One request failing every try (a payload the destination fails on) does not cut the others short for
    good: one answered after it brings back every try, and what the destination takes is delivered (C4)."""
    receiver = Poisoned()
    await publish(client, [update("poison-1", 0, 1), update("ok-1", 0, 2), update("poison-2", 0, 3),
                           update("ok-2", 0, 4)])
    publisher = Publisher(config(max_attempts=3, burst=1, delivery_batch=10), client,
                          WebhookAdapter(receiver_factory(receiver), SECRET), PublisherMetrics())

    async def settled() -> bool:
        return await client.xlen("atp:{avail}:web:dlq:webhook") == 2 and await pending(client) == 0

    await run_until(publisher, settled)
    await publisher.adapter.close()
    # Each stock-out that failed every try is sent once more as soon as one is answered, before the rest (C2),
    # and left owed, dead-lettered once, when that fails too.
    assert receiver.sent == ([["poison-1"]] * 3 + [["ok-1"], ["poison-1"]]
                             + [["poison-2"]] * 3 + [["ok-2"], ["poison-2"]])
    assert sorted(u["sku"] for u in receiver.accepted) == ["ok-1", "ok-2"]
    assert await _dead_letters(client) == [("poison-1", "3"), ("poison-2", "3")]
