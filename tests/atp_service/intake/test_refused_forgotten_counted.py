"""Entries refused as stamped in the future (E7) are kept as refused while their stream holds them, at most
``REFUSED_KEPT`` per stream: past it the oldest is forgotten and, delivered again (a group made again from the
stream's start), judged again by a clock that has moved on — applied, its dead letter saying it was refused. With
refused entries kept until their stream is trimmed, an untrimmed stream fills the bound; nothing told an operator
that the service had stopped keeping its word for some of them. Counted: ``atp_ingest_refused_forgotten_total``."""

from __future__ import annotations

from typing import Any

import pytest
import redis

from atp_service import ManualClock
from atp_service.intake import unacked
from atp_service.intake.dead_letters import Why
from atp_service.intake.unacked import Unacked
from tests.atp_service.fact_helpers import F
from tests.atp_service.intake.test_group_lost_pending import STREAM
from tests.conftest import ServiceFactory
from tests.waiting import until

SKEW_MS = 300_000  # fact_future_skew_ms by default
WHY = Why("in the future", "event_time_ms", "INVALID_FIELD")


def test_the_oldest_entry_refused_past_the_bound_is_forgotten_and_told(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(unacked, "REFUSED_KEPT", 2)
    told: list[tuple[str, int]] = []
    kept = Unacked(forgotten=lambda stream, n: told.append((stream, n)))
    kept.refused([((STREAM, b"%d-0" % i, [], WHY), b"%d-0" % i) for i in (3, 1, 2)])
    assert [one[:2] for one in kept.judged([(STREAM, b"%d-0" % i, None) for i in (1, 2, 3)])[1]] == [
        (STREAM, b"2-0"), (STREAM, b"3-0")]
    assert told == [(STREAM, 1)]
    kept.refused([((STREAM, b"3-0", [], WHY), b"4-0")])  # one refused again (its letter written again): not a second
    assert told == [(STREAM, 1)]


def _forgotten(service: Any) -> float:
    return service.metrics.registry.get_sample_value("atp_ingest_refused_forgotten_total", {"stream": STREAM}) or 0.0


async def test_entries_refused_past_the_bound_are_counted_as_forgotten(
        start_service: ServiceFactory, redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(unacked, "REFUSED_KEPT", 1)
    clock = ManualClock()
    now = clock.now_ms()
    r: Any = redis.Redis.from_url(redis_url)
    service, _ = await start_service(clock=clock)
    for name in ("f1", "f2", "f3"):
        r.xadd(STREAM, F(name, "RECEIPT", "A", "S1", 2, now + SKEW_MS + 1000).fields())
    await until(lambda: r.xlen("atp:dlq") == 3 and _forgotten(service) == 2, "two of three refused forgotten, counted")
    r.close()
