"""A stale compare given up for want of re-reads (``--shopify-cas-rounds``, 0 say) leaves the quantity to be read at the
batch's retry: every retry sent the expectation it was sent with first (what this process last set there, else what the
channel was told before), never read when no round was left, answered stale again for good, and a stock-out after an
order in Shopify was never set while the store sold what was gone (C2, C4). Real local HTTP server (the emulated
store)."""

from __future__ import annotations

import pytest

from publishers import DeliveryError
from tests.publishers.http_helpers import Clock, serve
from tests.publishers.shopify_store import Store
from tests.publishers.test_shopify import adapter, item, loc, update

A = (item("a"), loc("store-1"))


def kinds(store: Store) -> list[str]:
    return ["set" if "inventorySetQuantities" in r["query"] else "read" for r in store.requests]


async def test_a_stock_out_whose_quantity_moved_is_set_at_its_retry_with_no_cas_rounds() -> None:
    """The channel was told 5, an order in Shopify left 4: with --shopify-cas-rounds 0 the stock-out's set is answered
    stale and fails the try; its retry expected 5 again, never read."""
    store = Store({A: 4})
    with serve(store.handle) as url:
        shopify = adapter(url, Clock(), cas_rounds=0)
        try:
            with pytest.raises(DeliveryError) as failed:
                await shopify.deliver("web", [update("a", 0, 1, previous=5)])
            assert failed.value.retryable and "CHANGE_FROM_QUANTITY_STALE" in failed.value.reason, failed.value.reason
            assert await shopify.deliver("web", [update("a", 0, 1, previous=5)]) == []
        finally:
            await shopify.close()
    assert store.levels[A] == 0 and kinds(store) == ["set", "read", "set"]


async def test_a_quantity_moved_after_the_last_set_is_read_at_the_retry_not_expected_from_memory() -> None:
    """The publisher set 5 (remembered); an order in Shopify left 4: the stock-out expected the 5 remembered at every
    try, answered stale each time (the batch failing its tries, dead-lettered, redelivered alike)."""
    store = Store({A: 10})
    with serve(store.handle) as url:
        shopify = adapter(url, Clock(), cas_rounds=0)
        try:
            assert await shopify.deliver("web", [update("a", 5, 1, previous=10)]) == []
            store.levels[A] = 4
            with pytest.raises(DeliveryError):
                await shopify.deliver("web", [update("a", 0, 2, previous=5)])
            assert await shopify.deliver("web", [update("a", 0, 2, previous=5)]) == []
        finally:
            await shopify.close()
    assert store.levels[A] == 0 and kinds(store) == ["set", "set", "read", "set"]
