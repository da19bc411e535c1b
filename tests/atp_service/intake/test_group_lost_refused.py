"""A consumer group made again before the oldest entry the reader held unacknowledged delivers again
the entries after it that were settled meanwhile — among them facts refused as stamped in the future
(E7), dead-lettered by a clock that has moved since. Judged again, one now within the skew was applied:
its dead letter says refused, the position's on_hand has it. Real redis-server; the service's clock
moved by hand."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import redis

from atp_service import ManualClock
from atp_service.intake.dead_letters import Why
from atp_service.intake.unacked import Unacked
from reservation import DomainError, Fact
from tests.atp_service.fact_helpers import F, dead_lettered, wait_consumed
from tests.atp_service.intake.test_group_lost_pending import (
    STREAM,
    Refusing,
    _delivered_through,
    _group_made_again,
    _on_hand_is,
)
from tests.conftest import ServiceFactory
from tests.waiting import until

SKEW_MS = 300_000  # fact_future_skew_ms by default


def _settled_through(r: Any, last: bytes) -> bool:
    """The group delivered ``last`` and holds only the entry refused by the shard pending."""
    return _delivered_through(r, last, pending=1)


async def future_not_applied_once_made_again(r: Any, clock: ManualClock, client: Any, held: int) -> None:
    """With ``future`` refused (E7) and dead-lettered: the clock moved so it is within the skew, the group deleted
    and made again, ``after`` added and every entry read again and settled but ``held`` ones: ``future`` is not
    applied (on_hand 1, ``after``'s alone) and no dead letter is added."""
    now = clock.now_ms()
    clock.advance(2000)  # ``future`` within the skew now
    r.xgroup_destroy(STREAM, "atp")
    after = r.xadd(STREAM, F("after", "RECEIPT", "A", "S1", 1, now - 50).fields())
    await until(lambda: _group_made_again(r), "the group made again")
    await until(lambda: _delivered_through(r, after, pending=held), "every entry read again but those held, settled")
    assert await _on_hand_is(client, 1), "the fact dead-lettered as refused was applied"
    assert r.xlen("atp:dlq") == 1


async def test_a_fact_refused_in_the_future_is_not_applied_when_its_group_made_again_reads_it_again(
        start_service: ServiceFactory, redis_url: str) -> None:
    """Defect: ``future`` was refused (E7) and dead-lettered while ``held`` was pending; the group lost
    and made again before ``held``, ``future`` came again after the clock had moved past its skew and
    was applied — on_hand 7 with its dead letter saying it was refused."""
    clock = ManualClock()
    now = clock.now_ms()
    r: Any = redis.Redis.from_url(redis_url)
    service, client = await start_service(clock=clock)
    desk = Refusing.installed(service, released=True)
    r.xadd(STREAM, F("held", "RECEIPT", "A", "S1", 4, now - 100).fields())
    await until(lambda: desk.calls >= 1 and r.xpending(STREAM, "atp")["pending"] == 1, "held refused, pending")
    r.xadd(STREAM, F("future", "RECEIPT", "A", "S1", 2, now + SKEW_MS + 1000).fields())
    await until(lambda: r.xlen("atp:dlq") == 1, "future refused (E7), dead-lettered")
    await future_not_applied_once_made_again(r, clock, client, held=1)
    desk.refuse = False
    await until(lambda: _on_hand_is(client, 5), "held read again and applied")


async def test_a_fact_refused_in_the_future_as_its_group_was_made_again_before_it_is_dead_lettered(
        start_service: ServiceFactory, redis_url: str) -> None:
    """``future`` judged (E7) while its group was deleted and made again from the start (by another
    process's reader: one transaction here): pending to this reader no more when its dead letter is due, it is
    left to the group made again, which delivers it again and has it judged again — refused, its one dead
    letter written then (never none: no dead letter anywhere, nothing pending)."""
    clock = ManualClock()
    now = clock.now_ms()
    r: Any = redis.Redis.from_url(redis_url)
    service, client = await start_service(clock=clock, ingest_inflight=2)  # ``held``'s batch, ``future``'s
    desk = Refusing.installed(service, released=False)  # in hand: ``future`` is kept refused meanwhile
    assert service.ingestor is not None
    real, judging, judge = service.ingestor._desk.applied_or_refused, asyncio.Event(), asyncio.Event()

    async def judged_late(facts: Sequence[Fact], refusals: Sequence[DomainError], origin: str = "stream") -> Any:
        judging.set()
        await judge.wait()
        return await real(facts, refusals, origin)

    service.ingestor._desk.applied_or_refused = judged_late  # type: ignore[method-assign]
    r.xadd(STREAM, F("held", "RECEIPT", "A", "S1", 4, now - 100).fields())
    await until(desk.first_held.is_set, "held in hand")
    future = r.xadd(STREAM, F("future", "RECEIPT", "A", "S1", 2, now + SKEW_MS + 1000).fields())
    await until(judging.is_set, "future being judged")
    with r.pipeline(transaction=True) as pipe:
        pipe.xgroup_destroy(STREAM, "atp").xgroup_create(STREAM, "atp", id="0").execute()
    judge.set()
    await until(lambda: _settled_through(r, future), "both read again from the group made again, future settled")
    desk.refuse = False
    desk.release.set()
    await until(lambda: _on_hand_is(client, 4), "held applied")
    await wait_consumed(redis_url, [STREAM])
    assert [fields[b"_id"] for _, fields in r.xrange("atp:dlq")] == [future], "refused, with no dead letter"
    await until(lambda: dead_lettered(service, STREAM) >= 1, "the dead letter counted")
    assert dead_lettered(service, STREAM) == 1


def test_an_entry_refused_is_remembered_while_its_stream_holds_it() -> None:
    """Bounded: kept while a group made again could deliver it again — while its stream holds it, for a group made again
    reads from the stream's start where Redis holds none of the reader's tokens (``bounds.py``), whatever bound a tag
    told — forgotten once a tag finds the stream's oldest entry past it (trimmed)."""
    unacked, why = Unacked(), Why("in the future", "event_time_ms", "INVALID_FIELD")
    held = unacked.hold([(STREAM, b"5-0", None)])
    unacked.refused([((STREAM, b"6-0", [], why), b"1-0")])
    unacked.note_seen(STREAM, b"6-0")
    assert unacked.judged([(STREAM, b"6-0", None), (STREAM, b"7-0", None)]) == ([(STREAM, b"7-0", None)],
                                                                                 [(STREAM, b"6-0", [], why)])
    unacked.release(held)
    unacked.refused([((STREAM, b"8-0", [], why), b"2-0")])
    unacked.note_seen(STREAM, b"8-0")
    unacked.release(unacked.hold([(STREAM, b"9-0", None)]))  # nothing older held
    token = unacked.tag_begun()  # told Redis (bounds.tag), which had delivered 9-0 and held nothing pending
    unacked.tag_answered(token, {STREAM: (b"9-0", None)}, {STREAM: b"1-0"})  # the token lost, from the start: both
    assert [one[:2] for one in unacked.judged([(STREAM, b"6-0", None), (STREAM, b"8-0", None)])[1]] == [
        (STREAM, b"6-0"), (STREAM, b"8-0")]
    token = unacked.tag_begun()
    unacked.tag_answered(token, {STREAM: (b"9-0", None)}, {STREAM: b"8-0"})  # 6-0 trimmed: no group delivers it
    assert [one[:2] for one in unacked.judged([(STREAM, b"6-0", None), (STREAM, b"8-0", None)])[1]] == [
        (STREAM, b"8-0")]
    assert unacked.letters([(STREAM, b"6-0", [], why), (STREAM, b"8-0", [], why)]) == {(STREAM, b"8-0"): b"2-0"}
