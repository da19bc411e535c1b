"""The input-stream reader stopped while it tells the dead letters of entries XAUTOCLAIM found trimmed.

XAUTOCLAIM (Redis 7) takes the pending entries it finds trimmed from the stream out of the pending
list itself: their dead letters are the only trace left of them. A stop cancelling the reader at
that write left no dead letter, nor any pending entry to find them again. The claim's script writes
them now (``Claims``): a stop cancelling the reader there must still have it run, and the dead letters
counted. Real Redis; the claim held at an event around the reader's real one until the reader has
been cancelled.
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
from atp_service.metrics import IntakeMetrics
from atp_service.storage.nodes import connect_any
from tests.atp_service.fact_helpers import F
from tests.waiting import until

T = 1_700_000_000_000
STREAM = "atp:in:wms"


async def test_a_reader_stopped_while_telling_entries_claimed_trimmed_still_dead_letters_them(redis_url: str) -> None:
    """Defect: the reader claimed a dead consumer's entries, Redis handed back apart the one trimmed
    while pending and dropped it from the pending list; the stop cancelled the reader in the dead
    letter's write, so the entry went without a trace — a fact perhaps never applied, never said."""
    r: Any = redis.Redis.from_url(redis_url)  # its replies read as Redis gives them
    r.xgroup_create(STREAM, "atp", id="0", mkstream=True)
    gone = r.xadd(STREAM, F("w-gone", "RECEIPT", "A", "DC", 3, T).fields())
    r.xreadgroup("atp", "dead-consumer", {STREAM: ">"}, count=10)
    r.xdel(STREAM, gone)  # pending at the dead consumer, trimmed from the stream
    settings = dataclasses.replace(ServiceConfig(input_streams=(STREAM,)).ingest_settings, claim_idle_ms=1)
    registry = CollectorRegistry()
    metrics = IntakeMetrics(registry)
    desk = FactDesk(None, "atp:quarantine", 1000, metrics=metrics)  # type: ignore[arg-type]  # no fact read
    ingestor = StreamIngestor(connect_any(redis_url, 2.0), desk, settings, ManualClock(T))
    real, held, release = ingestor._claims.claim, asyncio.Event(), asyncio.Event()

    async def gated(*args: Any) -> Any:
        held.set()
        await release.wait()
        return await real(*args)

    ingestor._claims.claim = gated  # type: ignore[method-assign]
    await stopped_at_the_gate(ingestor, held, release, "the claim on its way")
    dead = r.xrange("atp:dlq")
    assert [(fields[b"_id"], fields[b"_code"]) for _, fields in dead] == [(gone, b"TRIMMED_WHILE_PENDING")], dead
    assert r.xpending(STREAM, "atp")["pending"] == 0
    assert registry.get_sample_value("atp_dead_lettered_total", {"stream": STREAM}) == 1  # though cancelled


async def stopped_at_the_gate(ingestor: StreamIngestor, held: asyncio.Event, release: asyncio.Event, what: str) -> None:
    """``ingestor`` started, its reader cancelled (the stop) once ``held`` says it waits at the gate,
    the gate opened after: the reader must end cancelled, not with an error; the ingestor stopped."""
    await ingestor.start()
    task = ingestor.task
    assert task is not None
    try:
        await until(held.is_set, what)
        task.cancel()
        await until(lambda: task.cancelling() > 0 or task.done(), "the reader cancelled")
        release.set()
        await asyncio.wait([task], timeout=20)  # the test's own bound
        assert task.done() and task.cancelled()
    finally:
        release.set()
        await ingestor.stop()
