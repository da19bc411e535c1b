"""A dead consumer's pending entry trimmed from its stream, claimed: XAUTOCLAIM (Redis 7) hands back
its id apart and takes it out of the pending list itself, so its dead letter is its only trace. The
reader wrote that dead letter with a command of its own after the claim's reply: a process killed in
between (kill -9, an OOM kill), or a dead letter Redis refused, left no trace at all — no dead letter,
nothing pending. Real redis-server."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import pytest
import redis

from atp_service import ManualClock
from atp_service.config import ServiceConfig
from atp_service.intake.entries import Dead
from atp_service.intake.facts import FactDesk
from atp_service.intake.ingest import StreamIngestor
from atp_service.metrics import IntakeMetrics
from atp_service.storage.nodes import connect_any
from tests.atp_service.fact_helpers import F

T = 1_700_000_000_000
STREAM = "atp:in:wms"


class Killed(BaseException):
    """The process gone at this point: nothing after it runs (as kill -9)."""


def _trimmed_at_a_dead_consumer(r: Any) -> bytes:
    r.xgroup_create(STREAM, "atp", id="0", mkstream=True)
    gone: bytes = r.xadd(STREAM, F("w-gone", "RECEIPT", "A", "DC", 3, T).fields())
    r.xreadgroup("atp", "dead-consumer", {STREAM: ">"}, count=10)
    r.xdel(STREAM, gone)  # pending at the dead consumer, trimmed from the stream
    return gone


def _ingestor(redis_url: str) -> StreamIngestor:
    settings = dataclasses.replace(ServiceConfig(input_streams=(STREAM,)).ingest_settings, claim_idle_ms=0)
    desk = FactDesk(None, "atp:quarantine", 1000, metrics=IntakeMetrics())  # type: ignore[arg-type]  # no fact read
    return StreamIngestor(connect_any(redis_url, 2.0), desk, settings, ManualClock(T))


def _dead_letters(r: Any) -> list[tuple[bytes, bytes]]:
    return [(fields[b"_id"], fields[b"_code"]) for _, fields in r.xrange("atp:dlq")]


async def test_a_claimed_entry_found_trimmed_keeps_its_dead_letter_if_the_reader_dies_after_the_claim(
        redis_url: str) -> None:
    """Defect: the claim took the trimmed entry out of the pending list and the reader died before
    it wrote the dead letter: the entry had no trace anywhere, its fact perhaps never applied."""
    r: Any = redis.Redis.from_url(redis_url)
    gone = _trimmed_at_a_dead_consumer(r)
    ingestor = _ingestor(redis_url)

    async def dies(dead: Sequence[Dead]) -> None:
        raise Killed

    ingestor._settler.dead_letter = dies  # type: ignore[method-assign]
    try:
        with pytest.raises(Killed):
            await ingestor._claim()
            raise Killed  # the claim wrote its dead letters itself: killed right after its reply
    finally:
        await ingestor._client.aclose()
    assert _dead_letters(r) == [(gone, b"TRIMMED_WHILE_PENDING")]
    assert r.xpending(STREAM, "atp")["pending"] == 0


async def test_a_claimed_entry_found_trimmed_stays_pending_while_its_dead_letter_cannot_be_written(
        redis_url: str) -> None:
    """Defect: the dead-letter stream's key holding another type (WRONGTYPE), the claim took the
    trimmed entry out of the pending list and its dead letter was refused: gone without a trace. It
    must stay where it was until its dead letter can be written, then be dead-lettered."""
    r: Any = redis.Redis.from_url(redis_url)
    gone = _trimmed_at_a_dead_consumer(r)
    r.set("atp:dlq", "not a stream")
    ingestor = _ingestor(redis_url)
    try:
        with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
            await ingestor._claim()
        assert r.xpending(STREAM, "atp")["pending"] == 1, "the trimmed entry's trace is lost"
        r.delete("atp:dlq")
        await ingestor._claim()
    finally:
        await ingestor._client.aclose()
    assert _dead_letters(r) == [(gone, b"TRIMMED_WHILE_PENDING")]
    assert r.xpending(STREAM, "atp")["pending"] == 0
