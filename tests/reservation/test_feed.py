"""C2/C3 feed logic with time passed in: throttle, coalescing, rate limit, precedence, versions."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from reservation import ChannelUpdate, Feed, FeedPolicy, Published, StockStatus, TokenBucket

T0 = 1_700_000_000_000


def published_feed(policy: FeedPolicy, values: dict[str, int]) -> Feed:
    """A feed whose keys were all published once (version 1..n) long ago."""
    published = {(sku, ""): Published(q, n + 1, T0 - 60_000, policy.status(q))
                 for n, (sku, q) in enumerate(values.items())}
    return Feed("web", policy, T0 - 60_000, published)


def drain(feed: Feed, now: int, limit: int = 100_000) -> list[ChannelUpdate]:
    out = feed.take(now, limit)
    for u in out:
        u.published_at = now
    feed.confirm(out)
    return out


def test_c2_thousand_changes_in_one_interval_publish_once_with_the_newest_value() -> None:
    feed = published_feed(FeedPolicy(throttle_ms=1000), {"sku-1": 500})
    first = drain(feed, T0)
    assert first == []
    feed.offer(("sku-1", ""), 499, T0, T0, T0)
    assert [u.quantity for u in drain(feed, T0)] == [499]  # interval not yet running: out at once
    for n in range(1000):
        feed.offer(("sku-1", ""), 400 + (n % 90) + 1, T0 + n, T0 + n, T0 + n // 2)
    newest = 400 + (999 % 90) + 1
    assert drain(feed, T0 + 999) == []  # still inside the interval
    out = drain(feed, T0 + 1000)
    assert [(u.quantity, u.previous) for u in out] == [(newest, 499)]
    assert out[0].event_time == T0 + 999  # C3: the newest fact behind it
    assert feed.coalesced == 999


def test_c2_drop_to_zero_is_published_at_once_inside_the_interval() -> None:
    feed = published_feed(FeedPolicy(throttle_ms=60_000), {"sku-1": 10})
    feed.offer(("sku-1", ""), 9, T0, T0, T0)
    drain(feed, T0)
    feed.offer(("sku-1", ""), 0, T0 + 5, T0 + 7, T0 + 10)
    out = drain(feed, T0 + 10)
    assert [(u.quantity, u.previous, u.status) for u in out] == [(0, 9, StockStatus.OUT_OF_STOCK)]
    assert out[0].durable_at == T0 + 7


def test_c2_stockout_jumps_the_rate_limit_queue() -> None:
    feed = published_feed(FeedPolicy(throttle_ms=0, rate_per_s=1, burst=1),
                          {f"sku-{i}": 50 for i in range(10)})
    for i in range(9):
        feed.offer((f"sku-{i}", ""), 40, T0, T0, T0)
    feed.offer(("sku-9", ""), 0, T0, T0, T0)
    out = drain(feed, T0)
    assert [(u.sku, u.quantity) for u in out] == [("sku-9", 0)]  # the only token went to the stock-out
    assert drain(feed, T0 + 999) == []  # and the bucket is in debt until it refills
    assert len(drain(feed, T0 + 1000)) == 1


def test_c2_rate_limit_holds_over_a_burst_of_ten_thousand_skus() -> None:
    rate, burst = 200.0, 50
    feed = published_feed(FeedPolicy(throttle_ms=0, rate_per_s=rate, burst=burst),
                          {f"sku-{i}": 100 for i in range(10_000)})
    now = T0
    for i in range(10_000):
        feed.offer((f"sku-{i}", ""), 90, now, now, now)
    sent: list[int] = []
    while feed.pending:
        sent += [now] * len(drain(feed, now))
        wake = feed.next_wakeup(now)
        assert (wake is not None and wake > now) or feed.pending == 0
        now = wake if wake is not None else now
    assert len(sent) == 10_000
    for window_start in range(T0, sent[-1], 1000):  # no second sees more than burst + rate
        in_window = sum(1 for t in sent if window_start <= t < window_start + 1000)
        assert in_window <= burst + rate
    assert sent[-1] - T0 >= (10_000 - burst) / rate * 1000 - 10


def test_c2_precedence_stockouts_then_low_stock_then_velocity() -> None:
    feed = published_feed(FeedPolicy(throttle_ms=0, rate_per_s=1000, burst=4, low_stock_level=5),
                          {"slow": 100, "fast": 100, "low": 100, "out": 100})
    feed.offer(("slow", ""), 90, T0, T0, T0, velocity=0.1)
    feed.offer(("fast", ""), 90, T0, T0, T0, velocity=9.0)
    feed.offer(("low", ""), 3, T0, T0, T0, velocity=0.0)
    feed.offer(("out", ""), 0, T0, T0, T0)
    assert [u.sku for u in drain(feed, T0)] == ["out", "low", "fast", "slow"]


def test_c3_versions_only_increase_per_key_and_e11_equal_values_publish_nothing() -> None:
    feed = Feed("web", FeedPolicy(throttle_ms=0), T0, version=41)
    feed.offer(("a", ""), 5, T0, T0, T0)
    feed.offer(("b", "store-1"), 7, T0, T0, T0)
    first = drain(feed, T0)
    assert [(u.version, u.previous) for u in first] == [(42, None), (43, None)]  # baselines
    feed.offer(("a", ""), 5, T0 + 1, T0 + 1, T0 + 1)  # unchanged: E11
    feed.offer(("b", "store-1"), 8, T0 + 1, T0 + 1, T0 + 1)
    feed.offer(("b", "store-1"), 7, T0 + 2, T0 + 2, T0 + 2)  # back to what was sent: withdrawn
    assert drain(feed, T0 + 5) == []
    feed.offer(("a", ""), 6, T0 + 6, T0 + 6, T0 + 6)
    assert [(u.version, u.previous) for u in drain(feed, T0 + 6)] == [(44, 5)]
    restarted = Feed("web", FeedPolicy(), T0, dict(feed.published))
    assert restarted.version == 44


class _WalkedPublished(dict[tuple[str, str], Published]):
    """A feed's published values that count the passes over all of them."""

    walks = 0

    def values(self) -> Any:
        self.walks += 1
        return super().values()

    def __iter__(self) -> Any:
        self.walks += 1
        return super().__iter__()


