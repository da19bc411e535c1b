"""The rate limit's velocity order compares SKUs' demand at one common time (C2), whenever each change
was offered: pure logic, the desk's ``marks`` with a ``Feed``."""

from __future__ import annotations

from atp_service.channels.marks import velocity_at, velocity_rank
from reservation import Feed, FeedPolicy, Published, StockStatus

T0 = 1_700_000_000_000
HALF_LIFE_MS = 60_000.0


def test_ranks_order_skus_as_their_demand_decayed_to_one_time() -> None:
    demand = {"a": (10.0, T0), "b": (6.0, T0 + 120_000), "c": (0.0, T0), "d": (6.0, T0 + 120_000)}
    later = T0 + 500_000
    by_rank = sorted(demand, key=lambda sku: (-velocity_rank(demand, HALF_LIFE_MS, sku), sku))
    by_decayed = sorted(demand, key=lambda sku: (-velocity_at(demand, HALF_LIFE_MS, sku, later), sku))
    assert by_rank == by_decayed == ["b", "d", "a", "c"]


def test_a_change_offered_earlier_does_not_keep_a_demand_it_has_since_lost() -> None:
    """``a`` sold 10 units two half-lives before ``b`` sold 6: when both wait for the rate limit, ``b``
    sells faster now (6 against 2.5). Offered with its demand decayed to its own offer time, ``a``'s
    change kept 10 and went first."""
    published = {(sku, ""): Published(50, n + 1, T0 - 600_000, StockStatus.IN_STOCK) for n, sku in enumerate("ab")}
    policy = FeedPolicy(throttle_ms=0, rate_per_s=1.0, burst=1, max_wait_ms=3_600_000)  # ageing out of the way
    feed = Feed("web", policy, T0 - 600_000, published)
    demand = {"a": (10.0, T0)}
    feed.offer(("a", ""), 40, T0, T0, T0, velocity_rank(demand, HALF_LIFE_MS, "a"))
    demand["b"] = (6.0, T0 + 120_000)
    feed.offer(("b", ""), 44, T0 + 120_000, T0 + 120_000, T0 + 120_000, velocity_rank(demand, HALF_LIFE_MS, "b"))
    taken = feed.take(T0 + 120_000, 1)
    assert [u.sku for u in taken] == ["b"]
