"""``Feed.offer_again``: a key published again at a new version (a publisher delivered it at a version Redis lost)
keeps its published value until the new one is confirmed (C4: a snapshot shows what is durable, never no value),
goes out as a baseline (at once, ``previous`` unknown) even if equal to what is published (not E11), and stays one
across a write that did not land (C3: a new version the destination takes)."""

from __future__ import annotations

from reservation import Feed, FeedPolicy, Published, StockStatus

T0 = 1_700_000_000_000
KEY = ("sku-1", "")
IN = StockStatus.IN_STOCK


def _feed() -> Feed:
    """``sku-1`` published at 7 (version 3), the rate limit's tokens all spent."""
    policy = FeedPolicy(throttle_ms=60_000, rate_per_s=1.0, burst=1)
    feed = Feed("web", policy, T0, {KEY: Published(7, 3, T0 - 1, IN)}, 3)
    feed.bucket.tokens = 0.0
    return feed


def test_the_published_value_stays_until_the_new_version_is_confirmed_C4() -> None:
    feed = _feed()
    feed.offer_again(KEY, 7, T0 - 1, T0, T0)
    assert feed.published[KEY] == Published(7, 3, T0 - 1, IN)
    (update,) = feed.take(T0, 10)
    assert (update.quantity, update.previous, update.version) == (7, None, 4)  # a baseline, past the rate limit
    assert feed.published[KEY] == Published(7, 3, T0 - 1, IN), "being written: not durable yet"
    update.published_at = T0
    feed.confirm([update])
    assert feed.published[KEY] == Published(7, 4, T0 - 1, IN)


def test_an_equal_offer_meanwhile_does_not_withdraw_it_E11() -> None:
    """What is published is not what the destination shows: an offer equal to it still goes out."""
    feed = _feed()
    feed.offer_again(KEY, 7, T0 - 1, T0, T0)
    feed.offer(KEY, 7, T0, T0, T0)
    assert [(u.quantity, u.previous) for u in feed.take(T0, 10)] == [(7, None)]


def test_a_write_that_did_not_land_goes_out_again_as_a_baseline_C3() -> None:
    feed = _feed()
    feed.offer_again(KEY, 7, T0 - 1, T0, T0)
    feed.give_back(feed.take(T0, 10), T0)
    assert feed.published[KEY] == Published(7, 3, T0 - 1, IN)
    (update,) = feed.take(T0 + 1, 10)
    assert (update.quantity, update.previous, update.version) == (7, None, 4)
    update.published_at = T0 + 1
    feed.confirm([update])
    feed.offer(KEY, 7, T0 + 2, T0 + 2, T0 + 2)  # confirmed: an equal value is no change again (E11)
    assert feed.pending == 0
