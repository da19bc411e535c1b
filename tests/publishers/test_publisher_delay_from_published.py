"""``atp_publisher_delivery_delay_seconds`` is the publisher's own lag: from the entry's publication on the channel's
stream (``published_at``) to its delivery. Measured from the source's ``event_time`` it counted how late the source
sent the fact too (a POS batch uploaded an hour late, a store's clock behind): updates delivered the moment they were
published read as an hour late, and ``ATPPublisherDelaySlow`` (p99 > 1 min, runbook: a publisher cannot deliver)
paged for a publisher that delivered at once. The desk's lag is ``atp_channel_publish_delay_seconds``'s, the source's
``atp_fact_lag_seconds``'s."""

from __future__ import annotations

import time
from pathlib import Path

import redis.asyncio as aioredis

from publishers import JsonlAdapter, Publisher, PublisherMetrics
from reservation import ChannelUpdate, StockStatus
from tests.publishers.test_publisher import config, publish, run_until

HOUR_MS = 3_600_000


async def test_updates_delivered_as_published_from_facts_sent_an_hour_late_read_no_hour_of_delay(
        client: aioredis.Redis, tmp_path: Path) -> None:
    now = time.time_ns() // 1_000_000
    # Published now, from facts whose source times are an hour behind (a store's batch uploaded late)
    await publish(client, [ChannelUpdate("web", sku, "", q, None, StockStatus.OUT_OF_STOCK if q == 0 else
                                         StockStatus.IN_STOCK, v, now - HOUR_MS, now, now)
                           for v, (sku, q) in enumerate([("a", 5), ("b", 0)], start=1)])
    out, metrics = tmp_path / "feed.jsonl", PublisherMetrics()
    publisher = Publisher(config(group="jsonl"), client, JsonlAdapter(out), metrics)

    async def delivered() -> bool:
        return out.exists() and len(out.read_text().splitlines()) == 2

    await run_until(publisher, delivered)
    samples = {s.name: s.value for m in metrics.delay.collect() for s in m.samples if s.labels.get("le") is None}
    assert samples["atp_publisher_delivery_delay_seconds_count"] == 2
    total = samples["atp_publisher_delivery_delay_seconds_sum"]
    # Both were delivered within moments of their publication, not an hour after it.
    assert total < HOUR_MS / 1000 / 2, (
        f"2 updates delivered as soon as published observed {total:.0f} s late in all: the hour their facts came late "
        "(atp_fact_lag_seconds's) would page ATPPublisherDelaySlow")
