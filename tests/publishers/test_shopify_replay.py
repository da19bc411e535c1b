"""Whose write the store holds, after a set whose answer was lost: the shopify adapter never infers from a quantity
that its own try landed. A retry of the request sends its key, and Shopify answers with what that key did; a quantity
is compared only to decide what to send next: one the store holds already (whoever set it) is not set again, any
other is set from what the store holds, and ``changeFromQuantity`` keeps a late landing of an earlier try from
overwriting a later set (C2, C4; docs/CHANNELS.md, "Whose write the store holds"). Real local HTTP server (the
emulated store)."""

from __future__ import annotations

import json

import pytest

from publishers import DeliveryError
from tests.publishers.http_helpers import Clock, serve
from tests.publishers.shopify_store import TOKEN, VERSION, Store
from tests.publishers.test_shopify import adapter, item, loc, update

A = (item("a"), loc("store-1"))
LOST = (502, {}, b"Bad Gateway")
"""An answer lost before the store ran the request (a proxy's failure): nothing applied, the key unspent."""


def kinds(store: Store) -> list[str]:
    return ["set" if "inventorySetQuantities" in r["query"] else "read" for r in store.requests]


async def test_a_merchant_setting_the_number_before_the_retry_is_not_set_again_nor_twice() -> None:
    """The 7's set lost before it ran; a merchant sets 7 by hand: the retry (its key, not spent) meets a stale compare,
    reads 7 and sends nothing more. The store holds the channel's number; nothing was applied on top of it."""
    store = Store({A: 10})
    store.script = [LOST]
    with serve(store.handle) as url:
        shopify = adapter(url, Clock())
        try:
            with pytest.raises(DeliveryError) as lost:
                await shopify.deliver("web", [update("a", 7, 1, previous=10)])
            assert lost.value.retryable
            store.levels[A] = 7  # by hand, in Shopify's admin
            assert await shopify.deliver("web", [update("a", 7, 1, previous=10)]) == []
            assert await shopify.deliver("web", [update("a", 0, 2, previous=7)]) == []  # expects the 7 read
        finally:
            await shopify.close()
    assert kinds(store) == ["set", "set", "read", "set"] and store.applied == 1 and store.levels[A] == 0
    assert store.sets()[0]["variables"] == store.sets()[1]["variables"]  # the retry: the same request, its key


async def test_a_merchant_edit_after_the_lost_set_landed_is_not_taken_for_it_and_the_next_update_sets_over_it() -> None:
    """The 7 applied, its answer lost; a merchant then sets 12. The retry sends the key again and Shopify answers it
    with the 7's own outcome (applied once): delivered, the 12 left as it is by that answer. The next update expects
    the 7 it set, meets a stale compare, reads 12 and sets its number from it: the service's number wins."""
    store = Store({A: 10})
    store.lose_next_answers = 1
    with serve(store.handle) as url:
        shopify = adapter(url, Clock())
        try:
            with pytest.raises(DeliveryError):
                await shopify.deliver("web", [update("a", 7, 1, previous=10)])
            store.levels[A] = 12
            assert await shopify.deliver("web", [update("a", 7, 1, previous=10)]) == []
            assert store.levels[A] == 12 and store.applied == 1
            assert await shopify.deliver("web", [update("a", 3, 2, previous=7)]) == []
        finally:
            await shopify.close()
    assert store.levels[A] == 3 and store.applied == 2
    assert [q["changeFromQuantity"] for s in store.sets()[2:] for q in s["variables"]["input"]["quantities"]] == [7, 12]


async def test_an_earlier_try_landing_late_does_not_overwrite_a_later_set() -> None:
    """The 7's try is still on its way when the batch is given up; the next update (5) is set from the 10 the store
    holds. The 7 landing after it expects 10, meets 5: refused, the newer number kept."""
    store = Store({A: 10})
    store.script = [LOST]
    with serve(store.handle) as url:
        shopify = adapter(url, Clock())
        try:
            with pytest.raises(DeliveryError):
                await shopify.deliver("web", [update("a", 7, 1, previous=10)])
            late = store.sets()[0]
            assert await shopify.deliver("web", [update("a", 5, 2, previous=7)]) == []
        finally:
            await shopify.close()
    assert store.levels[A] == 5
    _, _, answer = store.handle(f"/admin/api/{VERSION}/graphql.json", {"X-Shopify-Access-Token": TOKEN},
                                json.dumps(late).encode())  # the earlier try, reaching the store now
    errors = json.loads(answer)["data"]["inventorySetQuantities"]["userErrors"]
    assert [e["code"] for e in errors] == ["CHANGE_FROM_QUANTITY_STALE"] and store.levels[A] == 5
