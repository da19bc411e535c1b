"""The shopify adapter against an emulated store behind a real local HTTP server: compare-and-set,
idempotency keys, quantities the store refuses, Retry-After, THROTTLED and cost pacing (waits
asserted on an injected clock)."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from atp_service.storage.channel_wire import to_fields
from publishers import DeliveryError, HttpSettings, Publisher, PublisherConfig, PublisherMetrics, ShopifyAdapter
from publishers import ShopifySettings as Settings
from reservation import ChannelUpdate, StockStatus
from tests.publishers.http_helpers import Answer, Clock, serve
from tests.publishers.shopify_store import TOKEN, VERSION, Store, answer, throttled

ITEM, LOCATION = "gid://shopify/InventoryItem/{sku}", "gid://shopify/Location/{location}"


def item(sku: str) -> str:
    return ITEM.format(sku=sku)


def loc(location: str) -> str:
    return LOCATION.format(location=location)


def update(sku: str, quantity: int, version: int, previous: int | None, location: str = "store-1") -> ChannelUpdate:
    return ChannelUpdate("web", sku, location, quantity, previous, StockStatus.IN_STOCK, version, 0, 0, 0)


@pytest.fixture
async def shop() -> AsyncIterator[tuple[Store, str]]:
    store = Store({(item("a"), loc("store-1")): 10, (item("b"), loc("store-1")): 3})
    with serve(store.handle) as url:
        yield store, url


def adapter(url: str, clock: Clock, **overrides: Any) -> ShopifyAdapter:
    settings = Settings(url, TOKEN, VERSION, ITEM, LOCATION, **overrides)
    return ShopifyAdapter(settings, sleep=clock.sleep, clock=clock)


async def test_set_carries_change_from_and_an_idempotency_key_and_no_removed_fields(
        shop: tuple[Store, str]) -> None:
    store, url = shop
    a = adapter(url, Clock())
    await a.deliver("web", [update("a", 7, 1, previous=10), update("b", 5, 2, previous=3)])
    await a.close()
    [request] = store.requests
    assert "@idempotent(key: $idempotencyKey)" in request["query"]
    uuid.UUID(request["variables"]["idempotencyKey"])  # a UUID, as Shopify recommends
    data = request["variables"]["input"]
    assert "ignoreCompareQuantity" not in json.dumps(request) and "compareQuantity" not in json.dumps(data)
    assert (data["name"], data["reason"]) == ("available", "correction")
    assert data["quantities"] == [
        {"inventoryItemId": item("a"), "locationId": loc("store-1"), "quantity": 7, "changeFromQuantity": 10},
        {"inventoryItemId": item("b"), "locationId": loc("store-1"), "quantity": 5, "changeFromQuantity": 3},
    ]
    assert store.levels == {(item("a"), loc("store-1")): 7, (item("b"), loc("store-1")): 5}


async def test_a_quantity_moved_in_the_store_is_read_and_set_again(shop: tuple[Store, str]) -> None:
    """The channel told 8, but an order in Shopify left 10 - 1 = 9: stale, read, set from 9."""
    store, url = shop
    store.levels[(item("a"), loc("store-1"))] = 9
    a = adapter(url, Clock())
    await a.deliver("web", [update("a", 7, 1, previous=8), update("b", 5, 2, previous=3)])
    kinds = ["set" if "inventorySetQuantities" in r["query"] else "read" for r in store.requests]
    assert kinds == ["set", "read", "set"]
    first, read, second = store.requests
    assert read["variables"] == {"i0": item("a"), "l0": loc("store-1")}  # only the stale one is read
    assert [q["changeFromQuantity"] for q in second["variables"]["input"]["quantities"]] == [9, 3]
    assert first["variables"]["idempotencyKey"] != second["variables"]["idempotencyKey"]  # another request
    assert store.levels[(item("a"), loc("store-1"))] == 7 and store.applied == 1

    # What the store holds is known now: the next change of "a" expects 7 without a read.
    await a.deliver("web", [update("a", 6, 3, previous=99)])
    await a.close()
    assert store.requests[-1]["variables"]["input"]["quantities"][0]["changeFromQuantity"] == 7
    assert store.levels[(item("a"), loc("store-1"))] == 6


async def test_a_store_that_keeps_moving_fails_the_batch_for_a_retry_after_bounded_rereads(
        shop: tuple[Store, str]) -> None:
    store, url = shop

    def sell_one(s: Store) -> None:  # every set meets a store that has just sold one more
        s.levels[(item("a"), loc("store-1"))] -= 1

    store.before_set = sell_one
    a = adapter(url, Clock(), cas_rounds=2)
    with pytest.raises(DeliveryError) as failed:
        await a.deliver("web", [update("a", 7, 1, previous=10)])
    await a.close()
    assert failed.value.retryable and "still moving" in failed.value.reason
    assert len(store.sets()) == 3 and len(store.requests) == 3 + 2 and store.applied == 0


async def test_a_baseline_is_read_first_and_not_set_when_the_store_already_has_it(shop: tuple[Store, str]) -> None:
    store, url = shop
    a = adapter(url, Clock())
    await a.deliver("web", [update("b", 3, 1, previous=None)])  # the store holds 3 already
    await a.deliver("web", [update("a", 4, 2, previous=None)])
    [unknown] = await a.deliver("web", [update("nope", 1, 3, previous=None)])  # refused, nothing to set
    await a.close()
    assert len(store.sets()) == 1 and store.sets()[0]["variables"]["input"]["quantities"][0]["changeFromQuantity"] == 10
    assert unknown.update.sku == "nope" and "no inventory level" in unknown.reason


async def test_retry_after_and_throttled_are_waited_as_asked(shop: tuple[Store, str]) -> None:
    store, url = shop
    store.script = [answer({"errors": "Too many requests"}, 429, {"Retry-After": "2.5"}),
                    throttled(requested=110, available=10, restore=100)]
    clock = Clock()
    a = adapter(url, clock)
    await a.deliver("web", [update("a", 7, 1, previous=10)])
    assert clock.slept == [2.5, pytest.approx(1.0)]  # Retry-After; then (110 - 10) / 100
    assert store.applied == 1 and len(store.requests) == 3

    # Cost pacing: the store reports 4 points left, restoring 50/s; a set last cost 10: wait 0.12 s first.
    store.bucket.update(currentlyAvailable=4.0, restoreRate=50.0)
    await a.deliver("web", [update("a", 6, 2, previous=7)])
    clock.slept.clear()
    await a.deliver("web", [update("a", 5, 3, previous=6)])
    assert clock.slept == [pytest.approx(0.12)]
    clock.now += 10  # long enough for the bucket to refill: no wait
    clock.slept.clear()
    await a.deliver("web", [update("a", 4, 4, previous=5)])
    assert clock.slept == []
    await a.close()


async def test_throttled_waits_are_bounded(shop: tuple[Store, str]) -> None:
    store, url = shop
    store.script = [throttled(requested=5000, available=0, restore=50)] * 3
    clock = Clock()
    a = adapter(url, clock, http=HttpSettings(max_wait_s=30, max_waits=2))
    with pytest.raises(DeliveryError) as failed:
        await a.deliver("web", [update("a", 7, 1, previous=10)])
    await a.close()
    assert failed.value.retryable and "throttled" in failed.value.reason
    assert clock.slept == [30, 30] and store.applied == 0  # 100 s asked, cut to 30; 2 waits, then give up


async def test_a_lost_answer_is_retried_with_the_same_key_and_applied_once(
        shop: tuple[Store, str], client: aioredis.Redis) -> None:
    """The publisher retries a batch whose answer was lost (HTTP 502 after the store applied it): the same
    idempotency key, so Shopify answers with the first result instead of a stale compare."""
    store, url = shop
    store.lose_next_answers = 1
    await client.xadd("atp:{avail}:web", to_fields(update("a", 7, 1, previous=10)), id="1-0")  # type: ignore[arg-type]
    config = PublisherConfig(channel="web", group="shopify", block_ms=50, rate_limit_per_s=1000,
                             backoff_base_s=0.01, backoff_max_s=0.02)
    clock = Clock()
    publisher = Publisher(config, client, adapter(url, clock), PublisherMetrics(), sleep=clock.sleep)
    await publisher.prepare()
    assert await publisher.hold()
    await publisher.process(await publisher._read(">"))
    await publisher.adapter.close()
    keys = [r["variables"]["idempotencyKey"] for r in store.sets()]
    assert len(keys) == 2 and keys[0] == keys[1] and store.applied == 1
    assert await client.hget("atp:{avail}:web:delivered:shopify", "a\tstore-1") == b"1"
    assert await client.xlen("atp:{avail}:web:dlq:shopify") == 0


def test_settings_refuse_an_api_path_in_the_url_and_versions_without_compare_and_set() -> None:
    with pytest.raises(ValueError, match="store's address"):
        Settings("https://shop.myshopify.com/admin/api/2025-01/graphql.json", TOKEN)
    with pytest.raises(ValueError, match="2026-01 or newer"):
        Settings("https://shop.myshopify.com", TOKEN, api_version="2025-10")
    assert Settings("https://shop.myshopify.com/", TOKEN).endpoint == (
        "https://shop.myshopify.com/admin/api/2026-10/graphql.json")


def dead_letters(fields: list[tuple[bytes, dict[bytes, bytes]]]) -> dict[tuple[str, str], dict[str, str]]:
    out = {}
    for _, entry in fields:
        f = {k.decode(): v.decode() for k, v in entry.items()}
        out[(f["sku"], f["location"])] = f
    return out


async def publish_once(client: aioredis.Redis, url: str, updates: list[ChannelUpdate]) -> PublisherMetrics:
    """One read of ``updates`` through a publisher to the store, settled."""
    for u in updates:
        await client.xadd("atp:{avail}:web", to_fields(u), id=f"{u.version}-0")  # type: ignore[arg-type]
    config = PublisherConfig(channel="web", group="shopify", block_ms=50, rate_limit_per_s=1000)
    clock, metrics = Clock(), PublisherMetrics()
    publisher = Publisher(config, client, adapter(url, clock), metrics, sleep=clock.sleep)
    await publisher.prepare()
    assert await publisher.hold()
    await publisher.process(await publisher._read(">"))
    await publisher.adapter.close()
    return metrics


def counted(metrics: PublisherMetrics) -> dict[str, float]:
    outcomes = {o: metrics.deliveries.labels("web", "shopify", o)._value.get() for o in ("delivered", "failed")}
    return {**outcomes, "dead_lettered": metrics.dead_lettered.labels("web")._value.get()}


async def test_quantities_the_store_refuses_are_dead_lettered_alone_and_the_rest_is_set(
        client: aioredis.Redis) -> None:
    """An unknown item (refused by the set) and a baseline at a location where the item has no level
    (found by the read) are dead-lettered with their reasons; the other two are set, "a" after a
    re-read (an order in Shopify moved it) in the same pass that drops the unknown item."""
    store = Store({(item("a"), loc("store-1")): 9, (item("b"), loc("store-1")): 3}, locations=(loc("store-2"),))
    with serve(store.handle) as url:
        metrics = await publish_once(client, url, [
            update("a", 7, 1, previous=10), update("nope", 1, 2, previous=4),
            update("b", 2, 3, previous=None, location="store-2"), update("b", 5, 4, previous=3)])
    assert store.levels == {(item("a"), loc("store-1")): 7, (item("b"), loc("store-1")): 5}
    first, second = (r["variables"] for r in store.sets())
    assert [q["inventoryItemId"] for q in first["input"]["quantities"]] == [item("a"), item("nope"), item("b")]
    assert [(q["inventoryItemId"], q["changeFromQuantity"]) for q in second["input"]["quantities"]] == [
        (item("a"), 9), (item("b"), 3)]
    assert first["idempotencyKey"] != second["idempotencyKey"]

    dead = dead_letters(await client.xrange("atp:{avail}:web:dlq:shopify"))
    assert sorted(dead) == [("b", "store-2"), ("nope", "store-1")]
    assert dead[("nope", "store-1")]["reason"].startswith(f"shopify: sku nope at store-1 ({item('nope')} at ")
    assert "INVALID_INVENTORY_ITEM" in dead[("nope", "store-1")]["reason"]
    assert dead[("b", "store-2")]["reason"].startswith(f"shopify: sku b at store-2 ({item('b')} at {loc('store-2')})")
    assert "no inventory level" in dead[("b", "store-2")]["reason"]
    assert {f["version"] for f in dead.values()} == {"2", "3"} and {f["attempts"] for f in dead.values()} == {"1"}
    delivered = await client.hgetall("atp:{avail}:web:delivered:shopify")
    assert {k.decode(): int(v) for k, v in delivered.items()} == {"a\tstore-1": 1, "b\tstore-1": 4}
    assert (await client.xpending("atp:{avail}:web", "shopify"))["pending"] == 0
    assert counted(metrics) == {"delivered": 2, "failed": 2, "dead_lettered": 2}


async def test_a_batch_the_store_refuses_whole_is_dead_lettered_row_by_row_after_one_set(
        client: aioredis.Redis) -> None:
    store = Store({(item("a"), loc("store-1")): 10}, locations=(loc("store-2"),))
    with serve(store.handle) as url:
        metrics = await publish_once(client, url, [
            update("nope", 1, 1, previous=4), update("a", 2, 2, previous=5, location="store-2"),
            update("a", 3, 3, previous=None, location="store-3")])
    assert len(store.sets()) == 1 and store.applied == 0  # nothing left to send after the refusals
    assert len(store.requests) == 2  # the baseline's read, the one set
    dead = dead_letters(await client.xrange("atp:{avail}:web:dlq:shopify"))
    assert "ITEM_NOT_STOCKED_AT_LOCATION" in dead[("a", "store-2")]["reason"]
    assert "INVALID_INVENTORY_ITEM" in dead[("nope", "store-1")]["reason"]
    assert "no inventory level" in dead[("a", "store-3")]["reason"]
    assert await client.hlen("atp:{avail}:web:delivered:shopify") == 0
    assert counted(metrics) == {"delivered": 0, "failed": 3, "dead_lettered": 3}


def user_errors(*errors: tuple[list[str] | None, str]) -> Answer:
    return answer({"data": {"inventorySetQuantities": {"inventoryAdjustmentGroup": None, "userErrors": [
        {"field": f, "code": code, "message": code.lower()} for f, code in errors]}}})


async def test_refusals_after_the_drop_fail_the_batch_and_errors_about_the_request_fail_it_whole(
        shop: tuple[Store, str]) -> None:
    """At most one set without refused quantities per batch: a store refusing more after it fails the
    attempt (retried later); an error about the request itself (its reason) still refuses the whole batch."""
    store, url = shop
    row = ["input", "quantities", "0", "locationId"]
    store.script = [user_errors((row, "INVALID_LOCATION")), user_errors((row, "ITEM_NOT_STOCKED_AT_LOCATION"))]
    a = adapter(url, Clock())
    with pytest.raises(DeliveryError) as again:
        await a.deliver("web", [update("a", 7, 1, previous=10), update("b", 5, 2, previous=3)])
    assert again.value.retryable and "more quantities refused" in again.value.reason
    assert [len(r["variables"]["input"]["quantities"]) for r in store.sets()] == [2, 1] and store.applied == 0

    store.script = [user_errors((["input", "reason"], "INVALID_REASON"), (row, "INVALID_LOCATION"))]
    with pytest.raises(DeliveryError) as whole:
        await a.deliver("web", [update("a", 7, 3, previous=10), update("b", 5, 4, previous=3)])
    await a.close()
    assert not whole.value.retryable and "INVALID_REASON" in whole.value.reason and len(store.sets()) == 3


@pytest.mark.parametrize("data", [[1], "ok", 7])
async def test_an_answer_whose_data_is_not_an_object_fails_the_try(data: Any) -> None:
    """A 200 whose ``data`` is no object (a proxy's page, a broken gateway): reading a baseline's
    quantity raised AttributeError out of the adapter, which no retry loop catches (the publisher
    stopped). It is a failed try now, retryable."""
    body = json.dumps({"data": data}).encode()
    with serve(lambda *_: (200, {"Content-Type": "application/json"}, body)) as url:
        shopify = adapter(url, Clock())
        try:
            with pytest.raises(DeliveryError, match="not a GraphQL response") as told:
                await shopify.deliver("web", [update("a", 3, 1, None)])
            assert told.value.retryable
        finally:
            await shopify.close()


async def test_a_dead_letter_reason_stays_short_whatever_the_store_answers(client: aioredis.Redis) -> None:
    """A set refused for its request (its reason) alongside an error per quantity: every update of the
    batch was dead-lettered with all of the answer's user errors in its reason (the batch's size x the
    answer's, up to --max-answer-bytes each, in one MULTI), where a webhook's keeps 200 characters."""
    n = 100
    store = Store({(item(f"s{k}"), loc("store-1")): 1 for k in range(n)})
    per_row = [(["input", "quantities", str(k), "inventoryItemId"], "INVALID_INVENTORY_ITEM") for k in range(n)]
    store.script = [user_errors((["input", "reason"], "INVALID_REASON"), *per_row)]
    with serve(store.handle) as url:
        metrics = await publish_once(client, url, [update(f"s{k}", 2, k + 1, previous=1) for k in range(n)])
    dead = dead_letters(await client.xrange("atp:{avail}:web:dlq:shopify"))
    assert counted(metrics)["dead_lettered"] == n and len(dead) == n
    for letter in dead.values():
        assert "INVALID_REASON" in letter["reason"]
        assert len(letter["reason"]) <= 1000, f"{len(letter['reason'])} characters: {letter['reason'][:300]}..."
