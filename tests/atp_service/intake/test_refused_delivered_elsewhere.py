"""An entry refused as stamped in the future (E7) by one process while its consumer group was deleted and made again,
delivered again to another process before the refusal's dead letter was written: the other process judges it by its
own clock and, the stamp within its skew, applies it. The first process's dead-letter script then landed and wrote a
dead letter saying the entry was refused, acknowledged it and kept it refused in Redis — the fact applied, its letter
saying refused, and the outcome hanging on timing and on which process read it (E7, E8). The script writes, acknowledges
and keeps refused only an entry still pending to its own consumer (``dead_letters._WRITE``). Real redis-server, two
real services on it, each with its own clock; the first held between its judgement and its write."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import redis

from atp_service import ManualClock
from atp_service.intake.unread import refused_key
from reservation import DomainError, Fact
from tests.atp_service.fact_helpers import F, wait_consumed
from tests.atp_service.intake.test_group_lost_pending import STREAM, _on_hand_is
from tests.conftest import ServiceFactory
from tests.waiting import until

SKEW_MS = 300_000  # fact_future_skew_ms by default


async def test_a_fact_refused_by_one_process_and_applied_by_another_from_the_group_made_again_gets_no_dead_letter(
        start_service: ServiceFactory, redis_url: str) -> None:
    """Defect: A judged ``future`` in the future (E7); its group was deleted and made again from the stream's start
    before A's dead letter was written; B read ``future`` from the group made again, found nothing kept refused, judged
    it within its skew and applied it (on_hand 2); then A's script wrote a dead letter saying refused and kept the entry
    as refused. A's refusal never became durable: B's judgement is the one outcome, and no dead letter may say
    otherwise."""
    clock_a = ManualClock()
    now = clock_a.now_ms()
    r: Any = redis.Redis.from_url(redis_url)
    a, _ = await start_service(clock=clock_a, consumer_name="atp-a", ingest_inflight=1)  # no read while judging
    assert a.ingestor is not None
    real, judged, write = a.ingestor._desk.applied_or_refused, asyncio.Event(), asyncio.Event()

    async def written_late(facts: Sequence[Fact], refusals: Sequence[DomainError], origin: str = "stream") -> Any:
        results = await real(facts, refusals, origin)  # judged by A: refused, none applied anywhere yet
        judged.set()
        await write.wait()
        return results

    a.ingestor._desk.applied_or_refused = written_late  # type: ignore[method-assign]
    future = r.xadd(STREAM, F("future", "RECEIPT", "A", "S1", 2, now + SKEW_MS + 1000).fields())
    await until(judged.is_set, "future judged by A, in the future")
    with r.pipeline(transaction=True) as pipe:  # as a reader's remake finding nothing kept refused: from the start
        pipe.xgroup_destroy(STREAM, "atp").xgroup_create(STREAM, "atp", id="0").execute()
    _, client_b = await start_service(clock=ManualClock(now + 2000), consumer_name="atp-b")  # within its skew
    await until(lambda: _on_hand_is(client_b, 2), "future read by B from the group made again, applied")
    write.set()
    await until(lambda: not a.ingestor._batches, "A's batch settled")  # type: ignore[union-attr]
    await wait_consumed(redis_url, [STREAM])
    letters = [fields[b"_id"] for _, fields in r.xrange("atp:dlq")]
    assert letters == [], f"applied by B, yet dead-lettered as refused by A: {letters} (entry {future!r})"
    assert r.zcard(refused_key(STREAM, "atp")) == 0, "applied, yet kept in Redis as refused"
