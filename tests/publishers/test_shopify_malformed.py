"""A 200 from the store's endpoint whose GraphQL answer is malformed (a proxy's or a broken gateway's page, a
version of the API answering otherwise) is a failed try, retried, never an exception out of the adapter that
ends the publisher. A real Redis and the emulated store behind a real local HTTP server."""

from __future__ import annotations

from typing import Any

import pytest
import redis.asyncio as aioredis

from tests.publishers.http_helpers import serve
from tests.publishers.shopify_store import Store, answer
from tests.publishers.test_shopify import counted, dead_letters, item, loc, publish_once, update


@pytest.mark.parametrize("payload", [
    {"errors": True},  # no list of errors
    {"errors": 5},
    {"data": {"inventorySetQuantities": {"userErrors": 5, "inventoryAdjustmentGroup": None}}},  # no list
    {"data": {"inventorySetQuantities": {"userErrors": ["quantity refused"]}}},  # user errors that are no objects
    {"data": {"inventorySetQuantities": {"userErrors": [{"code": ["STALE"], "message": "?"}]}}},  # no text code
], ids=["errors-true", "errors-int", "user-errors-int", "user-errors-text", "user-error-code-list"])
async def test_a_malformed_graphql_answer_fails_the_try_and_the_stock_out_is_set_at_the_next(
        client: aioredis.Redis, payload: dict[str, Any]) -> None:
    """The set of a stock-out answered so once: TypeError or AttributeError rose out of the adapter, which no
    retry loop catches — the publisher ended, its supervisor started it again on the same pending entry, and
    for as long as the store answered so the stock-out never reached it, no dead letter, no metric saying why
    (C2, C4). Now the try fails (retryable) and the next sets it."""
    store = Store({(item("a"), loc("store-1")): 10})
    store.script = [answer(payload)]
    with serve(store.handle) as url:
        metrics = await publish_once(client, url, [update("a", 0, 1, previous=10)])
    assert store.levels[(item("a"), loc("store-1"))] == 0 and len(store.sets()) == 2
    assert counted(metrics) == {"delivered": 1, "failed": 0, "dead_lettered": 0}
    assert metrics.deliveries.labels("web", "shopify", "retried")._value.get() == 1
    assert dead_letters(await client.xrange("atp:{avail}:web:dlq:shopify")) == {}
    assert int((await client.xpending("atp:{avail}:web", "shopify"))["pending"]) == 0


async def test_a_graphql_error_whose_extensions_are_no_object_is_a_refusal_named_not_a_crash(
        client: aioredis.Redis) -> None:
    """A top-level error whose ``extensions`` is no object: AttributeError out of the adapter (the publisher
    ended). It has no code, as an error without ``extensions``: refused, dead-lettered with its message and
    owed its newest value at the next start."""
    store = Store({(item("a"), loc("store-1")): 10})
    store.script = [answer({"errors": [{"message": "Field 'x' doesn't exist", "extensions": "?"}]})]
    with serve(store.handle) as url:
        metrics = await publish_once(client, url, [update("a", 0, 1, previous=10)])
    assert counted(metrics) == {"delivered": 0, "failed": 1, "dead_lettered": 1}
    [letter] = dead_letters(await client.xrange("atp:{avail}:web:dlq:shopify")).values()
    assert "Field 'x' doesn't exist" in letter["reason"]
    assert await client.hgetall("atp:{avail}:web:redeliver:shopify") == {b"a\tstore-1": b"1 refused"}
    assert int((await client.xpending("atp:{avail}:web", "shopify"))["pending"]) == 0


@pytest.mark.parametrize("payload", [
    {"data": {}},  # the alias missing: no answer about the item, not an unknown one (null)
    {"data": None},
    {"data": {"q0": "?"}},  # an item that is no object
    {"data": {"q0": {"inventoryLevel": {"quantities": 5}}}},  # quantities that are no list
    {"data": {"q0": {"inventoryLevel": "?"}}},
], ids=["no-alias", "data-null", "item-text", "quantities-int", "level-text"])
async def test_a_malformed_answer_to_the_read_fails_the_try_and_the_stock_out_is_set_at_the_next(
        client: aioredis.Redis, payload: dict[str, Any]) -> None:
    """The read of a quantity not known yet answered so once: an answer that says nothing of the item (its
    alias missing, the data null or of another shape) was read as an item the store does not have — the
    stock-out refused for good, dead-lettered and owed only until the next start's first pass (C2, C4) — and
    quantities that are no list raised TypeError out of the adapter, which ended the publisher. Now the try
    fails (retryable) and the next reads and sets it."""
    store = Store({(item("a"), loc("store-1")): 10})
    store.script = [answer(payload)]
    with serve(store.handle) as url:
        metrics = await publish_once(client, url, [update("a", 0, 1, previous=None)])
    assert store.levels[(item("a"), loc("store-1"))] == 0 and len(store.sets()) == 1
    assert counted(metrics) == {"delivered": 1, "failed": 0, "dead_lettered": 0}
    assert metrics.deliveries.labels("web", "shopify", "retried")._value.get() == 1
    assert dead_letters(await client.xrange("atp:{avail}:web:dlq:shopify")) == {}


async def test_a_graphql_error_whose_code_is_no_text_is_one_without_a_code_not_a_crash(client: aioredis.Redis) -> None:
    """A top-level error whose ``extensions.code`` is a list: TypeError (unhashable) out of the adapter, the
    publisher ended. It has no code, as an error whose extensions are no object: refused, dead-lettered."""
    store = Store({(item("a"), loc("store-1")): 10})
    store.script = [answer({"errors": [{"message": "Throttled?", "extensions": {"code": ["THROTTLED"]}}]})]
    with serve(store.handle) as url:
        metrics = await publish_once(client, url, [update("a", 0, 1, previous=10)])
    assert counted(metrics) == {"delivered": 0, "failed": 1, "dead_lettered": 1}
    [letter] = dead_letters(await client.xrange("atp:{avail}:web:dlq:shopify")).values()
    assert "Throttled?" in letter["reason"]
