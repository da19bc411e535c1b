"""C2: the rate limit's order (low stock, then sales velocity) reads a ready change's current class
and velocity, not those it had when its throttle interval ended (time passed in, no clock)."""

from __future__ import annotations

from collections import Counter

from reservation import ChannelUpdate, Feed, FeedPolicy, Published

T0 = 1_700_000_000_000
STEP = 100
"""Milliseconds between the simulated rounds of the desk."""
NO_AGEING = FeedPolicy(throttle_ms=200, rate_per_s=1.0, burst=1, low_stock_level=5, max_wait_ms=10**9)
"""One update a second, and the ageing bound out of reach: only the velocity order decides."""
SELLERS = [("sku-a", ""), ("sku-b", "")]


def feed_of(keys: list[tuple[str, str]], quantity: int = 500) -> Feed:
    published = {key: Published(quantity, n + 1, T0 - 60_000, NO_AGEING.status(quantity)) for n, key in enumerate(keys)}
    return Feed("market", NO_AGEING, T0, published, len(keys))


def drain(feed: Feed, now: int) -> list[ChannelUpdate]:
    taken = feed.take(now, 1000)
    for update in taken:
        update.published_at = now
    feed.confirm(taken)
    return taken


def assert_ageing_twins_live(feed: Feed) -> None:
    """Every live entry of the ageing heap has a live twin of the same gen in the ready heap."""
    def live(key: tuple[str, str], gen: int) -> bool:
        pend = feed._pending.get(key)
        return pend is not None and pend.gen == gen
    ready = {(e[-1], e[3]) for e in feed._ready if live(e[-1], e[3])}
    assert {(e[-1], e[1]) for e in feed._aged if live(e[-1], e[1])} <= ready

def test_c2_two_equally_fast_sellers_take_turns_under_a_tight_rate_limit() -> None:
    """Both sell every round, their velocity rising alike. The one published re-entered the order
    with its fresh, higher velocity; the other kept the velocity it had when it became ready, so it
    lost every time: the marketplace kept its old number for as long as both kept selling."""
    feed = feed_of(SELLERS)
    out: list[ChannelUpdate] = []
    for n, now in enumerate(range(T0, T0 + 20_000, STEP)):
        for key in SELLERS:
            feed.offer(key, 400 - n % 300, now, now, now, velocity=float(n))
        out += drain(feed, now)
        assert_ageing_twins_live(feed)
    count = Counter(u.key for u in out)
    assert count[SELLERS[0]] >= 9 and count[SELLERS[1]] >= 9, count
    assert abs(count[SELLERS[0]] - count[SELLERS[1]]) <= 1, count


def test_c2_a_ready_change_that_turns_low_stock_goes_before_faster_sellers() -> None:
    """A slow seller's ready change is replaced by a low-stock value: it now goes before the fast
    sellers' in-stock changes (C2: low stock first), not where its in-stock value had placed it."""
    fast, slow, spender = ("fast", ""), ("slow", ""), ("spender", "")
    feed = feed_of([fast, slow, spender])
    feed.offer(spender, 1, T0, T0, T0)
    assert [u.key for u in drain(feed, T0)] == [spender]  # the one token of the first second
    feed.offer(fast, 300, T0, T0, T0, velocity=100.0)
    feed.offer(slow, 400, T0, T0, T0, velocity=1.0)
    assert drain(feed, T0 + STEP) == []  # both ready (throttle interval over), no token yet
    feed.offer(slow, 3, T0 + 200, T0 + 200, T0 + 200, velocity=1.0)
    assert_ageing_twins_live(feed)
    assert [u.key for u in drain(feed, T0 + 1_000)] == [slow]
    assert [(u.key, u.quantity) for u in drain(feed, T0 + 2_000)] == [(fast, 300)]


def test_c2_a_ready_change_re_placed_keeps_its_age_and_publishes_once() -> None:
    """A re-placed change keeps the time its throttle interval ended (the ageing bound counts from
    it) and is published once, with its newest value, whatever entries it left behind."""
    feed = feed_of(SELLERS)
    drain(feed, T0)
    for n in range(10):
        feed.offer(SELLERS[0], 300 + n, T0 + n, T0 + n, T0 + n, velocity=float(n))
        feed.take(T0 + n, 0)
    assert feed.oldest_wait_ms(T0 + 500) == 500
    assert_ageing_twins_live(feed)
    out = drain(feed, T0 + 1_000)
    assert [(u.key, u.quantity) for u in out] == [(SELLERS[0], 309)]
    assert drain(feed, T0 + 5_000) == [] and feed.pending == 0
