"""What the shopify adapter remembers of the store (the quantity it last set or read) is no proof that the store holds
it: a set whose answer was lost may have been applied, and another publisher of the group may have set the item since
this one last did. A quantity equal to that memory is read before it is taken for set (C2, C4). Real local HTTP
server (the emulated store)."""

from __future__ import annotations

import pytest

from publishers import DeliveryError
from tests.publishers.http_helpers import Clock, serve
from tests.publishers.shopify_store import Store
from tests.publishers.test_shopify import adapter, item, loc, update

A = (item("a"), loc("store-1"))


async def test_a_stock_out_after_a_set_whose_answer_was_lost_reaches_the_store() -> None:
    """The 7 of a restock was applied but its answer lost (the batch failed, dead-lettered after its tries); the
    adapter still remembered the 0 it set before, so the next stock-out (7 -> 0) was not sent at all: the store kept
    selling 7 that were gone, the update counted delivered and the key owed nothing (C2, C4)."""
    store = Store({A: 5})
    with serve(store.handle) as url:
        shopify = adapter(url, Clock())
        try:
            await shopify.deliver("web", [update("a", 0, 1, previous=5)])
            store.lose_next_answers = 1
            with pytest.raises(DeliveryError) as lost:
                await shopify.deliver("web", [update("a", 7, 2, previous=0)])
            assert lost.value.retryable and store.levels[A] == 7  # applied; the answer lost
            assert await shopify.deliver("web", [update("a", 0, 3, previous=7)]) == []
        finally:
            await shopify.close()
    assert store.levels[A] == 0


async def test_a_stock_out_after_another_publisher_set_the_item_reaches_the_store() -> None:
    """This publisher set 0, lost its lease, and the one that took over restocked the item (0 -> 7); back to
    holding the lease, this one's stock-out (7 -> 0) was taken for set by its memory of its own 0: never sent."""
    store = Store({A: 5})
    with serve(store.handle) as url:
        first, second = adapter(url, Clock()), adapter(url, Clock())
        try:
            await first.deliver("web", [update("a", 0, 1, previous=5)])
            await second.deliver("web", [update("a", 7, 2, previous=0)])
            assert await first.deliver("web", [update("a", 0, 3, previous=7)]) == []
        finally:
            await first.close()
            await second.close()
    assert store.levels[A] == 0
