"""An entry refused as stamped in the future (E7) by one batch of a process while its consumer group was deleted and
made again, delivered again to the same process (its reader reads on, ``ingest_inflight`` above 1) before the refusal's
dead letter was written: a second batch judged it by the same clock moments later and, the stamp within the skew by
then, applied it. The first batch's script, the entry pending to this very consumer in the group made again, wrote a
dead letter saying refused, acknowledged it and kept it refused — the fact applied, its letter saying refused (E7, E8):
the consumer fence of ``dead_letters._WRITE`` cannot tell the two batches apart. A batch leaves pending an entry another
batch of the reader holds in hand (``Unacked.busy``): read again from its own list once that batch settled. Real
redis-server, a real service; its first batch held between its judgement and its write, its second at its ack."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import redis

from atp_service import ManualClock
from atp_service.intake.entries import Entry
from atp_service.intake.unread import refused_key
from reservation import DomainError, Fact
from tests.atp_service.fact_helpers import F, wait_consumed
from tests.atp_service.intake.test_group_lost_pending import STREAM, _on_hand_is
from tests.conftest import ServiceFactory
from tests.waiting import until

SKEW_MS = 300_000  # fact_future_skew_ms by default


async def test_an_entry_delivered_again_to_the_process_judging_it_is_judged_once(
        start_service: ServiceFactory, redis_url: str) -> None:
    """Defect: batch 1 judged ``future`` in the future (E7); the group was deleted and made again from the stream's
    start; the reader read ``future`` again into batch 2, which judged it within the skew (the clock moved on) and
    applied it (on_hand 2); batch 1's script then found it pending to this consumer, wrote its dead letter, acknowledged
    it and kept it refused: applied, with a letter saying refused. One judgement is the outcome, whichever it is."""
    clock = ManualClock()
    now = clock.now_ms()
    r: Any = redis.Redis.from_url(redis_url)
    a, client = await start_service(clock=clock, consumer_name="atp-a", ingest_inflight=2)
    assert a.ingestor is not None
    ingestor = a.ingestor
    real, judged, write = ingestor._desk.applied_or_refused, asyncio.Event(), asyncio.Event()
    real_ack, acking, ack = ingestor._settler.ack, asyncio.Event(), asyncio.Event()
    real_handle, started, handled = ingestor._handle, [0], set()
    future = r.xadd(STREAM, F("future", "RECEIPT", "A", "S1", 2, now + SKEW_MS + 1000).fields())

    async def written_late(facts: Sequence[Fact], refusals: Sequence[DomainError], origin: str = "stream") -> Any:
        results = await real(facts, refusals, origin)
        if not judged.is_set():  # batch 1: judged refused, its write held
            judged.set()
            await write.wait()
        return results

    async def acked_late(done: list[tuple[str, bytes]]) -> None:
        if (STREAM, future) in done and not write.is_set():  # batch 2 applied it: its ack held past batch 1's write
            acking.set()
            await ack.wait()
        await real_ack(done)

    async def handle(entries: list[Entry], wait: bool = True) -> int:
        batch = 0
        if (STREAM, future) in [entry[:2] for entry in entries]:
            started[0] += 1
            batch = started[0]
        try:
            return await real_handle(entries, wait)
        finally:
            handled.add(batch)

    ingestor._desk.applied_or_refused = written_late  # type: ignore[method-assign]
    ingestor._settler.ack = acked_late  # type: ignore[method-assign]
    ingestor._handle = handle  # type: ignore[method-assign]
    await until(judged.is_set, "future judged by batch 1, in the future")
    clock.advance(2000)  # within the skew now
    with r.pipeline(transaction=True) as pipe:  # as a reader's remake finding nothing kept refused: from the start
        pipe.xgroup_destroy(STREAM, "atp").xgroup_create(STREAM, "atp", id="0").execute()
    # Batch 2 read ``future`` again: it applied it (held at its ack), or left it pending and ended.
    await until(lambda: acking.is_set() or 2 in handled, "future read again into batch 2")
    write.set()
    await until(lambda: 1 in handled, "batch 1 settled")
    ack.set()
    await until(lambda: not ingestor._batches, "batches settled")
    await wait_consumed(redis_url, [STREAM])
    letters = [fields[b"_id"] for _, fields in r.xrange("atp:dlq")]
    applied = await _on_hand_is(client, 2)
    assert not (applied and letters), f"applied by batch 2, yet dead-lettered as refused by batch 1: {letters}"
    assert applied or (letters == [future] and r.zcard(refused_key(STREAM, "atp")) == 1), \
        f"neither applied nor refused with one letter: {letters}"
