"""The input stream reader cancelled once, the cancel landing just as one of its commands was written: redis-py
sends through ``asyncio.wait_for``, which on Python 3.11 returns the write's result and drops a cancellation that
arrives in that turn (CPython gh-86296). The reader read on for ever, its task "cancelling": asyncio.run's one
cancel at the loop's end (an exception escaping serving) waited on it for good. ``stop`` repeats its cancel
(``cancel_and_wait``); one cancel now ends the reader at its next round too. Real Redis; the cancel is sent
from inside the reader's real write, right after it."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest
from prometheus_client import CollectorRegistry

from atp_service import ManualClock
from atp_service.config import ServiceConfig
from atp_service.intake.facts import FactDesk
from atp_service.intake.ingest import StreamIngestor
from atp_service.metrics import IntakeMetrics
from atp_service.storage.nodes import connect_any
from tests.atp_service.intake.cancel_as_written import cancel_as_written, ended_by_the_cancel

T = 1_700_000_000_000


async def test_a_reader_cancelled_as_its_command_is_written_ends(redis_url: str,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    desk = FactDesk(None, "atp:quarantine", 1000, metrics=IntakeMetrics(CollectorRegistry()))  # type: ignore[arg-type]
    settings = dataclasses.replace(ServiceConfig(input_streams=("atp:in:pos",)).ingest_settings, ingest_block_ms=10)
    client = connect_any(redis_url, 2.0)
    ingestor = StreamIngestor(client, desk, settings, ManualClock(T))
    await ingestor._create_groups()
    await client.ping()  # a connection made: its class is the one every command goes through
    reading = asyncio.ensure_future(ingestor._run())
    cancels = cancel_as_written(monkeypatch, client, lambda: reading)
    try:
        await ended_by_the_cancel(reading, cancels, "the reader read on after its cancel")
    finally:
        monkeypatch.undo()
        ingestor._task = reading
        await ingestor.stop()