def test_a_feed_given_its_newest_version_does_not_pass_over_every_published_value_C3() -> None:
    """At the start the desk built each feed from what was published and the newest version its
    store had read, and the feed found the newest again by a pass over every value in one go - with
    the store's own pass, seconds of a held event loop for tens of millions of keys. The version the
    store keeps while reading page by page is taken as it is; without one, it is found (C3)."""
    published = _WalkedPublished({("a", ""): Published(3, 7, T0, StockStatus.LOW_STOCK),
                                  ("b", "s1"): Published(0, 9, T0, StockStatus.OUT_OF_STOCK)})
    feed = Feed("web", FeedPolicy(), T0, published, 12)
    assert (feed.version, published.walks) == (12, 0)
    assert Feed("web", FeedPolicy(), T0, published).version == 9


def test_a_failed_write_is_offered_again_unless_newer_is_pending() -> None:
    feed = published_feed(FeedPolicy(throttle_ms=0), {"a": 10, "b": 10})
    feed.offer(("a", ""), 4, T0, T0, T0)
    feed.offer(("b", ""), 5, T0, T0, T0)
    taken = feed.take(T0, 10)
    feed.offer(("b", ""), 6, T0 + 1, T0 + 1, T0 + 1)
    feed.give_back(taken, T0 + 2)
    again = drain(feed, T0 + 3)
    assert sorted((u.sku, u.quantity, u.previous) for u in again) == [("a", 4, 10), ("b", 6, 10)]
    assert sorted(u.version for u in again) == sorted(t.version for t in taken)  # no gap left behind


def test_a_value_offered_while_a_lost_write_was_on_its_way_is_judged_against_what_is_shown() -> None:
    """E11: 5 shown, a 0 lost on its way, 5 offered meanwhile: nothing to publish. C2: a value offered
    while a key's first value was on its way, that write lost, is a first value: at once, not rate-limited."""
    feed = published_feed(FeedPolicy(throttle_ms=0, rate_per_s=1.0, burst=1), {"a": 5})
    feed.offer(("a", ""), 0, T0, T0, T0)
    lost = feed.take(T0, 10)
    feed.offer(("a", ""), 5, T0 + 1, T0 + 1, T0 + 1)
    feed.give_back(lost, T0 + 2)
    assert (feed.pending, feed.take(T0 + 3, 10)) == (0, [])
    feed.offer(("b", ""), 4, T0, T0, T0)
    lost = feed.take(T0 + 3, 10)  # its first value, on its way
    feed.offer(("b", ""), 2, T0 + 4, T0 + 4, T0 + 4)
    feed.give_back(lost, T0 + 5)
    assert [(u.sku, u.quantity, u.previous) for u in feed.take(T0 + 5, 10, urgent_only=True)] == [("b", 2, None)]


