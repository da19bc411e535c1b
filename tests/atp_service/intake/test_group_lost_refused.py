"""A consumer group made again before the oldest entry the reader held unacknowledged delivers again
the entries after it that were settled meanwhile — among them facts refused as stamped in the future
(E7), dead-lettered by a clock that has moved since. Judged again, one now within the skew was applied:
its dead letter says refused, the position's on_hand has it. Real redis-server; the service's clock
moved by hand."""

from __future__ import annotations

from typing import Any

import redis

from atp_service import ManualClock
from atp_service.intake.unacked import Unacked
from tests.atp_service.fact_helpers import F
from tests.atp_service.intake.test_group_lost_pending import STREAM, Refusing, _group_made_again, _on_hand_is
from tests.conftest import ServiceFactory
from tests.waiting import until

SKEW_MS = 300_000  # fact_future_skew_ms by default


def _settled_through(r: Any, last: bytes) -> bool:
    """The group delivered ``last`` and holds only the entry refused by the shard pending."""
    groups = [g for g in r.xinfo_groups(STREAM) if g["name"] == b"atp"]
    return bool(groups) and groups[0]["last-delivered-id"] == last and groups[0]["pending"] == 1


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
    clock.advance(2000)  # ``future`` within the skew now
    r.xgroup_destroy(STREAM, "atp")
    after = r.xadd(STREAM, F("after", "RECEIPT", "A", "S1", 1, now - 50).fields())
    await until(lambda: _group_made_again(r), "the group made again")
    await until(lambda: _settled_through(r, after), "the entries after held read again, settled")
    assert await _on_hand_is(client, 1), "the fact dead-lettered as refused was applied"
    assert r.xlen("atp:dlq") == 1
    desk.refuse = False
    await until(lambda: _on_hand_is(client, 5), "held read again and applied")


def test_an_entry_refused_is_remembered_only_while_a_group_made_again_could_deliver_it_again() -> None:
    """Bounded: kept while an entry older than it is held unacknowledged, forgotten once none is."""
    unacked = Unacked()
    held = unacked.hold([(STREAM, b"5-0", None)])
    unacked.refused([(STREAM, b"6-0")])
    unacked.note_seen(STREAM, b"6-0")
    assert unacked.judged([(STREAM, b"6-0", None), (STREAM, b"7-0", None)]) == ([(STREAM, b"7-0", None)],
                                                                                 [(STREAM, b"6-0")])
    unacked.release(held)
    unacked.refused([(STREAM, b"8-0")])
    unacked.note_seen(STREAM, b"8-0")
    unacked.release(unacked.hold([(STREAM, b"9-0", None)]))  # nothing older held: neither delivered again
    assert unacked.judged([(STREAM, b"6-0", None), (STREAM, b"8-0", None)])[1] == []
