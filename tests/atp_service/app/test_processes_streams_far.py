"""E7 for the input streams over several processes (``ownership = leases``): an entry stamped past any time a
``Timestamp`` can carry (after year 9999) is refused as bad input where it is read, whichever process owns its
group: dead-lettered naming ``event_time_ms``, and the facts read with it go on to their owner and are applied."""

from __future__ import annotations

import redis

from atp_service import ManualClock
from tests.atp_service.app.test_processes import group_of, owned
from tests.atp_service.app.test_processes_streams import STREAMS, reader_and_owner
from tests.atp_service.fact_helpers import F, consumed_from_one_read
from tests.conftest import ServiceFactory

T = 1_700_000_000_000
PAST_TIMESTAMPS = 10**16
"""An event time (ms, about year 318,857) past the last a ``Timestamp`` carries (253402300799999 ms)."""


async def test_an_entry_stamped_past_year_9999_for_another_owner_is_dead_lettered_not_holding_its_read_E7(
        start_leased_readers: ServiceFactory, redis_url: str) -> None:
    """Defect: the reader judged such an entry "ahead of its clock, maybe applied already" and sent it to its
    group's owner, whose ``RecordEvents`` request could not be built (no ``Timestamp`` that far): the whole send
    failed, the owner was marked failing, and the entry and every fact read with it for that owner stayed pending
    for good, read again and failing at every pass."""
    (reader, _), (owner, at_owner) = await reader_and_owner(start_leased_readers, ManualClock(T), clock=ManualClock(T))
    assert reader.config.input_streams and not owner.config.input_streams
    sku = next(s for s in (f"far-{i}" for i in range(64)) if group_of(s) in owned(owner))
    facts = [F("far", "RECEIPT", sku, "DC", 1, PAST_TIMESTAMPS), F("near", "RECEIPT", sku, "DC", 2, T - 1000)]
    await consumed_from_one_read(redis_url, STREAMS[0], facts)
    r = redis.Redis.from_url(redis_url)
    ((_, dead),) = r.xrange("atp:dlq")
    assert dead[b"event_id"] == b"far"
    assert (dead[b"_field"], dead[b"_code"]) == (b"event_time_ms", b"INVALID_FIELD"), dead
    assert [p.on_hand for p in await at_owner.availability([(sku, "DC")])] == [2]