def test_status_bands() -> None:
    policy = FeedPolicy(low_stock_level=3)
    assert [policy.status(q) for q in (0, 1, 3, 4)] == [
        StockStatus.OUT_OF_STOCK, StockStatus.LOW_STOCK, StockStatus.LOW_STOCK, StockStatus.IN_STOCK]


def test_c1_a_withdrawn_key_shows_0_once_it_was_shown_anything_and_nothing_else_waits() -> None:
    feed = published_feed(FeedPolicy(throttle_ms=1000), {"shown": 5, "zero": 0})
    drain(feed, T0)
    feed.offer(("zero", ""), 4, T0, T0, T0)  # shown 0: the 4 waits for nothing, goes at once
    feed.offer(("never", ""), 7, T0, T0, T0)  # never shown: a baseline
    for sku in ("shown", "zero", "never"):
        feed.withdraw((sku, ""), T0)
    assert [(u.sku, u.quantity) for u in drain(feed, T0)] == [("shown", 0)]
    assert feed.pending == 0 and ("never", "") not in feed.known_keys()


def test_c1_a_key_withdrawn_while_its_value_is_written_is_shown_0_after() -> None:
    feed = published_feed(FeedPolicy(throttle_ms=1000), {})
    feed.offer(("a", ""), 4, T0, T0, T0)
    (sent,) = feed.take(T0, 10)  # the baseline 4 is being written
    feed.withdraw(("a", ""), T0)
    sent.published_at = T0
    feed.confirm([sent])
    assert [(u.sku, u.quantity, u.previous) for u in drain(feed, T0)] == [("a", 0, 4)]


def test_c2_a_change_offered_while_the_last_value_is_written_waits_for_that_value_s_interval() -> None:
    """The throttle interval runs from the write that just landed: a value offered while it was in
    flight must not go out right after it (two publishes of one key in one interval)."""
    feed = published_feed(FeedPolicy(throttle_ms=5000, rate_per_s=1000), {"sku-1": 50})
    feed.offer(("sku-1", ""), 40, T0, T0, T0)
    taken = feed.take(T0, 100)
    assert [u.quantity for u in taken] == [40]
    feed.offer(("sku-1", ""), 30, T0 + 1, T0 + 1, T0 + 1)  # durable while 40 is being written
    for u in taken:
        u.published_at = T0 + 2
    feed.confirm(taken)
    assert drain(feed, T0 + 3) == []  # 40 went out at T0 + 2: 30 waits for T0 + 5002
    assert drain(feed, T0 + 5001) == []
    assert [(u.quantity, u.previous) for u in drain(feed, T0 + 5002)] == [(30, 40)]
    assert feed.next_wakeup(T0 + 5002) is None


class _CountedKeys(dict[Any, None]):
    """A feed's queue of keys that counts the keys read from it."""

    read = 0

    def __iter__(self) -> Iterator[Any]:
        for key in super().__iter__():
            self.read += 1
            yield key


def test_a_take_reads_only_the_keys_it_publishes_not_every_queued_one() -> None:
    """A new per-location channel queues millions of baselines: each take reads its ``limit``, not all."""
    feed = Feed("pickup", FeedPolicy(), T0)
    feed._baseline = _CountedKeys()
    feed._stockouts = _CountedKeys()
    for n in range(10_000):
        feed.offer((f"sku-{n}", "store-1"), 5, T0, T0, T0)
    published = {(f"sku-{n}", "store-2"): Published(5, n + 1, T0, StockStatus.LOW_STOCK) for n in range(10_000)}
    feed.published.update(published)
    for key in published:
        feed.offer(key, 0, T0, T0, T0)
    out = drain(feed, T0, limit=100)
    assert [u.quantity for u in out] == [0] * 100  # stock-outs first
    out = drain(feed, T0, limit=10_000)
    assert len(out) == 10_000 and out[-1].quantity == 5
    assert isinstance(feed._stockouts, _CountedKeys) and isinstance(feed._baseline, _CountedKeys)
    assert feed._stockouts.read + feed._baseline.read <= 10_100 + 2


