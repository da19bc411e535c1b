"""C2 on a channel held behind its rate limit: a change waits past its throttle interval at most
``max_wait_ms`` before it goes ahead of the velocity order (time passed in, no clock)."""

from __future__ import annotations

from itertools import pairwise

import pytest

from reservation import ChannelUpdate, Feed, FeedPolicy, Published

T0 = 1_700_000_000_000
STEP = 100
"""Milliseconds between the simulated rounds of the desk."""
FAST = 30
"""Fast sellers: each changes every round; the channel (10/s) carries one change of each every 3 s."""
POLICY = FeedPolicy(throttle_ms=1000, rate_per_s=10.0, burst=1, max_wait_ms=10_000)
SLOW = ("slow-sku", "")


def feed_of(policy: FeedPolicy) -> Feed:
    keys = [(f"fast-{n}", "") for n in range(FAST)] + [SLOW]
    published = {key: Published(500, n + 1, T0 - 60_000, policy.status(500)) for n, key in enumerate(keys)}
    return Feed("market", policy, T0, published, len(keys))


def run(feed: Feed, until: int, slow_at: int | None, stockout_at: int | None = None) -> list[ChannelUpdate]:
    """Rounds every ``STEP`` ms up to ``until``: every fast seller changes each round; the slow seller
    changes once at ``slow_at``; fast-0 sells out at ``stockout_at``. Returns everything published."""
    out: list[ChannelUpdate] = []
    for now in range(T0, until, STEP):
        for n in range(FAST):
            if not (n == 0 and stockout_at is not None and now >= stockout_at):
                feed.offer((f"fast-{n}", ""), 400 - (now - T0) // STEP % 300, now, now, now, velocity=100.0)
        if now == slow_at:
            feed.offer(SLOW, 499, now, now, now, velocity=1.0)
        if now == stockout_at:
            feed.offer(("fast-0", ""), 0, now, now, now, velocity=100.0)
        taken = feed.take(now, 1000)
        for update in taken:
            update.published_at = now
        feed.confirm(taken)
        out += taken
    return out


def test_c2_a_slow_seller_s_change_goes_out_within_its_bound_under_a_steady_stream_of_fast_sellers() -> None:
    """Thirty fast sellers change every 100 ms on a channel that takes 10 updates a second: one of
    them is always ready, with a higher velocity. The slow seller's change waited behind them for as
    long as they kept selling (the marketplace kept its old number for hours); now it goes out at the
    first token after waiting ``max_wait_ms`` past its throttle interval."""
    slow_at = T0 + 2_000
    feed = feed_of(POLICY)
    out = run(feed, T0 + 30_000, slow_at)
    slow = [u for u in out if u.key == SLOW]
    assert [u.quantity for u in slow] == [499], "the slow seller's change was never published"
    waited = slow[0].published_at - slow_at
    assert POLICY.max_wait_ms <= waited <= POLICY.max_wait_ms + 1000 / POLICY.rate_per_s, waited
    assert feed.overdue == 1


def test_c2_the_bound_keeps_to_the_rate_limit_and_stockouts_still_go_first() -> None:
    """At the moment the slow seller's change is overdue a fast seller sells out: the stock-out goes
    out first, at once (C2), and the overdue change takes the next token, not one beyond the rate."""
    slow_at = T0 + 2_000
    overdue_at = slow_at + POLICY.max_wait_ms
    feed = feed_of(POLICY)
    out = run(feed, T0 + 20_000, slow_at, stockout_at=overdue_at)
    at_overdue = [u.key for u in out if u.published_at == overdue_at]
    assert at_overdue[0] == ("fast-0", ""), at_overdue
    slow = next(u for u in out if u.key == SLOW)
    assert slow.published_at > overdue_at or at_overdue.index(SLOW) > 0
    ordinary = [u for u in out if u.quantity != 0]
    seconds = (T0 + 20_000 - T0) / 1000
    assert len(ordinary) <= POLICY.rate_per_s * seconds + POLICY.burst  # within the rate limit (C2)


def test_c2_ageing_publishes_nothing_twice_and_loses_no_change() -> None:
    """Versions stay contiguous and increase (C3); no key is written twice with the same value; once
    the fast sellers stop, every key ends at its newest offered value."""
    feed = feed_of(POLICY)
    until = T0 + 25_000
    out = run(feed, until, T0 + 2_000)
    assert [u.version for u in out] == list(range(FAST + 2, FAST + 2 + len(out)))
    for key in {u.key for u in out}:
        values = [u.quantity for u in out if u.key == key]
        assert all(a != b for a, b in pairwise(values)), (key, values)
    last_round = until - STEP
    newest = {(f"fast-{n}", ""): 400 - (last_round - T0) // STEP % 300 for n in range(FAST)} | {SLOW: 499}
    later = until
    while feed.pending:
        later += 1000
        taken = feed.take(later, 1000)
        for update in taken:
            update.published_at = later
        feed.confirm(taken)
    assert {key: p.quantity for key, p in feed.published.items()} == newest
    assert feed.published[SLOW].quantity == 499


def test_c2_the_oldest_wait_is_what_the_oldest_change_ready_has_waited() -> None:
    feed = feed_of(POLICY)
    assert feed.oldest_wait_ms(T0) == 0
    run(feed, T0 + 5_000, T0 + 1_000)
    assert feed.oldest_wait_ms(T0 + 5_000) >= 5_000 - 1_000 - STEP  # the slow seller's, at least


def test_max_wait_ms_must_not_be_negative() -> None:
    with pytest.raises(ValueError, match="max_wait_ms: must not be negative"):
        FeedPolicy(max_wait_ms=-1)
