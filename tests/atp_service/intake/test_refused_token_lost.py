"""A fact refused as stamped in the future (E7) is kept refused while a group made again could deliver its entry
again. The reader forgot it once a tag (``bounds.tag``) told Redis a bound past it — but a group made again starts at
that bound only while Redis holds the token told with it: the token lost (evicted under a ``volatile-*`` maxmemory
policy, the only key here with a time to live; expired; a tag after it in doubt; Redis back from older data), the
group is made again from the stream's start, and the entry, judged again by a clock that had moved on, was applied —
its dead letter saying it was refused. Real redis-server; the service's clock moved by hand."""

from __future__ import annotations

from typing import Any

import redis

from atp_service import ManualClock
from atp_service.intake.bounds import bound_key
from atp_service.intake.unacked import BOUNDS_KEPT
from tests.atp_service.fact_helpers import F
from tests.atp_service.intake.test_group_lost_pending import STREAM, _delivered_through
from tests.atp_service.intake.test_group_lost_refused import future_not_applied_once_made_again
from tests.conftest import ServiceFactory
from tests.waiting import until

SKEW_MS = 300_000  # fact_future_skew_ms by default


def _settled(r: Any, last: bytes) -> bool:
    return _delivered_through(r, last, pending=0)


async def test_a_fact_refused_in_the_future_is_not_applied_when_its_group_is_made_again_without_the_token(
        start_service: ServiceFactory, redis_url: str) -> None:
    """Defect: ``future`` refused (E7) and dead-lettered, a tag answered past it, its token then lost: the group
    deleted and made again from the stream's start, ``future`` came again within the skew and was applied — on_hand 3
    with its dead letter saying it was refused."""
    clock = ManualClock()
    now = clock.now_ms()
    r: Any = redis.Redis.from_url(redis_url)
    service, client = await start_service(clock=clock)
    ingestor = service.ingestor
    assert ingestor is not None
    future = r.xadd(STREAM, F("future", "RECEIPT", "A", "S1", 2, now + SKEW_MS + 1000).fields())
    await until(lambda: r.xlen("atp:dlq") == 1 and _settled(r, future), "future refused (E7), dead-lettered")
    for _ in range(2 * BOUNDS_KEPT):  # Redis holds a token past it: a group made again there would not deliver it again
        await ingestor._tag()  # (the tokens told before it was read, from the stream's start, let go)
    token = bound_key(STREAM, "atp", ingestor._config.consumer_name)
    assert r.exists(token)
    r.delete(token)  # lost alone, the stream kept
    await future_not_applied_once_made_again(r, clock, client, held=0)
