"""What the tests of a reader's claim of a dead consumer's pending entries share: the reader, driven step by step
(``claiming_ingestor``), and an entry left pending at a consumer gone for good behind the newest entry the reader read
(``orphan_behind_the_newest_read``). Real redis-server."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from atp_service import ManualClock
from atp_service.config import ServiceConfig
from atp_service.engine.clock import Ticks
from atp_service.intake.facts import FactDesk
from atp_service.intake.ingest import StreamIngestor
from atp_service.metrics import IntakeMetrics
from atp_service.storage.nodes import connect_any
from tests.atp_service.fact_helpers import F

T = 1_700_000_000_000
POS = "atp:in:pos"


def claiming_ingestor(redis_url: str, *streams: str, ticks: Ticks = time.monotonic) -> StreamIngestor:
    """A reader of ``streams`` that claims an entry pending elsewhere however briefly idle (``claim_idle_ms=0``),
    timing its steps on ``ticks``."""
    settings = dataclasses.replace(ServiceConfig(input_streams=streams).ingest_settings, claim_idle_ms=0)
    desk = FactDesk(None, "atp:quarantine", 1000, metrics=IntakeMetrics())  # type: ignore[arg-type]  # no fact applied
    return StreamIngestor(connect_any(redis_url, 2.0), desk, settings, ManualClock(T), ticks=ticks)


async def orphan_behind_the_newest_read(r: Any, ingestor: StreamIngestor) -> tuple[Any, Any, list[Any]]:
    """The reader's groups made, an entry of ``POS`` left pending at a consumer gone for good, then a newer one read by
    the reader: the orphan's id, the newest's, and the ids of what that read delivered."""
    await ingestor._create_groups()
    orphan = r.xadd(POS, F("orphan", "RECEIPT", "A", "S1", 3, T).fields())
    r.xreadgroup("atp", "dead-consumer", {POS: ">"}, count=10)  # pending at a consumer gone for good
    newest = r.xadd(POS, F("newest", "RECEIPT", "A", "S1", 1, T).fields())
    return orphan, newest, [entry_id for _, entry_id, _ in await ingestor._read(None, block=None)]


async def read_acknowledged_and_tagged(r: Any, ingestor: StreamIngestor) -> tuple[list[Any], list[Any]]:
    """The reader's groups made, three entries of ``POS`` read by the reader and acknowledged (applied), then its tag
    answered (``bounds.py``): while Redis holds that token, a group made again reads after them. The ids of the
    entries added, and those the read delivered."""
    await ingestor._create_groups()
    old = [r.xadd(POS, F(f"e{n}", "RECEIPT", "A", "S1", 1, T).fields()) for n in range(3)]
    read = [entry_id for _, entry_id, _ in await ingestor._read(None, block=None)]
    r.xack(POS, "atp", *old)
    await ingestor._tag()
    return old, read
