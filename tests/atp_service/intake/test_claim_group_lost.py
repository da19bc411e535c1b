"""A dead consumer's pending entries claimed on one input stream, then the claim of the next stream
refused (its group deleted, as an operator's XGROUP DESTROY of each stream in turn does): the entries
the first claim took were dropped with the refusal, in this reader's pending list but unknown to
``Unacked``, and the group of their stream, deleted too, was made again after the newest entry read —
never delivered again, no dead letter. Real redis-server; the reader driven step by step."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import redis

from atp_service import ManualClock
from atp_service.config import ServiceConfig
from atp_service.intake.facts import FactDesk
from atp_service.intake.ingest import StreamIngestor
from atp_service.metrics import IntakeMetrics
from atp_service.storage.nodes import connect_any
from tests.atp_service.fact_helpers import F

T = 1_700_000_000_000
POS, WMS = "atp:in:pos", "atp:in:wms"


def _ingestor(redis_url: str) -> StreamIngestor:
    settings = dataclasses.replace(ServiceConfig(input_streams=(POS, WMS)).ingest_settings, claim_idle_ms=0)
    desk = FactDesk(None, "atp:quarantine", 1000, metrics=IntakeMetrics())  # type: ignore[arg-type]  # no fact applied
    return StreamIngestor(connect_any(redis_url, 2.0), desk, settings, ManualClock(T))


async def test_entries_claimed_before_the_next_stream_s_claim_failed_are_read_again_once_their_group_is_lost(
        redis_url: str) -> None:
    """Defect: the entry a dead consumer left pending on ``POS`` was claimed, the claim on ``WMS`` then
    refused NOGROUP: the claimed entry was dropped with the refusal, and ``POS``'s group, deleted too,
    was made again after the newest entry read there — the entry never delivered again."""
    r: Any = redis.Redis.from_url(redis_url)
    ingestor = _ingestor(redis_url)
    try:
        await ingestor._create_groups()
        orphan = r.xadd(POS, F("orphan", "RECEIPT", "A", "S1", 3, T).fields())
        r.xreadgroup("atp", "dead-consumer", {POS: ">"}, count=10)  # pending at a consumer gone for good
        newest = r.xadd(POS, F("newest", "RECEIPT", "A", "S1", 1, T).fields())
        assert [entry_id for _, entry_id, _ in await ingestor._read(None, block=None)] == [newest]
        r.xack(POS, "atp", newest)  # applied
        claim = ingestor._claims.claim

        async def groups_destroyed_after_the_first(stream: str, *args: Any) -> Any:
            got = await claim(stream, *args)
            if stream == POS:  # the operator's XGROUP DESTROY of each stream, landing between the claims
                r.xgroup_destroy(WMS, "atp")
                r.xgroup_destroy(POS, "atp")
            return got

        ingestor._claims.claim = groups_destroyed_after_the_first  # type: ignore[method-assign]
        with pytest.raises(redis.ResponseError, match="NOGROUP"):
            await ingestor._claim()
        await ingestor._create_groups(again=True)  # as the reading loop does after a NOGROUP
        again = await ingestor._read(None, block=None)
    finally:
        await ingestor._client.aclose()
    assert (POS, orphan) in [(stream, entry_id) for stream, entry_id, _ in again], "the claimed entry was lost"
