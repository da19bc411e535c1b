"""C2 in the service: on a channel held behind its rate limit by fast sellers, a slow seller's change
goes out once it has waited ``max_wait_ms`` past its throttle interval. Real Redis, real gRPC server,
time moved by a manual clock (one second a step: one token of the channel's 1 update/s)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from atp_service import ManualClock
from tests.atp_service.channel_helpers import fact, one_dc_market, stream_updates, wait_for_updates, write_estate
from tests.conftest import ServiceFactory
from tests.waiting import until

T = 1_700_000_000_000
MAX_WAIT_MS = 3000
STEPS = 9
ESTATE = one_dc_market(1000, 1.0, burst=1) + f"max_wait_ms = {MAX_WAIT_MS}\n"
FAST = ("fast-a", "fast-b")


async def test_c2_a_slow_seller_s_change_is_published_within_max_wait_while_fast_sellers_keep_changing(
        start_service: ServiceFactory, tmp_path: Path, clock: ManualClock, redis_url: str) -> None:
    """Two fast sellers change every second on a channel allowed one update a second: one of them
    was always ready, with the higher sales velocity, so the slow seller's change waited for as long
    as they kept selling (its old, higher number shown: oversold). It goes out within its bound now,
    once, counted in ``atp_channel_overdue_total``; versions stay contiguous (C3)."""
    service, client = await start_service(clock=clock, estate=write_estate(tmp_path, ESTATE))
    desk = service.channels
    assert desk is not None
    skus = (*FAST, "slow")
    await client.record_events([fact(f"count-{sku}", "COUNT", sku, "dc-1", 1000, T - 1000) for sku in skus])
    await wait_for_updates(redis_url, "market", len(skus))  # the baselines (outside the rate limit)
    started, finished = [0], list[int]()
    run_round = desk.run_round

    async def counted() -> Any:
        started[0] += 1
        index = started[0]
        await run_round()
        finished.append(index)

    desk.run_round = counted  # type: ignore[method-assign]
    feed, slow_out_after = desk.feeds["market"], list[int]()  # ms from the slow seller's change to its publish
    slow_at = clock.advance(2000)
    for step in range(STEPS):
        big = 100 if step == 0 else 1
        sales = [fact(f"sale-{sku}-{step}", "SALE", sku, "dc-1", big, clock.now_ms()) for sku in FAST]
        if step == 0:
            sales.append(fact("sale-slow", "SALE", "slow", "dc-1", 1, clock.now_ms()))
        await client.record_events(sales)
        after = started[0] + 1  # a round started after the sales were durable
        desk.poke()
        await until(lambda: any(index >= after for index in finished), f"a round after step {step}")  # noqa: B023
        if feed.published["slow", ""].quantity == 999 and not slow_out_after:
            slow_out_after.append(clock.now_ms() - slow_at)
        clock.advance(1000)
    written = await stream_updates(redis_url, "market")
    updates = written[len(skus):]
    slow = [u for u in updates if u.sku == "slow"]
    assert [u.quantity for u in slow] == [999], f"the slow seller's change never went out: {updates}"
    assert slow_out_after[0] <= MAX_WAIT_MS + 2000, slow_out_after
    first = written[0].version  # the start's first version (C3: at least its clock time in microseconds)
    assert [u.version for u in updates] == list(range(first + len(skus), first + len(skus) + len(updates)))
    overdue = service.metrics.registry.get_sample_value("atp_channel_overdue_total", {"channel": "market"})
    assert overdue is not None and overdue >= 1
