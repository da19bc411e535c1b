"""A till receipt whose lines share one ``event_id`` over the groups of two processes (``ownership = leases``), some
lines at fault: each line is a fact of its own (E8: identity per position). Read from an input stream, the good
lines are applied at their groups' owners and each bad one is dead-lettered naming its field, nothing left pending;
the same receipt sent again by ``RecordEvents`` to the other process answers the good lines ``DUPLICATE`` (E8 across
the two ways in) and the bad ones ``INVALID`` naming the same fields, and moves nothing again."""

from __future__ import annotations

import redis

from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_service import ManualClock
from tests.atp_service.app.test_processes import group_of, owned
from tests.atp_service.app.test_processes_streams import STREAMS, reader_and_owner
from tests.atp_service.fact_helpers import F, consumed_from_one_read
from tests.conftest import ServiceFactory

T = 1_700_000_000_000


async def test_a_receipt_s_bad_lines_are_each_refused_alone_and_its_good_lines_applied_once_by_either_way_E8(
        start_leased_readers: ServiceFactory, redis_url: str) -> None:
    running = await reader_and_owner(start_leased_readers, ManualClock(T), clock=ManualClock(T))
    (reader, at_reader), (other, at_other) = running
    mine = [s for s in (f"r{i}" for i in range(200)) if group_of(s) in owned(reader)][:2]
    theirs = [s for s in (f"r{i}" for i in range(200)) if group_of(s) in owned(other)][:2]
    long_id = "x" * (reader.config.limits.max_id_length + 1)
    lines = [F("rcpt-1", "SALE", mine[0], "S1", 2, T - 1000), F("rcpt-1", "SALE", theirs[0], "S1", 3, T - 1000),
             F("rcpt-1", "SALE", theirs[1], "S1", 0, T - 1000),  # bad: a sale of nothing
             F("rcpt-1", "COUNT", mine[1], "S1", -3, T - 1000),  # bad: a count with a delta's sign
             F(long_id, "SALE", mine[0], "S2", 1, T - 1000),  # bad: its id past max_id_length
             F("rcpt-1", "RETURN", theirs[0], "S2", 4, T + 3_600_000)]  # bad: stamped past the skew (E7)
    await consumed_from_one_read(redis_url, STREAMS[0], lines)
    r = redis.Redis.from_url(redis_url)
    letters = sorted((fields[b"sku"], fields[b"location"], fields[b"_field"], fields[b"_code"])
                     for _, fields in r.xrange("atp:dlq"))
    assert letters == sorted([(theirs[1].encode(), b"S1", b"quantity", b"INVALID_FIELD"),
                              (mine[1].encode(), b"S1", b"quantity", b"INVALID_FIELD"),
                              (mine[0].encode(), b"S2", b"event_id", b"LIMIT_EXCEEDED"),
                              (theirs[0].encode(), b"S2", b"event_time_ms", b"INVALID_FIELD")]), letters
    answers = await at_other.record_events([line.pb() for line in lines])
    assert [a.outcome for a in answers] == [pb.FACT_OUTCOME_DUPLICATE] * 2 + [pb.FACT_OUTCOME_INVALID] * 4, answers
    assert [a.error.message.partition(":")[0] for a in answers[2:]] == [
        "events[2].quantity", "events[3].quantity", "events[4].event_id", "events[5].event_time"], answers
    keys = [(mine[0], "S1"), (theirs[0], "S1"), (theirs[1], "S1"), (mine[1], "S1"), (mine[0], "S2"), (theirs[0], "S2")]
    for client in (at_reader, at_other):
        assert [p.on_hand for p in await client.availability(keys)] == [-2, -3, 0, 0, 0, 0]
    assert r.xlen("atp:quarantine") == 0
