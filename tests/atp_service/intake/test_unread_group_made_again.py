"""Entries trimmed unread after the reader made its consumer group again (XGROUP DESTROY, a Redis
restored without the group): the group is made after the newest entry the reader had seen, and
Redis keeps no ``entries-read`` for a group made at such an id — so the read crossing a later gap
could not tell how many entries were lost, counted 0 and logged nothing. Real redis-server."""

from __future__ import annotations

import dataclasses
from typing import Any

import redis
from prometheus_client import CollectorRegistry

from atp_service import ManualClock
from atp_service.config import ServiceConfig
from atp_service.intake.facts import FactDesk
from atp_service.intake.ingest import StreamIngestor
from atp_service.metrics import IntakeMetrics
from atp_service.storage.nodes import connect_any
from tests.atp_service.fact_helpers import F

T = 1_700_000_000_000
STREAM = "atp:in:pos"


async def test_entries_trimmed_unread_after_the_group_was_made_again_are_counted(redis_url: str) -> None:
    """Defect: p0 read, the group destroyed and made again after p0 (no entries-read), then p1..p3
    added and the stream trimmed to its newest entry before the group read them: the read that
    crossed the gap counted 0 (Redis could not tell how many the group had read), so the lost POS
    facts raised no alert. Now the group is made with its count where it can be known: 2 lost."""
    r: Any = redis.Redis.from_url(redis_url)
    r.xgroup_create(STREAM, "atp", id="0", mkstream=True)
    seen = r.xadd(STREAM, F("p0", "SALE", "A", "DC", 1, T).fields())
    r.xadd(STREAM, F("p1", "SALE", "A", "DC", 1, T).fields())  # added while the reader was behind
    registry = CollectorRegistry()
    desk = FactDesk(None, "atp:quarantine", 1000, metrics=IntakeMetrics(registry))  # type: ignore[arg-type]
    settings = dataclasses.replace(ServiceConfig(input_streams=(STREAM,)).ingest_settings, ingest_count=1)
    ingestor = StreamIngestor(connect_any(redis_url, 2.0), desk, settings, ManualClock(T))
    try:
        r.xreadgroup("atp", settings.consumer_name, {STREAM: ">"}, count=1)  # p0: the newest this reader has seen
        r.xack(STREAM, "atp", seen)
        ingestor._seen[STREAM] = seen
        await ingestor._tag()  # told Redis (bounds.py): a group made again reads after p0 while Redis holds it
        r.xgroup_destroy(STREAM, "atp")
        await ingestor._create_groups(again=True)  # as the reading loop does after NOGROUP
        for n in (2, 3):
            r.xadd(STREAM, F(f"p{n}", "SALE", "A", "DC", 1, T).fields())
        r.xtrim(STREAM, maxlen=1, approximate=False)  # p1 and p2 gone before the group read them
        reply = await ingestor._new.read(10, None)
        assert [b"p3" in fields for _, rows in reply for _, fields in rows] == [True]  # raw: flat fields
        assert registry.get_sample_value("atp_ingest_trimmed_unread_total", {"stream": STREAM}) == 2
    finally:
        await ingestor._client.aclose()
        r.close()
