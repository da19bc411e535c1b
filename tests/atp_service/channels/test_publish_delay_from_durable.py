"""``atp_channel_publish_delay_seconds`` is the desk's own lag: from when the change behind a value was durable here
(its ``durable_at``) to its publication. Measured from the source's ``event_time`` it also counted how late the source
sent the fact (a POS batch uploaded an hour late, a store's clock behind): a stock-out the desk published at once read
as an hour late, and ``ATPStockoutPublishSlow`` (p99 > 1 s) paged for a desk that was not slow. How late facts arrive
is ``atp_fact_lag_seconds``'s."""

from __future__ import annotations

from pathlib import Path

from atp_service import ManualClock
from tests.atp_service.channel_helpers import desk_served, fact, one_dc_market, write_estate
from tests.conftest import test_config as make_config
from tests.waiting import until

T = 1_700_000_000_000
HOUR_MS = 3_600_000


async def test_a_stockout_published_at_once_from_facts_sent_an_hour_late_reads_no_delay(
        redis_url: str, tmp_path: Path) -> None:
    config = make_config(estate=write_estate(tmp_path, one_dc_market(0, 1000.0)), input_streams=())
    async with desk_served(config, redis_url, ManualClock(T)) as (service, desk, client):
        feed = desk.feeds["market"]
        # A store's batch uploaded an hour after its sales: the facts' source times are an hour behind the service's
        await client.record_events([fact("c1", "COUNT", "sku-a", "dc-1", 3, T - HOUR_MS)])
        await until(lambda: len(feed.published) == 1 and not feed.in_flight, "the baseline published")
        await client.record_events([fact("s1", "SALE", "sku-a", "dc-1", 3, T - HOUR_MS + 1)])
        await until(lambda: [p.quantity for p in feed.published.values()] == [0] and not feed.in_flight, "0 published")
        registry = service.metrics.registry
        labels = {"channel": "market", "kind": "stockout"}
        count = registry.get_sample_value("atp_channel_publish_delay_seconds_count", labels)
        total = registry.get_sample_value("atp_channel_publish_delay_seconds_sum", labels)
        assert count == 1, "the stock-out observed once"
        # The service's clock never moved: the stock-out went out the moment its sale was durable.
        assert total == 0, (f"a stock-out published at once observed {total} s late: the hour its facts came late, "
                            "which is atp_fact_lag_seconds's, would page ATPStockoutPublishSlow")
