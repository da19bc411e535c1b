"""Entries refused as stamped in the future (E7) are kept as refused while their stream holds them — in Redis
beside the stream (``refused_kept.py``), and by the process that refused them —, at most ``ingest_refused_kept`` per
stream in Redis: past it the oldest is forgotten and, delivered again (a group made again from the stream's start),
judged again by a clock that has moved on — applied, its dead letter saying it was refused. With refused entries kept
until their stream is trimmed, an untrimmed stream fills the bound; nothing told an operator that the service had
stopped keeping its word for some of them. Counted: ``atp_ingest_refused_forgotten_total``."""

from __future__ import annotations

from typing import Any

import pytest
import redis

from atp_service import ManualClock
from atp_service.intake import unacked
from atp_service.intake.dead_letters import Why
from atp_service.intake.unacked import Unacked
from atp_service.intake.unread import refused_key, refused_letters_key
from tests.atp_service.fact_helpers import F
from tests.atp_service.intake.test_group_lost_pending import STREAM
from tests.conftest import ServiceFactory
from tests.waiting import until

SKEW_MS = 300_000  # fact_future_skew_ms by default
WHY = Why("in the future", "event_time_ms", "INVALID_FIELD")


def test_the_oldest_entry_refused_past_the_bound_is_forgotten_in_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(unacked, "REFUSED_KEPT", 2)
    kept = Unacked()
    kept.refused([((STREAM, b"%d-0" % i, [], WHY), b"%d-0" % i) for i in (3, 1, 2)])
    assert [one[:2] for one in kept.judged([(STREAM, b"%d-0" % i, None) for i in (1, 2, 3)])[1]] == [
        (STREAM, b"2-0"), (STREAM, b"3-0")]


def _forgotten(service: Any) -> float:
    return service.metrics.registry.get_sample_value("atp_ingest_refused_forgotten_total", {"stream": STREAM}) or 0.0


def _kept(r: Any) -> list[bytes]:
    """The entries Redis keeps as refused, oldest first; each with its letter's id and why."""
    ids = r.zrange(refused_key(STREAM, "atp"), 0, -1)
    assert sorted(r.hkeys(refused_letters_key(STREAM, "atp"))) == sorted(ids)
    return list(ids)


async def test_entries_refused_past_the_bound_are_counted_as_forgotten(
        start_service: ServiceFactory, redis_url: str) -> None:
    clock = ManualClock()
    now = clock.now_ms()
    r: Any = redis.Redis.from_url(redis_url)
    service, _ = await start_service(clock=clock, ingest_refused_kept=1)
    ids = [r.xadd(STREAM, F(name, "RECEIPT", "A", "S1", 2, now + SKEW_MS + 1000).fields())
           for name in ("f1", "f2", "f3")]
    await until(lambda: r.xlen("atp:dlq") == 3 and _forgotten(service) == 2, "two of three refused forgotten, counted")
    assert _kept(r) == ids[-1:], "the newest kept in Redis"
    r.close()


async def test_entries_refused_that_their_stream_no_longer_holds_are_forgotten_uncounted(
        start_service: ServiceFactory, redis_url: str) -> None:
    """Trimmed from the stream, an entry refused can come again from no group made again: forgotten at the next
    refusal's write, not counted as forgotten (the bound was not reached)."""
    clock = ManualClock()
    now = clock.now_ms()
    r: Any = redis.Redis.from_url(redis_url)
    service, _ = await start_service(clock=clock)
    ids = [r.xadd(STREAM, F(name, "RECEIPT", "A", "S1", 2, now + SKEW_MS + 1000).fields()) for name in ("f1", "f2")]
    await until(lambda: r.xlen("atp:dlq") == 2, "both refused")
    assert _kept(r) == ids
    r.xtrim(STREAM, approximate=False, minid=r.xadd(STREAM, {"x": "y"}, id=b"%d-0" % (int(ids[1].split(b"-")[0]) + 1)))
    ids.append(r.xadd(STREAM, F("f3", "RECEIPT", "A", "S1", 2, now + SKEW_MS + 1000).fields()))
    await until(lambda: r.xlen("atp:dlq") == 4, "the malformed entry and f3 dead-lettered")
    assert _kept(r) == ids[-1:], "those trimmed from the stream forgotten"
    assert _forgotten(service) == 0
    r.close()
