"""The shopify adapter against a store that refuses a whole request because of one of its items (a
top-level GraphQL error, a user error naming no single quantity): the batch is sent again in halves,
so that only what the store refuses alone is dead-lettered and the rest, stock-outs first, is set
(C2, C4). Real local HTTP server, real Redis."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis

from publishers import DeliveryError
from tests.publishers.http_helpers import Clock, serve
from tests.publishers.shopify_store import Store, answer
from tests.publishers.test_shopify import (
    adapter,
    counted,
    dead_letters,
    item,
    loc,
    publish_once,
    update,
    user_errors,
)

POISON = item("poison")
SHAPES = {
    "top-level errors": {"unparsable": {POISON}},
    "user error without field": {"whole_refusals": {POISON: None}},
    "user error naming the list": {"whole_refusals": {POISON: ["input", "quantities"]}},
}


def poisoned_store(shape: str) -> Store:
    store = Store({(item(s), loc("store-1")): q for s, q in (("a", 10), ("b", 3), ("c", 1))}
                  | {(POISON, loc("store-1")): 4})
    for attribute, value in SHAPES[shape].items():
        setattr(store, attribute, value)
    return store


@pytest.mark.parametrize("shape", list(SHAPES))
async def test_a_batch_refused_whole_for_one_item_sets_the_rest_stock_out_first(
        client: aioredis.Redis, shape: str) -> None:
    """A store refusing the whole set for one item it cannot take had the whole batch dead-lettered as
    refused, its stock-out with it, and redelivered only at the next start: the 0 of "b", sold out in
    the same batch as the poison, never reached the store while the publisher ran (C2, C4)."""
    store = poisoned_store(shape)
    with serve(store.handle) as url:
        metrics = await publish_once(client, url, [
            update("a", 7, 1, previous=10), update("poison", 5, 2, previous=4),
            update("b", 0, 3, previous=3), update("c", 2, 4, previous=1)])
    assert store.levels == {(item("a"), loc("store-1")): 7, (item("b"), loc("store-1")): 0,
                            (item("c"), loc("store-1")): 2, (POISON, loc("store-1")): 4}
    assert store.applied_items[0] == item("b")  # the stock-out leads (C2)
    assert sorted(store.applied_items) == [item("a"), item("b"), item("c")]
    assert len(store.sets()) <= 2 * 4 - 1  # halves down to single updates, no more
    dead = dead_letters(await client.xrange("atp:{avail}:web:dlq:shopify"))
    assert list(dead) == [("poison", "store-1")]
    assert dead[("poison", "store-1")]["reason"].startswith(f"shopify: sku poison at store-1 ({POISON} at ")
    delivered = await client.hgetall("atp:{avail}:web:delivered:shopify")
    assert {k.decode(): int(v) for k, v in delivered.items()} == {"a\tstore-1": 1, "b\tstore-1": 3, "c\tstore-1": 4}
    assert counted(metrics) == {"delivered": 3, "failed": 1, "dead_lettered": 1}


async def test_a_baseline_whose_read_is_refused_whole_is_refused_alone() -> None:
    """A baseline's id the store cannot parse refused the read of every baseline of the batch."""
    store = poisoned_store("top-level errors")
    with serve(store.handle) as url:
        shopify = adapter(url, Clock())
        try:
            refused = await shopify.deliver("web", [update("poison", 5, 1, previous=None),
                                                    update("b", 0, 2, previous=None)])
        finally:
            await shopify.close()
    assert [r.update.sku for r in refused] == ["poison"] and "Invalid global id" in refused[0].reason
    assert store.levels[(item("b"), loc("store-1"))] == 0 and store.applied_items == [item("b")]


async def test_a_part_whose_answer_is_lost_fails_the_batch_and_its_retry_applies_each_part_once() -> None:
    """A retryable failure of a part fails the whole batch (the publisher retries it): the retry splits
    the same way and sends the same requests, with the same idempotency keys, so Shopify answers the
    part it applied with its first answer instead of applying it twice."""
    store = poisoned_store("user error without field")
    sets = 0

    def lose_the_first_part(s: Store) -> None:
        nonlocal sets
        sets += 1
        s.lose_next_answers = int(sets == 2)  # the whole batch's set, then its first half's: lost

    store.before_set = lose_the_first_part
    batch = [update("b", 0, 1, previous=3), update("a", 7, 2, previous=10), update("poison", 5, 3, previous=4),
             update("c", 2, 4, previous=1)]
    with serve(store.handle) as url:
        shopify = adapter(url, Clock())
        try:
            with pytest.raises(DeliveryError) as lost:
                await shopify.deliver("web", batch)
            assert lost.value.retryable and store.applied_items == [item("b"), item("a")]
            refused = await shopify.deliver("web", batch)
        finally:
            await shopify.close()
    assert [r.update.sku for r in refused] == ["poison"]
    assert store.applied_items == [item("b"), item("a"), item("c")] and store.applied == 2


SAME_FOR_EVERY_PART = {
    "ACCESS_DENIED": answer({"errors": [{"message": "no", "extensions": {"code": "ACCESS_DENIED"}}]}),
    "SHOP_INACTIVE": answer({"errors": [{"message": "no", "extensions": {"code": "SHOP_INACTIVE"}}]}),
    "INVALID_NAME": user_errors((["input", "name"], "INVALID_NAME")),
    "IDEMPOTENCY_KEY_PARAMETER_MISMATCH": user_errors((None, "IDEMPOTENCY_KEY_PARAMETER_MISMATCH")),
    "HTTP 403": (403, {}, b"HTTP 403 forbidden: the app lacks write_inventory"),
}


@pytest.mark.parametrize("said", list(SAME_FOR_EVERY_PART))
async def test_a_refusal_the_same_for_every_part_is_not_split(said: str) -> None:
    """Access denied, a shop not active, an error about the request's other input or its idempotency
    key: any part would be refused the same. One request, the batch refused as before."""
    store = poisoned_store("top-level errors")
    store.script = [SAME_FOR_EVERY_PART[said]]
    with serve(store.handle) as url:
        shopify = adapter(url, Clock())
        try:
            with pytest.raises(DeliveryError) as refused:
                await shopify.deliver("web", [update("b", 0, 1, previous=3), update("a", 7, 2, previous=10)])
        finally:
            await shopify.close()
    assert not refused.value.retryable and said in refused.value.reason and len(store.requests) == 1
