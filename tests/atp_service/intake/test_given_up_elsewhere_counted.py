"""An entry whose fact was refused for a reason that does not pass with time, at the delivery bound
(``refusals.RefusalBound``), taken by another consumer (its XAUTOCLAIM) between the bound's check and the dead-letter
script: the script writes no letter and leaves it to its holder (``dead_letters._WRITE``: pending to this consumer no
more) — yet ``atp_ingest_given_up_total`` counted it given up here, and the holder, reaching its own bound, counted it
again: one entry, given up twice on the operator's dashboard, none of it by this reader. Real redis-server; the reader
driven step by step."""

from __future__ import annotations

import dataclasses
from typing import Any

import redis

from atp_service import ManualClock
from atp_service.config import ServiceConfig
from atp_service.intake.entries import Read
from atp_service.intake.facts import FactDesk
from atp_service.intake.ingest import StreamIngestor
from atp_service.metrics import IntakeMetrics
from atp_service.storage.nodes import connect_any
from reservation import DomainError
from tests.atp_service.fact_helpers import F
from tests.atp_service.intake.claim_helpers import POS, T


def _given_up(metrics: IntakeMetrics) -> float:
    return sum(sample.value for metric in metrics.ingest_given_up.collect() for sample in metric.samples
               if sample.name.endswith("_total"))


async def test_an_entry_given_up_but_claimed_elsewhere_before_its_letter_is_not_counted_given_up(
        redis_url: str) -> None:
    """Defect: the entry refused ``INTERNAL`` at two deliveries (bound 1), given up; claimed by ``other`` before the
    script ran, it was neither dead-lettered nor acknowledged here, yet counted in ``atp_ingest_given_up_total``."""
    r: Any = redis.Redis.from_url(redis_url)
    settings = dataclasses.replace(ServiceConfig(input_streams=(POS,)).ingest_settings, ingest_max_deliveries=1)
    metrics = IntakeMetrics()
    desk = FactDesk(None, "atp:quarantine", 1000, metrics=metrics)  # type: ignore[arg-type]  # no fact applied
    ingestor = StreamIngestor(connect_any(redis_url, 2.0), desk, settings, ManualClock(T))
    settler = ingestor._settler
    bound = settler._bound
    try:
        await ingestor._create_groups()
        entry = r.xadd(POS, F("bug", "RECEIPT", "A", "S1", 1, T).fields())
        read: list[Read] = [(stream, entry_id, fields or []) for stream, entry_id, fields in
                            await ingestor._read(None, block=None)]
        refusal = DomainError("a bug")  # INTERNAL: does not pass with time
        assert await settler.settle(read, [refusal], []) == 0, "seen refused once: stays pending"
        past = bound.past

        async def past_then_claimed(refused: Any) -> Any:
            given = await past(refused)
            assert given, "given up at the bound"
            r.xclaim(POS, "atp", "other", 0, [entry])  # another process's XAUTOCLAIM, before the script runs
            return given

        bound.past = past_then_claimed  # type: ignore[method-assign]
        await settler.settle(read, [refusal], [])
    finally:
        await ingestor._client.aclose()
    assert not r.exists("atp:dlq"), "not dead-lettered here: its holder judges it"
    assert [p["consumer"] for p in r.xpending_range(POS, "atp", "-", "+", 10)] == [b"other"]
    assert _given_up(metrics) == 0, "counted given up by a reader that wrote no letter for it"
