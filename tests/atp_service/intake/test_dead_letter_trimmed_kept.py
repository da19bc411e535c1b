"""A reader read its own pending entry as trimmed (``[id, nil]``: the producer's ``MAXLEN`` took it) and writes its
dead letter, ``TRIMMED_WHILE_PENDING``, with the entry's acknowledgement (``dead_letters.write``). Meanwhile Redis came
back from older data (a failover to a replica that lagged behind the trim, a restart from an older AOF or RDB) that
holds the entry again, unapplied. The dead letter, decided from a read of what Redis lost, was written and the entry
acknowledged: its fact never applied, the dead letter saying the entry was trimmed (it is not) and holding none of its
fields. The script writes a trimmed entry's dead letter only where the stream holds no such entry; else it leaves the
entry pending, to be read again and decided (R7: a decision from what Redis lost is not made durable). Real Redis."""

from __future__ import annotations

import redis

from atp_service.intake.dead_letters import TRIMMED, Why, write
from atp_service.storage.nodes import connect_any

STREAM, DLQ, GROUP = "atp:in:pos", "atp:dlq", "atp"


async def test_a_trimmed_entry_that_redis_holds_again_is_not_dead_lettered_nor_acknowledged(redis_url: str) -> None:
    r = redis.Redis.from_url(redis_url)
    r.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
    kept = r.xadd(STREAM, {"event_id": "e1", "source": "pos", "kind": "RECEIPT", "sku": "A", "location": "L1",
                           "quantity": 5, "event_time_ms": 1_700_000_000_000})
    bad = r.xadd(STREAM, {"event_id": "e2", "quantity": "1x"})
    r.xreadgroup(GROUP, "atp-1", {STREAM: ">"}, count=10)  # both pending with atp-1
    client = connect_any(redis_url, 2.0)
    refused = Why("quantity: not an integer", "quantity", "INVALID_FIELD")
    # ``kept`` read as trimmed before Redis came back holding it; ``bad`` read as it is, a dead letter of its own.
    r.set("fence", "t")  # the consumer's fence (fence.py), the token the write carries
    await write(client, [(STREAM, kept, [], TRIMMED), (STREAM, bad, [b"event_id", b"e2", b"quantity", b"1x"], refused)],
                DLQ, 1000, GROUP, 64 * 1024, consumer="atp-1", fence=("fence", b"t"))
    await client.aclose()
    letters = [fields[b"_id"] for _, fields in r.xrange(DLQ)]
    pending = [p["message_id"] for p in r.xpending_range(STREAM, GROUP, "-", "+", 10)]
    r.close()
    assert letters == [bad], "a dead letter written for an entry the stream holds, as trimmed"
    assert pending == [kept], "an entry the stream holds acknowledged with a dead letter saying it was trimmed"
