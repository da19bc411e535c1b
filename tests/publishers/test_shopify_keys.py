"""A Shopify idempotency key that is spent is never sent again for its request: one whose try failed inside Shopify
(kept failed for its retention: ``IDEMPOTENCY_PREVIOUS_ATTEMPT_FAILED``, "retry with a new idempotency key"), and one
answered with a stale compare (a repeat of the key is answered with that first answer, whatever the store holds since).
The new key is remembered for the request's next try, the publisher's retry (C2, C4). Real local HTTP server (the
emulated store)."""

from __future__ import annotations

import pytest

from publishers import DeliveryError
from tests.publishers.http_helpers import Clock, serve
from tests.publishers.shopify_store import Store
from tests.publishers.test_shopify import adapter, item, loc, update

A = (item("a"), loc("store-1"))


async def test_a_key_failed_inside_shopify_is_not_sent_again_with_no_cas_rounds() -> None:
    """With --shopify-cas-rounds 0, the retry of a stock-out whose first try failed inside Shopify sent the failed key
    (the salt counted from 0 at each try), was answered IDEMPOTENCY_PREVIOUS_ATTEMPT_FAILED and failed for want of a
    round: every retry alike, the stock-out never set while the value stayed 0."""
    store = Store({A: 5})
    store.fail_next_sets = 1
    with serve(store.handle) as url:
        shopify = adapter(url, Clock(), cas_rounds=0)
        try:
            with pytest.raises(DeliveryError) as failed:
                await shopify.deliver("web", [update("a", 0, 1, previous=5)])
            assert failed.value.retryable and store.levels[A] == 5
            assert await shopify.deliver("web", [update("a", 0, 1, previous=5)]) == []
        finally:
            await shopify.close()
    assert store.levels[A] == 0


async def test_keys_failed_one_after_another_never_wedge_the_request() -> None:
    """Four tries in a row failing inside Shopify (each on the key drawn after the last): each retry walked every key
    failed before it from salt 0, one re-read each, and from the fifth the request never went out again."""
    store = Store({A: 5})
    store.fail_next_sets = 4
    with serve(store.handle) as url:
        shopify = adapter(url, Clock())
        try:
            for _ in range(4):
                with pytest.raises(DeliveryError) as failed:
                    await shopify.deliver("web", [update("a", 0, 1, previous=5)])
                assert failed.value.retryable and "INTERNAL_SERVER_ERROR" in failed.value.reason, failed.value.reason
            assert await shopify.deliver("web", [update("a", 0, 1, previous=5)]) == []
        finally:
            await shopify.close()
    assert store.levels[A] == 0
    keys = [r["variables"]["idempotencyKey"] for r in store.sets()]
    assert len(keys) == 9 and len(set(keys)) == 5  # each failed key sent once more (answered so), then a new one


async def test_a_key_answered_stale_is_not_sent_again_when_the_store_moves_back() -> None:
    """The store moved 10 -> 9 before the first set (stale) and back to 10 before the second (stale): the re-read found
    10 again, the first request's key was sent again and answered with its first answer, stale, until the re-reads ran
    out; every retry alike while the store held 10 (the 7 never set)."""
    store = Store({A: 10})
    moves = [9, 10]

    def sell_then_cancel(s: Store) -> None:
        if moves:
            s.levels[A] = moves.pop(0)

    store.before_set = sell_then_cancel
    with serve(store.handle) as url:
        shopify = adapter(url, Clock())
        try:
            assert await shopify.deliver("web", [update("a", 7, 1, previous=10)]) == []
        finally:
            await shopify.close()
    assert store.levels[A] == 7 and store.applied == 1