def test_a_change_taken_back_leaves_no_wake_up_behind() -> None:
    """A change offered and then offered back to the number last published (E11: nothing to publish)
    left its heap entries behind, and ``next_wakeup`` named a time for them: the desk woke and started
    a write that took nothing, a write of its round's bounded budget spent for nothing."""
    feed = published_feed(FeedPolicy(throttle_ms=1000), {"sku-1": 10, "sku-2": 10})
    assert [u.quantity for u in drain(feed, T0)] == []
    feed.offer(("sku-1", ""), 9, T0, T0, T0)
    drain(feed, T0)  # published: the next change of sku-1 waits for its interval
    feed.offer(("sku-1", ""), 8, T0 + 1, T0 + 1, T0 + 1)  # waiting in the throttle heap
    feed.offer(("sku-2", ""), 9, T0 + 1, T0 + 1, T0 + 1)  # ready now
    feed.offer(("sku-1", ""), 9, T0 + 2, T0 + 2, T0 + 2)  # back to what is shown: nothing to publish
    feed.offer(("sku-2", ""), 10, T0 + 2, T0 + 2, T0 + 2)
    assert feed.pending == 0
    assert feed.next_wakeup(T0 + 2) is None
    assert drain(feed, T0 + 5000) == []


def test_c2_a_reloaded_policy_keeps_the_rate_limits_debt() -> None:
    """A reload changing anything of a channel's feed policy (here only its ageing bound) gave it a full bucket: the
    debt its stock-outs had run up (they never wait for a token) was forgiven, and as many changes as its burst went
    out at once on top of them, past the channel's rate limit (C2's average rate)."""
    policy = FeedPolicy(throttle_ms=0, rate_per_s=1.0, burst=2)
    feed = published_feed(policy, {"a": 5, "b": 5, "c": 5, "d": 5})
    for sku in ("a", "b", "c"):
        feed.offer((sku, ""), 0, T0, T0, T0)
    assert len(drain(feed, T0)) == 3  # stock-outs: 2 tokens, then 1 of debt
    feed.set_policy(FeedPolicy(throttle_ms=0, rate_per_s=1.0, burst=2, max_wait_ms=10_000), T0)
    feed.offer(("d", ""), 4, T0, T0, T0)
    assert drain(feed, T0 + 1000) == []  # the debt repaid, no token yet
    assert [u.sku for u in drain(feed, T0 + 2000)] == ["d"]


def test_c3_a_value_after_a_late_fact_keeps_the_newest_facts_time() -> None:
    """A late fact (E6: within the grace window, stamped before a fact already behind the published value) changed
    the value: it was stamped with the late fact's time, older than the newer fact still behind it, and the key's
    event_time went back in time between two publications."""
    feed = published_feed(FeedPolicy(throttle_ms=0), {"a": 5})
    feed.offer(("a", ""), 4, T0, T0, T0)
    assert [(u.quantity, u.event_time) for u in drain(feed, T0)] == [(4, T0)]
    feed.offer(("a", ""), 3, T0 - 30_000, T0 + 10, T0 + 10)  # a sale stamped 30 s before the one published
    assert [(u.quantity, u.event_time) for u in drain(feed, T0 + 10)] == [(3, T0)]


def test_c2_stock_outs_run_up_at_most_max_wait_ms_of_debt() -> None:
    """Stock-outs take a token each and never wait (C2); their debt had no bound, so 10,000 of them at once (a store
    closing, a location a reload took from a per-location channel) held every ordinary change of the channel for
    1,000 s at 10 updates/s, a drop from 50 to 3 among them: the old number shown meanwhile. The debt is at most
    ``max_wait_ms`` worth of tokens (a burst, if more): a change waits behind stock-outs no longer than behind
    faster sellers, and within that bound the rate limit still pays the stock-outs back."""
    policy = FeedPolicy(throttle_ms=0, rate_per_s=10.0, burst=10, max_wait_ms=30_000)
    feed = published_feed(policy, {**{f"sku-{i}": 5 for i in range(10_000)}, "slow": 50})
    for i in range(10_000):
        feed.offer((f"sku-{i}", ""), 0, T0, T0, T0)
    assert len(drain(feed, T0)) == 10_000  # at once, whatever the rate limit
    feed.offer(("slow", ""), 3, T0, T0, T0)
    assert drain(feed, T0 + 30_000) == []  # the 10 tokens of the burst and 300 of debt (30 s) paid back first
    assert [(u.sku, u.quantity) for u in drain(feed, T0 + 30_100)] == [("slow", 3)]


