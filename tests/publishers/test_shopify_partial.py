"""A GraphQL answer with top-level ``errors`` and the mutation's ``data`` all the same: the set ran (GraphQL nulls a
field whose resolution failed; those errors are about fields of its result, such as an ``inventoryAdjustmentGroup``
the app may not read), and its ``userErrors`` say what it did. Read as a refusal before it ran, an applied stock-out
was dead-lettered, counted failed and owed, or retried with its key until it was (docs/CHANNELS.md, "Refused as a
whole": a top-level error is a refusal "before it runs"). Real local HTTP server (the emulated store), real Redis."""

from __future__ import annotations

import json
from typing import Any

import pytest
import redis.asyncio as aioredis

from tests.publishers.http_helpers import Answer, serve
from tests.publishers.shopify_store import Store
from tests.publishers.test_shopify import counted, dead_letters, item, loc, publish_once, update

A = (item("a"), loc("store-1"))
RESULT_FIELD_ERRORS = {
    "access to a field of the result": {"code": "ACCESS_DENIED"},
    "an error naming no code": {},
    "Shopify's own failure on a field": {"code": "INTERNAL_SERVER_ERROR"},
}


def with_result_field_error(store: Store, extensions: dict[str, Any]) -> Any:
    """The store's handler, each set's answer carrying a top-level error about a field of its result."""
    def handle(path: str, headers: dict[str, str], body: bytes) -> Answer:
        status, answer_headers, raw = store.handle(path, headers, body)
        payload = json.loads(raw) if status == 200 else {}
        if "inventorySetQuantities" in (payload.get("data") or {}):
            payload["errors"] = [{"message": "Access denied for inventoryAdjustmentGroup field.",
                                  "path": ["inventorySetQuantities", "inventoryAdjustmentGroup"],
                                  "extensions": extensions}]
            raw = json.dumps(payload).encode()
        return status, answer_headers, raw
    return handle


@pytest.mark.parametrize("error", list(RESULT_FIELD_ERRORS))
async def test_a_set_that_ran_is_delivered_whatever_top_level_errors_its_answer_carries(
        client: aioredis.Redis, error: str) -> None:
    store = Store({A: 10})
    with serve(with_result_field_error(store, RESULT_FIELD_ERRORS[error])) as url:
        metrics = await publish_once(client, url, [update("a", 0, 1, previous=10)])
    assert store.levels[A] == 0 and store.applied == 1
    assert dead_letters(await client.xrange("atp:{avail}:web:dlq:shopify")) == {}, "an applied set dead-lettered"
    assert counted(metrics) == {"delivered": 1, "failed": 0, "dead_lettered": 0}
    assert await client.hgetall("atp:{avail}:web:delivered:shopify") == {b"a\tstore-1": b"1"}
    assert await client.hgetall("atp:{avail}:web:redeliver:shopify") == {}


async def test_the_user_errors_of_a_set_that_ran_are_acted_on_as_without_top_level_errors(
        client: aioredis.Redis) -> None:
    """The store moved (an order): the set that ran says so in its ``userErrors``; the quantity is read and set
    again, not dead-lettered for the top-level error beside it."""
    store = Store({A: 8})
    with serve(with_result_field_error(store, {"code": "ACCESS_DENIED"})) as url:
        metrics = await publish_once(client, url, [update("a", 0, 1, previous=10)])
    assert store.levels[A] == 0 and store.applied == 1
    assert [q["changeFromQuantity"] for s in store.sets() for q in s["variables"]["input"]["quantities"]] == [10, 8]
    assert counted(metrics) == {"delivered": 1, "failed": 0, "dead_lettered": 0}


async def test_a_set_whose_user_errors_are_lost_to_an_error_is_not_taken_as_applied(client: aioredis.Redis) -> None:
    """``userErrors`` null beside a top-level error: whether the set applied is not said; never counted delivered."""
    store = Store({A: 10})
    payload = {"data": {"inventorySetQuantities": {"inventoryAdjustmentGroup": None, "userErrors": None}},
               "errors": [{"message": "Internal error", "path": ["inventorySetQuantities", "userErrors"]}]}
    store.script = [(200, {"Content-Type": "application/json"}, json.dumps(payload).encode())]
    with serve(store.handle) as url:
        metrics = await publish_once(client, url, [update("a", 0, 1, previous=10)])
    assert counted(metrics)["delivered"] == 0 and store.applied == 0


async def test_sets_that_ran_with_errors_are_said_at_most_once_a_second(caplog: pytest.LogCaptureFixture) -> None:
    """An app without the scope to read a field of the result gets the errors with every set: a warning per batch
    flooded the log on the busiest day. One line per ``SPLIT_LOG_EVERY_S``, the next saying how many were left out."""
    import logging

    from tests.publishers.http_helpers import Clock
    from tests.publishers.test_shopify import adapter

    store = Store({A: 10})
    clock = Clock()
    with serve(with_result_field_error(store, {"code": "ACCESS_DENIED"})) as url, caplog.at_level(logging.WARNING):
        shopify = adapter(url, clock)
        try:
            for version, quantity in enumerate((7, 5, 3), 1):
                await shopify.deliver("web", [update("a", quantity, version, previous=10 if version == 1 else None)])
            said = [r for r in caplog.records if "set ran" in r.getMessage()]
            assert len(said) == 1 and store.levels[A] == 3, [r.getMessage() for r in said]
            clock.now += 1.0
            await shopify.deliver("web", [update("a", 0, 4, previous=3)])
        finally:
            await shopify.close()
    said = [r.getMessage() for r in caplog.records if "set ran" in r.getMessage()]
    assert len(said) == 2 and "2 such answers left out" in said[1], said


async def test_a_set_answered_user_errors_null_without_errors_is_not_taken_as_applied(
        client: aioredis.Redis) -> None:
    """``userErrors`` is a non-null list in Shopify's schema: null with no top-level error is no answer GraphQL gives
    (a proxy's or gateway's rewrite), and says nothing of what applied. Read as ``[]`` (``or []``), the set was counted
    delivered and remembered as the store's number, where the store held the old one (C-rules). A failed try now: the
    next one sets it."""
    store = Store({A: 10})
    payload = {"data": {"inventorySetQuantities": {"inventoryAdjustmentGroup": None, "userErrors": None}}}
    store.script = [(200, {"Content-Type": "application/json"}, json.dumps(payload).encode())]
    with serve(store.handle) as url:
        metrics = await publish_once(client, url, [update("a", 0, 1, previous=10)])
    assert (store.applied, store.levels[A], len(store.sets())) == (1, 0, 2), "counted delivered, never set"
    assert counted(metrics) == {"delivered": 1, "failed": 0, "dead_lettered": 0}
