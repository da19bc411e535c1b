"""Ordinary changes due at once are all published by the desk's next round, however many: real Redis,
real gRPC server, time held still by a manual clock (a change is due one throttle interval after the last)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from atp_service import ManualClock
from atp_service.config_slices import PUBLISH_WRITES_PER_ROUND
from tests.atp_service.channel_helpers import fact, one_dc_market, wait_for_updates, write_estate
from tests.conftest import ServiceFactory
from tests.waiting import until

T = 1_700_000_000_000
SKUS = 10
BATCH = 3
ESTATE = one_dc_market(1000, 1000000.0)


async def test_c2_every_change_due_is_published_by_the_next_round_not_one_batch_a_round(
        start_service: ServiceFactory, tmp_path: Path, clock: ManualClock, redis_url: str) -> None:
    """Ten SKUs sell at once; their changes wait out the throttle interval of their baselines. The
    first round after it published ``publish_batch_max`` of them and left the rest to later rounds:
    under a burst a round curates for hundreds of milliseconds, so a busy channel was held to a few
    thousand changes a second, far below its rate limit, and the slowest sellers' changes (the last
    in order) waited for as long as the burst lasted — 20 s of stale availability on a marketplace."""
    service, client = await start_service(clock=clock, estate=write_estate(tmp_path, ESTATE),
                                          publish_batch_max=BATCH)
    desk = service.channels
    assert desk is not None
    feed = desk.feeds["market"]
    await client.record_events([fact(f"count-{n}", "COUNT", f"sku-{n}", "dc-1", 50, T - 1000) for n in range(SKUS)])
    await wait_for_updates(redis_url, "market", SKUS)  # the baselines
    left_after_round: list[tuple[int, int]] = []  # (clock when the round began, values still pending after it)
    run_round = desk.run_round

    async def counted() -> Any:
        began = clock.now_ms()
        await run_round()
        left_after_round.append((began, feed.pending))

    desk.run_round = counted  # type: ignore[method-assign]
    await client.record_events([fact(f"sale-{n}", "SALE", f"sku-{n}", "dc-1", 1, T) for n in range(SKUS)])
    await until(lambda: feed.pending == SKUS, "every change waiting for its throttle interval")
    due = clock.advance(1000)
    desk.poke()
    await until(lambda: any(began >= due for began, _ in left_after_round), "a round after the interval")
    first = next(left for began, left in left_after_round if began >= due)
    assert first == 0, f"{first} of {SKUS} changes due still unpublished after the round"
    updates = await wait_for_updates(redis_url, "market", 2 * SKUS)
    assert sorted((u.sku, u.quantity) for u in updates[SKUS:]) == [(f"sku-{n}", 49) for n in range(SKUS)]


async def test_a_round_writes_a_backlog_at_most_publish_writes_per_round_times(
        start_service: ServiceFactory, tmp_path: Path, clock: ManualClock, redis_url: str) -> None:
    """A backlog larger than a round may write (a new channel's baseline of millions of keys) goes
    out over rounds, curation running between them (new stock-outs first): each round's publishing
    of stock-outs writes once, its last publishing at most ``PUBLISH_WRITES_PER_ROUND`` times."""
    skus = PUBLISH_WRITES_PER_ROUND + 8
    service, client = await start_service(clock=clock, estate=write_estate(tmp_path, ESTATE), publish_batch_max=1)
    desk = service.channels
    assert desk is not None
    feed, write, run_round = desk.feeds["market"], desk.store.write, desk.run_round
    await client.record_events([fact(f"count-{n}", "COUNT", f"sku-{n}", "dc-1", 50, T - 1000) for n in range(skus)])
    await wait_for_updates(redis_url, "market", skus)  # the baselines, over rounds
    rounds: list[tuple[int, int, int]] = []  # (clock when the round began, its writes, values pending after it)
    writes = [0]

    async def counted_write(*args: Any, **kwargs: Any) -> Any:
        writes[0] += 1
        return await write(*args, **kwargs)

    async def counted_round() -> Any:
        began, writes[0] = clock.now_ms(), 0
        await run_round()
        rounds.append((began, writes[0], feed.pending))

    desk.store.write, desk.run_round = counted_write, counted_round  # type: ignore[method-assign]
    await client.record_events([fact(f"sale-{n}", "SALE", f"sku-{n}", "dc-1", 1, T) for n in range(skus)])
    await until(lambda: feed.pending == skus, "every change waiting for its throttle interval")
    due = clock.advance(1000)
    desk.poke()
    await until(lambda: any(began >= due for began, _, _ in rounds), "a round after the interval")
    _, written, left = next(r for r in rounds if r[0] >= due)
    assert written <= PUBLISH_WRITES_PER_ROUND + 2 and left == skus - PUBLISH_WRITES_PER_ROUND, (written, left)
    await wait_for_updates(redis_url, "market", 2 * skus)  # the rest, by the next rounds
