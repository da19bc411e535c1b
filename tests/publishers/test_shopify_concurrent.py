"""A Shopify answer saying the same request (its idempotency key) is still in progress there, alongside other user
errors: the request did not run this time, and the try in progress decides it; its key is sent again (retried) and
the answer to it, once that try has ended, is acted on part by part (C2, C4). Real local HTTP server (the emulated
store), real Redis."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis

from tests.publishers.http_helpers import serve
from tests.publishers.shopify_store import Store
from tests.publishers.test_shopify import counted, dead_letters, item, loc, publish_once, update, user_errors

A = (item("a"), loc("store-1"))
IN_PROGRESS = (None, "IDEMPOTENCY_CONCURRENT_REQUEST")
BESIDE = {
    "a quantity refused": (["input", "quantities", "1", "inventoryItemId"], "INVALID_INVENTORY_ITEM"),
    "a stale compare": (["input", "quantities", "0", "changeFromQuantity"], "CHANGE_FROM_QUANTITY_STALE"),
    "a key failed before": (None, "IDEMPOTENCY_PREVIOUS_ATTEMPT_FAILED"),
}


@pytest.mark.parametrize("beside", list(BESIDE))
async def test_a_request_in_progress_with_other_errors_is_retried_with_its_key_not_dead_lettered(
        client: aioredis.Redis, beside: str) -> None:
    """``IDEMPOTENCY_CONCURRENT_REQUEST`` in one reply with another user error was read as a refusal of the request
    itself, for good: the whole request dead-lettered at once, the stock-out of "a" with it (never set while the
    publisher ran, C2), though nothing had been decided yet: the try in progress decides, and its key learns how."""
    store = Store({A: 10})
    store.script = [user_errors(IN_PROGRESS, BESIDE[beside])]
    with serve(store.handle) as url:
        metrics = await publish_once(client, url, [update("a", 0, 1, previous=10), update("nope", 0, 2, previous=4)])
    assert store.levels[A] == 0, "the stock-out was dead-lettered with the request in progress"
    first, again = (s["variables"] for s in store.sets()[:2])
    assert again == first  # the same request, the same key: Shopify answers it with the try in progress's outcome
    dead = dead_letters(await client.xrange("atp:{avail}:web:dlq:shopify"))
    assert list(dead) == [("nope", "store-1")] and "INVALID_INVENTORY_ITEM" in dead[("nope", "store-1")]["reason"]
    assert await client.hgetall("atp:{avail}:web:delivered:shopify") == {b"a\tstore-1": b"1"}
    assert counted(metrics)["dead_lettered"] == 1
