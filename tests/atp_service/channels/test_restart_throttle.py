"""C2 across a restart: a key's throttle interval does not start again from nothing when the service does."""

from __future__ import annotations

from pathlib import Path

from atp_service import ManualClock
from tests.atp_service.channel_helpers import fact, one_dc_market, stream_updates, wait_for_updates, write_estate
from tests.conftest import ServiceFactory
from tests.waiting import until

T = 1_700_000_000_000


async def test_c2_a_change_right_after_a_restart_waits_for_the_throttle_interval_of_the_value_published_before(
        start_service: ServiceFactory, tmp_path: Path, redis_url: str) -> None:
    """Defect: the feed's throttle intervals lived in memory only. A key published just before a restart
    (a rolling update) was published again at once after it, twice inside one ``throttle_ms`` (C2)."""
    clock = ManualClock(T)
    estate = write_estate(tmp_path, one_dc_market(throttle_ms=60_000, rate_limit_per_s=1000.0))
    service, client = await start_service(clock=clock, estate=estate)
    await client.record_events([fact("c1", "COUNT", "sku-a", "dc-1", 10, T)])
    await wait_for_updates(redis_url, "market", 1)  # the baseline, at T
    await client.close()
    await service.stop(grace_s=0.1)

    clock.advance(1_000)  # a restart inside the key's interval
    again, client2 = await start_service(clock=clock, estate=estate)
    desk = again.channels
    assert desk is not None
    await client2.record_events([fact("s1", "SALE", "sku-a", "dc-1", 1, T + 1_000)])
    feed = desk.feeds["market"]
    await until(lambda: not desk._dirty and (feed.pending == 1 or feed.published[("sku-a", "")].quantity == 9),
                "the sale curated and offered")
    assert [u.quantity for u in await stream_updates(redis_url, "market")] == [10]  # not inside the interval
    assert feed.pending == 1
    clock.advance(60_000)
    desk.poke()
    assert [u.quantity for u in await wait_for_updates(redis_url, "market", 2)] == [10, 9]


async def test_c2_the_rate_limit_spent_just_before_a_restart_is_not_given_again_after_it(
        start_service: ServiceFactory, tmp_path: Path, redis_url: str) -> None:
    """The token bucket lived in memory only too: a feed read back from Redis started full, so a restart just
    after a burst let another burst through within the same second (C2: within the channel's rate limit). The
    bucket a feed had is not known after a start: a feed that has published starts with none spent to give."""
    clock = ManualClock(T)
    estate = write_estate(tmp_path, one_dc_market(throttle_ms=0, rate_limit_per_s=1.0, burst=2))
    service, client = await start_service(clock=clock, estate=estate)
    await client.record_events([fact(f"c{n}", "COUNT", f"sku-{n}", "dc-1", 10, T) for n in range(2)])
    await wait_for_updates(redis_url, "market", 2)  # the baselines: the burst spent
    await client.close()
    await service.stop(grace_s=0.1)

    again, client2 = await start_service(clock=clock, estate=estate)  # at once: not a token refilled
    desk = again.channels
    assert desk is not None
    await client2.record_events([fact(f"s{n}", "SALE", f"sku-{n}", "dc-1", 1, T + 1) for n in range(2)])
    feed = desk.feeds["market"]
    sold = [(f"sku-{n}", "") for n in range(2)]
    await until(lambda: not desk._dirty and (feed.pending == 2 or all(feed.published[k].quantity == 9 for k in sold)),
                "the sales curated and offered")
    assert len(await stream_updates(redis_url, "market")) == 2 and feed.pending == 2  # no token to send them with
    clock.advance(1_000)
    desk.poke()
    assert [u.quantity for u in await wait_for_updates(redis_url, "market", 3)][2] == 9
