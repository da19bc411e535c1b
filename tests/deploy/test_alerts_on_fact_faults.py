"""Facts quarantined, through RecordEvents and through an input stream, caused on a real service with
a real Redis, fire their alert over the values the service's own /metrics endpoint exports
(tests/deploy/scraped_alerts.py) from the first ones on."""

from __future__ import annotations

import time
from pathlib import Path

import redis

from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_service import ManualClock
from tests.atp_service.fact_helpers import F, wait_consumed
from tests.conftest import ServiceFactory
from tests.waiting import until

from .scraped_alerts import Scrape, firing, scrape

NOW = int(time.time() * 1000)
LATE = NOW - 48 * 3600_000
"""Before stream time minus the default grace (24 h): quarantined late (E6)."""


def quarantined(samples: Scrape, origin: str) -> float:
    return sum(value for series, value in samples.items()
               if series.startswith("atp_facts_total{") and 'outcome="quarantined"' in series
               and f'origin="{origin}"' in series)


def fired_but_read_timeouts(before: Scrape, after: Scrape, tmp_path: Path) -> set[str]:
    """``firing``, less ``ATPIngestReadFailing`` where reads of the input streams did fail between the
    two scrapes: a read timing out on a loaded machine fires it rightly, and is not what is tested."""
    fired = firing(before, after, tmp_path)
    failures = [sum(v for k, v in samples.items() if k.startswith("atp_ingest_read_failures_total"))
                for samples in (before, after)]
    if failures[1] > failures[0]:
        fired.discard("ATPIngestReadFailing")
    return fired


async def test_late_facts_fire_the_quarantine_alert_from_the_first_ones(
        start_service: ServiceFactory, redis_url: str, tmp_path: Path) -> None:
    """A source uploading a day-old backlog: its facts are quarantined (not applied; on_hand wrong at
    their positions until someone replays them), and ATPFactsQuarantined never fired for the first
    of them — the series it reads was born with the first quarantined fact of its origin and kind,
    and rate() sees no rise in a series' first value."""
    service, client = await start_service(clock=ManualClock(NOW), metrics_port=0)
    await client.record_events([F("fresh", "RECEIPT", "A", "S1", 50, NOW).pb()])  # stream time: now
    before = scrape(service.metrics_port)
    results = await client.record_events([F(f"late-{n}", "SALE", "A", "S1", 1, LATE).pb() for n in range(3)])
    assert {r.outcome for r in results} == {pb.FACT_OUTCOME_QUARANTINED}
    after = scrape(service.metrics_port)
    assert quarantined(after, "grpc") == 3
    assert fired_but_read_timeouts(before, after, tmp_path) == {"ATPFactsQuarantined"}

    before = after
    r = redis.Redis.from_url(redis_url)
    for n in range(3):
        r.xadd("atp:in:pos", F(f"late-pos-{n}", "SALE", "A", "S1", 1, LATE).fields())
    await wait_consumed(redis_url, ["atp:in:pos"])
    # Counted once the script that wrote them and acknowledged their entries answered: after Redis shows
    # them consumed, by a turn of the service's loop or more.
    await until(lambda: quarantined(scrape(service.metrics_port), "stream") >= 3, "the stream's facts counted")
    after = scrape(service.metrics_port)
    assert quarantined(after, "stream") == 3
    assert fired_but_read_timeouts(before, after, tmp_path) == {"ATPFactsQuarantined"}
