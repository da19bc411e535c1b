"""A channel's queues stay bounded by what is pending, however often values come and go: real Redis,
real gRPC server, time held still by a manual clock (so the rate limit never refills)."""

from __future__ import annotations

from pathlib import Path

from atp_service import ManualClock
from reservation import Feed
from reservation._feed import HEAP_SLACK
from tests.atp_service.channel_helpers import fact, one_dc_market, wait_for_updates, write_estate
from tests.conftest import ServiceFactory
from tests.waiting import until

T = 1_700_000_000_000
COLD = 100
ROUNDS = 30
ESTATE = one_dc_market(0, 0.001, burst=1)


def queued(feed: Feed) -> int:
    """Entries of the feed's two queues (throttle interval, rate limit): valid or superseded."""
    return len(feed._due) + len(feed._ready)


async def test_c2_values_that_come_back_while_the_rate_limit_holds_leave_no_queue_entries_behind(
        start_service: ServiceFactory, tmp_path: Path, clock: ManualClock, redis_url: str) -> None:
    """A busy SKU waits for the rate limit at the head of the queue while 100 quieter SKUs each sell
    one unit and get it back, 30 times: each change is offered, then withdrawn (E11: the value is
    what was published). The superseded entries behind the head were kept until each reached the
    head - one per change, for as long as the channel was behind: a day's worth of memory."""
    service, client = await start_service(clock=clock, estate=write_estate(tmp_path, ESTATE))
    desk = service.channels
    assert desk is not None
    feed = desk.feeds["market"]
    await client.record_events([fact("busy-count", "COUNT", "busy", "dc-1", 1000, T - 1000)] +
                               [fact(f"count-{n}", "COUNT", f"cold-{n}", "dc-1", 50, T - 1000) for n in range(COLD)])
    await wait_for_updates(redis_url, "market", COLD + 1)  # baselines: outside the rate limit
    await client.record_events([fact("busy-1", "SALE", "busy", "dc-1", 500, T - 900)])  # the one token
    await wait_for_updates(redis_url, "market", COLD + 2)
    await client.record_events([fact("busy-2", "SALE", "busy", "dc-1", 1, T - 800)])  # waits: no token left
    await until(lambda: feed.pending == 1, "the busy SKU waiting for the rate limit")
    for r in range(ROUNDS):
        await client.record_events([fact(f"sale-{r}-{n}", "SALE", f"cold-{n}", "dc-1", 1, T + r) for n in range(COLD)])
        await until(lambda: feed.pending == COLD + 1, f"round {r}: every cold SKU's change queued")
        await client.record_events([fact(f"back-{r}-{n}", "RETURN", f"cold-{n}", "dc-1", 1, T + r)
                                    for n in range(COLD)])
        await until(lambda: feed.pending == 1, f"round {r}: every cold SKU back to what was published")
        assert queued(feed) <= 2 * 2 * (feed.pending + 1) + 2 * HEAP_SLACK, f"round {r}"
    assert feed.pending == 1  # nothing lost: the busy SKU still waits for its token
    clock.advance(1000_000)
    desk.poke()
    updates = await wait_for_updates(redis_url, "market", COLD + 3)
    assert [(u.sku, u.quantity) for u in updates[COLD + 2:]] == [("busy", 499)]
