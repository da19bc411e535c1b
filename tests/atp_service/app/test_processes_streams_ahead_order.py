"""E8 for the input streams over several processes (``ownership = leases``): the facts of one read sent on to
their group's owner reach it in the read's order - those stamped ahead of the reader's clock (E7 there, judged
by the owner's) among the others. They went first, before every other fact of the read, so the owner decided a
fact read before one stamped ahead after it: late by that order (E6), quarantined, where in the read's order it
is applied. SEMANTICS E8: within one read of an input stream each shard decides its facts in its order."""

from __future__ import annotations

import redis

from atp_service import ManualClock
from tests.atp_service.app.test_processes import group_of, owned
from tests.atp_service.app.test_processes_streams import STREAMS, reader_and_owner
from tests.atp_service.fact_helpers import F, consumed_from_one_read
from tests.conftest import ServiceFactory

T = 1_700_000_000_000
MINUTE = 60_000
AHEAD = T + 8 * MINUTE  # ahead of the reader's clock (T) by more than the skew (5 min), not of the owner's


async def test_a_read_s_facts_stamped_ahead_of_the_reader_reach_their_owner_in_the_read_s_order_E6_E8(
        start_leased_readers: ServiceFactory, redis_url: str) -> None:
    """Defect: the reader sent the facts it judged ahead of its clock to their owner before the rest of the read.
    A receipt read first, stamped just over the grace before a count read after it (at another location of the
    same SKU: one shard, one stream time), was decided after that count there: late (E6), quarantined - its 5
    units never counted - where in the read's order, and read by the owner itself, it is applied."""
    # The reader's clock is behind the owner's, which reads nothing.
    running = await reader_and_owner(start_leased_readers, ManualClock(T), clock=ManualClock(T + 10 * MINUTE))
    (reader, _), (owner, at_owner) = running
    assert reader.config.input_streams and not owner.config.input_streams
    sku = next(s for s in (f"k{i}" for i in range(64)) if group_of(s) in owned(owner))
    grace = owner.config.limits.fact_grace_ms
    facts = [F("r1", "RECEIPT", sku, "L2", 5, AHEAD - grace - MINUTE), F("c1", "COUNT", sku, "DC", 4, AHEAD)]
    await consumed_from_one_read(redis_url, STREAMS[0], facts)
    r = redis.Redis.from_url(redis_url)
    assert r.xlen("atp:quarantine") == 0 and r.xlen("atp:dlq") == 0
    assert [p.on_hand for p in await at_owner.availability([(sku, "L2"), (sku, "DC")])] == [5, 4]
