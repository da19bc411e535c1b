"""The input-stream reader stopped while the reply of the read that crossed a gap is on its way.

The read is one script: it moves the consumer group past the entries trimmed before it read them
and said how many there were, once — the next read sees no gap. A stop cancelling the reader there
lost that word for good: ``atp_ingest_trimmed_unread_total`` (alert ATPInputTrimmedUnread) never
counted the lost sales. The script now keeps the number owed in Redis until the reader says it told
it: the next read (here, the restarted reader's) tells it. Real Redis; the script's real reply held
at an event until the reader has been cancelled.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import redis
from prometheus_client import CollectorRegistry

from atp_service import ManualClock
from atp_service.config import ServiceConfig
from atp_service.intake.facts import FactDesk
from atp_service.intake.ingest import StreamIngestor
from atp_service.intake.unread import _READ
from atp_service.metrics import IntakeMetrics
from atp_service.storage.nodes import connect_any
from tests.atp_service.fact_helpers import F
from tests.atp_service.intake.test_ingest_claim_cancelled import stopped_at_the_gate

T = 1_700_000_000_000
STREAM = "atp:in:pos"


async def test_a_reader_stopped_while_the_read_crossing_a_gap_answers_still_counts_the_trimmed_entries(
        redis_url: str) -> None:
    """Defect: the read's script ran — the group past the 2 entries trimmed unread — and the stop
    cancelled the reader before it took the reply: nothing counted, nothing logged, and no later
    read could see the gap again. Now the reader started again counts them, once."""
    r: Any = redis.Redis.from_url(redis_url)  # its replies read as Redis gives them
    r.xgroup_create(STREAM, "atp", id="0", mkstream=True)
    for n in range(3):
        r.xadd(STREAM, F(f"p{n}", "SALE", "A", "DC", 1, T).fields())
    r.xtrim(STREAM, maxlen=1, approximate=False)  # p0 and p1 gone before the group read them
    registry = CollectorRegistry()
    desk = FactDesk(None, "atp:quarantine", 1000, metrics=IntakeMetrics(registry))  # type: ignore[arg-type]
    settings = dataclasses.replace(ServiceConfig(input_streams=(STREAM,)).ingest_settings, ingest_block_ms=60_000)
    client = connect_any(redis_url, 2.0)
    ingestor = StreamIngestor(client, desk, settings, ManualClock(T))
    real, held, release = client.register_script(_READ), asyncio.Event(), asyncio.Event()

    async def gated(**kwargs: Any) -> Any:
        reply = await real(**kwargs)  # run in Redis: the group is past the gap
        held.set()
        await release.wait()
        return reply

    ingestor._new._script = gated
    await stopped_at_the_gate(ingestor, held, release, "the read crossing the gap answered")
    assert registry.get_sample_value("atp_ingest_trimmed_unread_total", {"stream": STREAM}) == 0  # the word lost
    again, later = CollectorRegistry(), redis.Redis.from_url(redis_url)
    restarted = StreamIngestor(connect_any(redis_url, 2.0), FactDesk(
        None, "atp:quarantine", 1000, metrics=IntakeMetrics(again)), settings, ManualClock(T))  # type: ignore[arg-type]
    assert await restarted._new.read(10, None) is None  # p2 is pending with the stopped reader; nothing new
    assert again.get_sample_value("atp_ingest_trimmed_unread_total", {"stream": STREAM}) == 2
    assert not later.exists(restarted._new.owed_key), "told: forgotten"
    assert await restarted._new.read(10, None) is None
    assert again.get_sample_value("atp_ingest_trimmed_unread_total", {"stream": STREAM}) == 2  # once
    later.close()
