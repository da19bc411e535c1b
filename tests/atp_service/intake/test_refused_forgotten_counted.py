"""Entries refused as stamped in the future (E7) are kept as refused while their stream holds them — in Redis
beside the stream (``refused_kept.py``), and by the process that refused them —, at most ``ingest_refused_kept`` per
stream in Redis: past it the oldest is forgotten and, delivered again (a group made again from the stream's start),
judged again by a clock that has moved on — applied, its dead letter saying it was refused. With refused entries kept
until their stream is trimmed, an untrimmed stream fills the bound; nothing told an operator that the service had
stopped keeping its word for some of them. Counted: ``atp_ingest_refused_forgotten_total``."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio as aredis

from atp_service import ManualClock
from atp_service.intake import unacked
from atp_service.intake.dead_letters import Kept, Why, write
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


async def test_the_memory_of_an_entry_kept_refused_is_within_what_operations_says(redis_url: str) -> None:
    """Defect: OPERATIONS.md said some 200 bytes each in Redis; the dead-letter script keeps ~375 (``MEMORY USAGE``
    of both keys, the fields' digest with them) per entry refused with the reason E7 gives — an operator sizing Redis
    for the bound was told half. Measured on real Redis, written by the real script, as many as make both keys
    leave their compact encodings."""
    documented = re.search(r"ATP_INGEST_REFUSED_KEPT` \(10,000\) per stream, some ([\d,]+) bytes each in Redis",
                           (Path(__file__).parents[3] / "docs" / "OPERATIONS.md").read_text())
    assert documented is not None, "OPERATIONS.md's E7 section names the memory of each entry kept refused"
    r, count, now = aredis.Redis.from_url(redis_url), 1_000, 1_765_100_000_000
    async with r.pipeline(transaction=False) as pipe:
        for i in range(count):
            pipe.xadd(STREAM, F(f"e{i}", "RECEIPT", "A", "S1", 1, now + SKEW_MS + 1).fields())
        ids = await pipe.execute()
    why = Why(f"{now + SKEW_MS + 1} ms is more than {SKEW_MS} ms ahead of the service clock ({now})", "event_time_ms",
              "INVALID_FIELD")
    dead = [(STREAM, i, [str(x).encode() for kv in F(f"e{n}", "RECEIPT", "A", "S1", 1, now).fields().items()
                         for x in kv], why) for n, i in enumerate(ids)]
    await r.set("fence", "t")  # the consumer's fence (fence.py), the token the write carries
    for at in range(0, count, 500):
        await write(r, dead[at:at + 500], "atp:dlq", 100_000, "atp", 16_384, None,
                    Kept({one[:2] for one in dead}, 10_000), consumer="atp-1", fence=("fence", b"t"))
    assert await r.zcard(refused_key(STREAM, "atp")) == count
    used = sum([await r.memory_usage(key, samples=0) for key in (refused_key(STREAM, "atp"),
                                                                 refused_letters_key(STREAM, "atp"))])
    assert used / count <= int(documented.group(1).replace(",", "")), f"{used / count:.0f} bytes each"
    await r.aclose()
