"""A SKU the store does not know (not mapped in Shopify) in every batch: its quantity is refused and the rest of
each batch set, and the log says so at most once a second with a count of what it left out, not once per
request. The emulated store behind a real local HTTP server; the adapter's clock is a fake one."""

from __future__ import annotations

import logging

import pytest

from publishers import ShopifyAdapter
from publishers import ShopifySettings as Settings
from tests.publishers.http_helpers import Clock, serve
from tests.publishers.shopify_store import TOKEN, VERSION, Store
from tests.publishers.test_shopify import ITEM, LOCATION, item, loc, update

BATCHES = 20


def _refused_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "publishers._shopify" and "refused" in r.getMessage()]


async def test_a_quantity_the_store_refuses_in_every_batch_is_said_once_a_while(
        caplog: pytest.LogCaptureFixture) -> None:
    """20 batches each with the unmapped SKU: 20 WARNING lines, one per request, for as long as it sells. Now
    one, the next a second later carrying in ``left_out`` the 19 left out; every batch still sets the rest."""
    store, clock = Store({(item("a"), loc("store-1")): 10}), Clock()
    with serve(store.handle) as url:
        adapter = ShopifyAdapter(Settings(url, TOKEN, VERSION, ITEM, LOCATION), sleep=clock.sleep, clock=clock)
        try:
            with caplog.at_level(logging.WARNING, logger="publishers"):
                for n in range(1, BATCHES + 1):
                    refused = await adapter.deliver("web", [update("nope", 1, 2 * n, previous=4),
                                                            update("a", n, 2 * n + 1, previous=None)])
                    assert [r.update.sku for r in refused] == ["nope"]
                assert len(_refused_lines(caplog)) == 1 and clock.slept == []
                clock.now += 1.0
                await adapter.deliver("web", [update("nope", 1, 1_000, previous=4)])
        finally:
            await adapter.close()
    assert store.levels == {(item("a"), loc("store-1")): BATCHES}
    said = _refused_lines(caplog)
    assert len(said) == 2, [r.getMessage() for r in said]
    assert (said[0].event, said[0].channel, said[0].refused) == ("publisher_quantities_refused", "web", 1)  # type: ignore[attr-defined]
    assert said[1].left_out == BATCHES - 1  # type: ignore[attr-defined]
