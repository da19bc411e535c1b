"""An entry refused as stamped in the future (E7) is remembered as refused (``unacked.Unacked.refused``) so that,
delivered again, it is not judged again by a clock that has moved on. But Redis back from older data (a failover to
a replica that lagged, a restart from an older AOF or RDB) loses the dead letter with the entry's acknowledgement (one
script wrote both): the entry is delivered again, and the reader acknowledged it from memory "its dead letter
standing" — no dead letter anywhere, nothing applied, nothing pending: a fact dropped with nothing said. Real Redis;
the loss made by putting back every key as it was (``DUMP``/``RESTORE``), the input stream's entries kept."""

from __future__ import annotations

from typing import Any

import redis

from atp_service import ManualClock
from tests.atp_service.fact_helpers import F
from tests.atp_service.intake.test_duplicate_after_tail_lost import _back_to, _image
from tests.atp_service.intake.test_group_lost_pending import STREAM, _delivered_through, _on_hand_is
from tests.conftest import ServiceFactory
from tests.waiting import until

SKEW_MS = 300_000  # fact_future_skew_ms by default


def _settled(r: Any, last: bytes) -> bool:
    return _delivered_through(r, last, pending=0)


async def first_applied(start_service: ServiceFactory, redis_url: str) -> tuple[int, Any, Any, bytes]:
    """The service started on a hand-moved clock, an entry ``first`` added and applied: ``(now, redis, client,
    first's id)``."""
    clock = ManualClock()
    now = clock.now_ms()
    r: Any = redis.Redis.from_url(redis_url)
    service, client = await start_service(clock=clock)
    assert service.ingestor is not None
    first = r.xadd(STREAM, F("first", "RECEIPT", "A", "S1", 1, now - 50).fields())
    await until(lambda: _settled(r, first), "the first entry applied")
    return now, r, client, first


async def test_an_entry_refused_whose_dead_letter_redis_lost_is_dead_lettered_again(
        start_service: ServiceFactory, redis_url: str) -> None:
    """Defect: ``future`` refused (E7) and dead-lettered, then Redis back from before that: no dead letter, the group
    back before ``future``. Read again, it was acknowledged from the reader's memory, its dead letter nowhere."""
    now, r, client, first = await first_applied(start_service, redis_url)
    image = _image(r)  # Redis comes back from here: no dead letter, the group at ``first``
    future = r.xadd(STREAM, F("future", "RECEIPT", "A", "S1", 2, now + SKEW_MS + 1000).fields())
    await until(lambda: r.xlen("atp:dlq") == 1 and _settled(r, future), "future refused (E7), dead-lettered")
    _back_to(r, image, first)
    assert not r.exists("atp:dlq")
    await until(lambda: _settled(r, future), "future read again, settled")
    assert [fields[b"_id"] for _, fields in r.xrange("atp:dlq")] == [future], \
        "an entry refused acknowledged with its dead letter lost"
    assert await _on_hand_is(client, 1)
    r.close()