def test_c2_the_debt_bound_is_at_least_a_burst() -> None:
    """``max_wait_ms`` 0 (always oldest first) bounds the debt by the burst, not by nothing: stock-outs still pay."""
    feed = published_feed(FeedPolicy(throttle_ms=0, rate_per_s=1.0, burst=2, max_wait_ms=0),
                          {"a": 5, "b": 5, "c": 5, "d": 5, "e": 5, "f": 5})
    for sku in ("a", "b", "c", "d", "e"):
        feed.offer((sku, ""), 0, T0, T0, T0)
    assert len(drain(feed, T0)) == 5  # 2 tokens, then 3 of debt, of which 2 are kept
    feed.offer(("f", ""), 4, T0, T0, T0)
    assert drain(feed, T0 + 2_999) == []
    assert [u.sku for u in drain(feed, T0 + 3_000)] == ["f"]


def test_c2_a_stock_out_never_pays_back_debt_past_a_lowered_cap() -> None:
    """A debt run up under a larger cap (a rate or ``max_wait_ms`` lowered by a reload) stays until time pays it:
    a stock-out taken meanwhile adds to it at most, never raises the tokens to the new cap."""
    bucket = TokenBucket(10.0, 1, T0)
    for _ in range(51):
        bucket.force(bucket.most_owed(5_000))
    assert bucket.tokens == -50.0
    bucket.force(bucket.most_owed(1_000))  # the cap now 10 tokens
    assert bucket.tokens == -50.0


def test_c1_a_first_value_withdrawn_while_its_write_failed_is_dropped_not_shown_0() -> None:
    """A reload withdrew a key (its location no longer the channel's) while its first value was being
    written; the write failed: nothing was ever shown there, so nothing is (C1), not a baseline 0."""
    feed = published_feed(FeedPolicy(throttle_ms=1000), {})
    feed.offer(("a", "store-1"), 4, T0, T0, T0)
    lost = feed.take(T0, 10)  # the baseline 4 is being written
    feed.withdraw(("a", "store-1"), T0 + 1)
    feed.give_back(lost, T0 + 2)
    assert drain(feed, T0 + 3) == []
    assert feed.pending == 0 and ("a", "store-1") not in feed.known_keys()


def test_c1_a_new_position_s_0_offered_while_its_first_value_failed_is_still_published() -> None:
    """Only a withdrawal's 0 is dropped: a curated 0 of a position the channel sells from is its baseline."""
    feed = published_feed(FeedPolicy(throttle_ms=1000), {})
    feed.offer(("a", "store-1"), 4, T0, T0, T0)
    lost = feed.take(T0, 10)
    feed.withdraw(("a", "store-1"), T0 + 1)
    feed.offer(("a", "store-1"), 0, T0 + 1, T0 + 1, T0 + 1)  # sold from again (a reload back), curated 0
    feed.give_back(lost, T0 + 2)
    assert [(u.sku, u.quantity, u.previous) for u in drain(feed, T0 + 3)] == [("a", 0, None)]


def test_c1_a_withdrawn_key_shown_before_is_still_shown_0_after_a_failed_write() -> None:
    feed = published_feed(FeedPolicy(throttle_ms=0), {"a": 5})
    feed.offer(("a", ""), 4, T0, T0, T0)
    lost = feed.take(T0, 10)
    feed.withdraw(("a", ""), T0 + 1)
    feed.give_back(lost, T0 + 2)
    assert [(u.sku, u.quantity, u.previous) for u in drain(feed, T0 + 3)] == [("a", 0, 5)]


def test_a_reloaded_low_stock_level_publishes_a_number_it_classes_otherwise_and_no_other_C3() -> None:
    """The same number curated again after a reload is no change (E11) unless the new level gives it another
    status: then it goes out, its status with it, at a new version - the entry at the old one keeps the old."""
    feed = published_feed(FeedPolicy(throttle_ms=0, low_stock_level=10), {"low": 8, "high": 50, "out": 0})
    assert feed.published[("low", "")].status is StockStatus.LOW_STOCK
    feed.set_policy(FeedPolicy(throttle_ms=0, low_stock_level=5), T0)
    for sku, quantity in (("low", 8), ("high", 50), ("out", 0)):
        feed.offer((sku, ""), quantity, T0, T0, T0)
    out = drain(feed, T0)
    assert [(u.sku, u.quantity, u.previous, u.status, u.version) for u in out] == [
        ("low", 8, 8, StockStatus.IN_STOCK, 4)]
    assert feed.published[("low", "")] == Published(8, 4, T0, StockStatus.IN_STOCK)
    feed.offer(("low", ""), 8, T0, T0, T0)
    assert drain(feed, T0 + 1) == [], "E11: published in the status the policy gives it"
