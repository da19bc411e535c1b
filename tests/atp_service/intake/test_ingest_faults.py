"""The input streams' reader when the streams themselves change under it: a stream or its consumer
group deleted while the service runs, pending entries trimmed away before a claim, a dead letter
replayed as it was, a dead consumer's entries far down the pending list."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import time
from pathlib import Path
from typing import Any

import redis
import redis.asyncio as aioredis

from atp_client import AtpClient
from atp_service import AtpService, ManualClock
from tests.atp_service.app.test_redis_permissions import PASSWORD, USER, as_user
from tests.atp_service.fact_helpers import F, dead_lettered, wait_consumed
from tests.conftest import ServiceFactory
from tests.conftest import test_config as make_config
from tests.deploy.monitoring_helpers import RULES, promtool
from tests.waiting import until

T = 1_700_000_000_000


async def test_one_input_stream_losing_its_group_does_not_stop_reading_the_others(
        start_service: ServiceFactory, redis_url: str) -> None:
    """One read names every stream: while one had no group (deleted, then re-made by a producer's
    XADD without one), every read failed NOGROUP and no stream was read again until a restart."""
    now = int(time.time() * 1000)
    r = redis.Redis.from_url(redis_url)
    service, client = await start_service()
    r.delete("atp:in:wms")
    r.xadd("atp:in:pos", F("p1", "RECEIPT", "A", "S1", 4, now - 100).fields())
    r.xadd("atp:in:wms", F("w1", "RECEIPT", "A", "DC", 6, now - 100).fields())  # the stream again, no group
    await wait_consumed(redis_url, ["atp:in:pos", "atp:in:wms"], timeout_s=20)
    a, b = await client.availability([("A", "S1"), ("A", "DC")])
    assert (a.on_hand, b.on_hand) == (4, 6)
    failures = service.metrics.intake.ingest_read_failures.collect()[0].samples[0].value
    assert failures >= 1  # what an operator sees besides the log line


async def test_a_group_made_again_reads_on_after_what_was_read_and_applies_nothing_twice(
        start_service: ServiceFactory, redis_url: str) -> None:
    """XGROUP DESTROY on a stream whose entries were applied: the group is made again after the
    newest entry the reader had seen, so the entries added since are read, and none before."""
    now = int(time.time() * 1000)
    r = redis.Redis.from_url(redis_url)
    _, client = await start_service()
    r.xadd("atp:in:pos", F("p1", "RECEIPT", "A", "S1", 4, now - 100).fields())
    await wait_consumed(redis_url, ["atp:in:pos"])
    r.xgroup_destroy("atp:in:pos", "atp")
    r.xadd("atp:in:pos", F("p2", "RECEIPT", "A", "S1", 1, now - 50).fields())
    await wait_consumed(redis_url, ["atp:in:pos"], timeout_s=20)
    (a,) = await client.availability([("A", "S1")])
    assert a.on_hand == 5


async def test_a_stream_made_again_with_ids_before_what_was_read_is_read_from_its_start(
        start_service: ServiceFactory, redis_url: str) -> None:
    """A producer wrote an entry with an explicit id far ahead (a clock in µs, not ms) and the
    operator deleted the stream to get rid of it: the group was made again after that id, so every
    entry of the stream as re-made (``*`` ids, below it) was never delivered: no POS fact applied,
    no read failing, nothing pending — availability frozen while the tills sold."""
    now = int(time.time() * 1000)
    r = redis.Redis.from_url(redis_url)
    _, client = await start_service()
    r.xadd("atp:in:pos", F("p1", "RECEIPT", "A", "S1", 4, now - 100).fields(), id=f"{now * 1000}-0")
    await wait_consumed(redis_url, ["atp:in:pos"])
    r.delete("atp:in:pos")  # the reader notices (NOGROUP) before or after the producer's next XADD
    r.xadd("atp:in:pos", F("p2", "SALE", "A", "S1", 1, now - 50).fields())
    r.xadd("atp:in:pos", F("p3", "SALE", "A", "S1", 1, now - 40).fields())
    for _ in range(400):  # a bound, not a timing
        if (await client.availability([("A", "S1")]))[0].on_hand == 2:
            break
        await asyncio.sleep(0.05)
    assert (await client.availability([("A", "S1")]))[0].on_hand == 2


async def test_a_claimed_entry_deleted_before_it_was_applied_is_dead_lettered(
        start_service: ServiceFactory, redis_url: str) -> None:
    """XAUTOCLAIM (Redis 7) lists apart the pending entries trimmed from the stream and takes them out
    of the pending list itself: they went without a dead letter."""
    now = int(time.time() * 1000)
    r = redis.Redis.from_url(redis_url)
    r.xgroup_create("atp:in:wms", "atp", id="0", mkstream=True)
    r.xadd("atp:in:wms", F("w-kept", "RECEIPT", "A", "DC", 2, now - 1000).fields())
    gone = r.xadd("atp:in:wms", F("w-gone", "RECEIPT", "A", "DC", 3, now - 1000).fields())
    r.xreadgroup("atp", "dead-consumer", {"atp:in:wms": ">"}, count=10)
    r.xdel("atp:in:wms", gone)
    _, client = await start_service(claim_idle_ms=50)
    await wait_consumed(redis_url, ["atp:in:wms"])
    (a,) = await client.availability([("A", "DC")])
    assert a.on_hand == 2
    ((_, dead),) = r.xrange("atp:dlq")
    assert (dead[b"_id"], dead[b"_stream"]) == (gone, b"atp:in:wms")
    assert dead[b"_reason"] == b"entry was trimmed from the stream while pending; not known to be applied"
    assert (dead[b"_field"], dead[b"_code"]) == (b"", b"TRIMMED_WHILE_PENDING")


async def test_a_claimed_entry_naming_a_field_twice_is_dead_lettered_not_read_as_its_last_value(
        start_service: ServiceFactory, redis_url: str) -> None:
    """An entry a dead consumer left pending is read as a new one is: naming a field twice, it is
    refused naming it (which value the till meant is not known), not applied with the last value."""
    now = int(time.time() * 1000)
    r = redis.Redis.from_url(redis_url)
    r.xgroup_create("atp:in:pos", "atp", id="0", mkstream=True)
    r.xadd("atp:in:pos", F("g1", "RECEIPT", "A", "S1", 5, now - 1000).fields())
    r.execute_command("XADD", "atp:in:pos", "*", "event_id", "twice", "source", "pos", "kind", "SALE", "sku", "A",
                      "location", "S1", "quantity", "1", "event_time_ms", str(now), "quantity", "4")
    r.xreadgroup("atp", "dead-consumer", {"atp:in:pos": ">"}, count=10)
    _, client = await start_service(claim_idle_ms=50)
    await wait_consumed(redis_url, ["atp:in:pos"])
    (a,) = await client.availability([("A", "S1")])
    assert a.on_hand == 5
    ((_, dead),) = r.xrange("atp:dlq")
    assert (dead[b"_field"], dead[b"_code"]) == (b"quantity", b"FIELD_REPEATED")


async def test_its_own_pending_entry_found_trimmed_is_not_said_to_be_unapplied(
        start_service: ServiceFactory, redis_url: str) -> None:
    """The reader's own pending entry, trimmed before it re-reads it after a restart: a kill -9
    between the durable append and the XACK leaves an applied fact pending, so its dead letter must
    not say it was not applied (an operator would apply it again by hand)."""
    now = int(time.time() * 1000)
    r = redis.Redis.from_url(redis_url)
    r.xgroup_create("atp:in:pos", "atp", id="0", mkstream=True)
    gone = r.xadd("atp:in:pos", F("p-gone", "SALE", "A", "S1", 1, now - 1000).fields())
    r.xreadgroup("atp", "atp-1", {"atp:in:pos": ">"}, count=10)  # this service's own consumer
    r.xdel("atp:in:pos", gone)
    await start_service()
    await wait_consumed(redis_url, ["atp:in:pos"])
    ((_, dead),) = r.xrange("atp:dlq")
    assert (dead[b"_id"], dead[b"_stream"]) == (gone, b"atp:in:pos")
    assert dead[b"_reason"] == b"entry was trimmed from the stream while pending; not known to be applied"


async def test_a_dead_letter_keeps_its_own_reason_whatever_fields_the_entry_has(
        start_service: ServiceFactory, redis_url: str) -> None:
    """A dead letter replayed as it was (OPERATIONS: XADD it again) carries the earlier one's
    ``_reason``, ``_stream`` and ``_id``: its new dead letter must name its own."""
    now = int(time.time() * 1000)
    r = redis.Redis.from_url(redis_url)
    await start_service()
    entry_id = r.xadd("atp:in:pos", {
        "_reason": "quantity: not an integer: 'two'", "_stream": "atp:in:wms", "_id": "1-0",
        "event_id": "x1", "source": "pos", "kind": "SALE", "sku": "A", "location": "S1",
        "quantity": "2", "event_time_ms": str(now + 3_600_000)})  # an hour ahead: refused (E7)
    await wait_consumed(redis_url, ["atp:in:pos"])
    ((_, dead),) = r.xrange("atp:dlq")
    assert (dead[b"_id"], dead[b"_stream"]) == (entry_id, b"atp:in:pos")
    assert dead[b"_reason"].startswith(b"event_time_ms:") and dead[b"event_id"] == b"x1"


async def test_a_dead_consumers_entries_far_down_the_pending_list_are_claimed(
        start_service: ServiceFactory, redis_url: str) -> None:
    """XAUTOCLAIM scans at most ten times its COUNT of pending entries a call: started from 0-0 each
    time, the claims never reached entries behind a long run of ones not idle long enough."""
    now = int(time.time() * 1000)
    r = redis.Redis.from_url(redis_url)
    r.xgroup_create("atp:in:wms", "atp", id="0", mkstream=True)
    busy = [r.xadd("atp:in:wms", F(f"b{i}", "RECEIPT", "B", "DC", 1, now - 1000).fields()) for i in range(40)]
    r.xadd("atp:in:wms", F("late", "RECEIPT", "A", "DC", 7, now - 1000).fields())
    r.xreadgroup("atp", "dead-consumer", {"atp:in:wms": ">"}, count=100)
    r.xclaim("atp:in:wms", "atp", "alive", 0, busy, idle=0)  # not idle: left to their consumer
    _, client = await start_service(claim_idle_ms=1000, ingest_count=2)  # a scan covers 20 entries
    for _ in range(200):
        (a,) = await client.availability([("A", "DC")])
        if a.on_hand == 7:
            break
        r.xclaim("atp:in:wms", "atp", "alive", 0, busy, idle=0)  # kept busy by their consumer
        await asyncio.sleep(0.05)
    assert a.on_hand == 7



HOUR_MS = 3_600_000


async def on_hand_once_the_group_is_lost_two_hours_on(r: Any, redis_url: str, client: AtpClient, clock: ManualClock,
                                                      fact: F) -> int:
    """The service's clock two hours on, the input group of atp:in:pos deleted and ``fact`` (at A@S1) written
    there: A@S1's on_hand once the group made again has read it."""
    clock.advance(2 * HOUR_MS)
    r.xgroup_destroy("atp:in:pos", "atp")
    r.xadd("atp:in:pos", fact.fields())
    await wait_consumed(redis_url, ["atp:in:pos"], timeout_s=20)
    (position,) = await client.availability([("A", "S1")])
    return int(position.on_hand)


async def test_an_entry_refused_as_future_stamped_is_not_applied_when_the_group_is_made_again(
        start_service: ServiceFactory, redis_url: str) -> None:
    """Made again from the stream's start, a group had every entry judged again by a clock that has
    moved on: a RECEIPT refused as stamped an hour ahead (E7) was applied two hours later."""
    clock = ManualClock(T)
    r = redis.Redis.from_url(redis_url)
    _, client = await start_service(clock=clock)
    r.xadd("atp:in:pos", F("bad-clock", "RECEIPT", "A", "S1", 5, T + HOUR_MS).fields())
    await wait_consumed(redis_url, ["atp:in:pos"])
    assert r.xlen("atp:dlq") == 1
    later = F("p2", "RECEIPT", "A", "S1", 1, T + 2 * HOUR_MS - 100)
    assert await on_hand_once_the_group_is_lost_two_hours_on(r, redis_url, client, clock, later) == 1
    assert r.xlen("atp:dlq") == 1


async def test_a_group_lost_again_after_its_stream_was_made_anew_reads_on_after_the_new_stream_s_entries(
        start_service: ServiceFactory, redis_url: str) -> None:
    """After a stream made anew (deleted, written again with lower ids) the reader still took the old
    stream's newest id for the newest it had read there: the next loss of the group found the ids short
    of it again and read the stream from its start, every entry judged again by a clock that had moved
    on — a RECEIPT refused as stamped an hour ahead (E7) applied two hours later."""
    clock = ManualClock(T)
    r = redis.Redis.from_url(redis_url)
    _, client = await start_service(clock=clock)
    r.xadd("atp:in:pos", F("p1", "RECEIPT", "A", "S1", 4, T - 100).fields(), id=f"{T * 1000}-0")
    await wait_consumed(redis_url, ["atp:in:pos"])
    r.delete("atp:in:pos")
    r.xadd("atp:in:pos", F("bad-clock", "RECEIPT", "A", "S1", 5, T + HOUR_MS).fields())
    r.xadd("atp:in:pos", F("p2", "SALE", "A", "S1", 1, T - 50).fields())
    for _ in range(400):  # a bound, not a timing
        if r.xlen("atp:dlq") == 1 and (await client.availability([("A", "S1")]))[0].on_hand == 3:
            break
        await asyncio.sleep(0.05)
    await wait_consumed(redis_url, ["atp:in:pos"], timeout_s=20)
    assert r.xlen("atp:dlq") == 1
    later = F("p3", "SALE", "A", "S1", 1, T + 2 * HOUR_MS - 100)
    assert await on_hand_once_the_group_is_lost_two_hours_on(r, redis_url, client, clock, later) == 2
    assert r.xlen("atp:dlq") == 1


ALERT_CASE = """
rule_files: [{rules}]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - series: 'up{{job="atp-service", instance="a:9464"}}'
        values: '1x15'
      - series: 'atp_ingest_read_failures_total{{job="atp-service", instance="a:9464"}}'
        values: '0+{per_minute}x15'
      - series: 'atp_ingest_pending{{job="atp-service", instance="a:9464", stream="atp:in:pos"}}'
        values: '{pending}x15'
    promql_expr_test:  # some alert fires, whichever
      - expr: count(ALERTS{{alertstate="firing"}})
        eval_time: 10m
        exp_samples: [{{labels: "{{}}", value: 1}}]
"""


async def test_a_reader_refused_on_every_read_while_redis_answers_fires_an_alert(
        start_service: ServiceFactory, redis_url: str, tmp_path: Path) -> None:
    """Defect: an input stream replaced by another type (or the ACL losing XREADGROUP) fails every
    read of every stream for good while Redis answers the rest: no fact read, health SERVING (the
    shards are fine), ``atp_ingest_pending`` flat (nothing delivered) — and no alert read the one
    metric that moved, ``atp_ingest_read_failures_total``. The rise of it, as a real service shows
    it, must fire an alert."""
    service, client = await start_service(ingest_block_ms=20)
    registry = service.metrics.registry
    redis.Redis.from_url(redis_url).set("atp:in:wms", "not a stream")  # WRONGTYPE for every read
    await until(lambda: (registry.get_sample_value("atp_ingest_read_failures_total") or 0) >= 5,
                "the reader's failures counted")
    assert not service.failed.is_set() and (await client.availability([("A", "S1")]))[0].on_hand == 0
    pending = registry.get_sample_value("atp_ingest_pending", {"stream": "atp:in:pos"}) or 0
    case = tmp_path / "case.yml"
    # One failure a minute, the slowest rise there is (the reader tries again every 2 s at most).
    case.write_text(ALERT_CASE.format(rules=RULES, per_minute=1, pending=int(pending)))
    done = await asyncio.to_thread(subprocess.run, [promtool(), "test", "rules", str(case)], capture_output=True,
                                   text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


async def test_entries_trimmed_from_an_input_stream_before_they_were_read_are_counted(
        start_service: ServiceFactory, redis_url: str) -> None:
    """A producer's MAXLEN shorter than the backlog while the service was down: the entries trimmed
    unread were lost without a trace (XREADGROUP reads on from the oldest entry left), so sales and
    receipts went missing from on_hand and nothing told the operator."""
    now = int(time.time() * 1000)
    r = redis.Redis.from_url(redis_url)
    r.xgroup_create("atp:in:pos", "atp", id="0", mkstream=True)
    first = r.xadd("atp:in:pos", F("p1", "RECEIPT", "A", "S1", 1, now - 1000).fields())
    r.xreadgroup("atp", "an-earlier-run", {"atp:in:pos": ">"}, count=10)  # read and applied, then down
    r.xack("atp:in:pos", "atp", first)
    for n in range(2, 7):  # p2..p4 trimmed away unread; p5 and p6 left
        r.xadd("atp:in:pos", F(f"p{n}", "RECEIPT", "A", "S1", 1, now - 1000 + n).fields(), maxlen=2, approximate=False)
    service, client = await start_service()
    registry = service.metrics.registry

    for _ in range(400):  # p5 and p6, read after the gap (a bound, not a timing)
        if (await client.availability([("A", "S1")]))[0].on_hand == 2:
            break
        await asyncio.sleep(0.05)
    assert (await client.availability([("A", "S1")]))[0].on_hand == 2
    assert registry.get_sample_value("atp_ingest_trimmed_unread_total", {"stream": "atp:in:pos"}) == 3
    assert registry.get_sample_value("atp_ingest_trimmed_unread_total", {"stream": "atp:in:wms"}) == 0


async def test_a_read_refused_on_every_try_is_retried_at_growing_waits(redis_url: str, caplog: Any) -> None:
    """The user's ACL losing ``EVALSHA`` while serving (the read of new entries is a script, the pass
    over the reader's own pending entries is not): each failed read was followed by a pending pass that
    succeeded, which reset the wait, so the read was retried and logged every 50 ms, for good."""
    async with aioredis.Redis.from_url(redis_url) as admin:
        await admin.execute_command("ACL", "SETUSER", USER, "reset", "on", f">{PASSWORD}", "~*", "&*", "+@all")
        service = AtpService(make_config(ingest_block_ms=20), as_user(redis_url))
        try:
            await service.start()
            with caplog.at_level(logging.WARNING, logger="atp_service.intake.ingest"):
                await admin.execute_command("ACL", "SETUSER", USER, "-evalsha", "-eval")
                failures = service.metrics.intake.ingest_read_failures
                await until(lambda: failures.collect()[0].samples[0].value >= 6, "six reads refused", 60)
            waits = [r.__dict__["retry_s"] for r in caplog.records if r.__dict__.get("event") == "ingest_read_failed"]
            assert max(waits[:6]) >= 0.3, waits  # 0.05, 0.1, 0.2, 0.4, ... less their jitter
        finally:
            await service.stop(grace_s=0)
            await admin.execute_command("ACL", "DELUSER", USER)


async def test_an_entry_whose_dead_letter_could_not_be_written_stays_pending_not_acknowledged(
        start_service: ServiceFactory, redis_url: str, caplog: Any) -> None:
    """The dead-letter stream's key holding another type (WRONGTYPE): the XADD of a dead letter fails
    inside its transaction, where Redis still runs the XACK queued beside it, so the entry was
    acknowledged with no dead letter anywhere — gone for good, though the batch's warning said its
    entries stay pending. It must stay pending, and go to the dead-letter stream once that is a stream."""
    now = int(time.time() * 1000)
    r = redis.Redis.from_url(redis_url)
    service, _ = await start_service()
    r.set("atp:dlq", "not a stream")
    entry_id = r.xadd("atp:in:pos", {**F("d1", "SALE", "A", "S1", 1, now).fields(), "quantity": "two"})
    with caplog.at_level(logging.WARNING):
        await until(lambda: any("batch failed" in rec.getMessage() for rec in caplog.records), "a batch failed")
    r.delete("atp:dlq")
    await wait_consumed(redis_url, ["atp:in:pos"], timeout_s=20)
    dead = r.xrange("atp:dlq")
    assert [(fields[b"_id"], fields[b"_code"]) for _, fields in dead] == [(entry_id, b"INVALID_FIELD")]
    await until(lambda: dead_lettered(service, "atp:in:pos") >= 1, "the dead letter counted")
    assert dead_lettered(service, "atp:in:pos") == 1


async def test_an_entry_refused_as_unavailable_past_the_delivery_bound_is_never_dead_lettered_and_applies_after(
        start_service: ServiceFactory, redis_url: str) -> None:
    """A fact refused for a reason that passes with time (here the quarantine stream cannot be written:
    ``STORAGE_UNREACHABLE``) stays pending however often it is delivered — ``ingest_max_deliveries`` bounds
    only the other refusals — and is decided once the cause is gone: quarantined once, no dead letter."""
    r = redis.Redis.from_url(redis_url)
    service, _ = await start_service(ingest_max_deliveries=2)
    r.xadd("atp:in:pos", F("e1", "RECEIPT", "A", "S1", 4, T).fields())
    await wait_consumed(redis_url, ["atp:in:pos"])
    r.set("atp:quarantine", "not a stream")  # every quarantine write refused (WRONGTYPE)
    entry = r.xadd("atp:in:pos", F("e1", "RECEIPT", "A", "S1", 5, T).fields())  # e1 again, another payload (E8)

    def delivered() -> int:
        pending = r.xpending_range("atp:in:pos", "atp", entry, entry, 1)
        return int(pending[0]["times_delivered"]) if pending else 0

    await until(lambda: delivered() >= 5, "the entry delivered past the bound")
    r.delete("atp:quarantine")
    await wait_consumed(redis_url, ["atp:in:pos"], timeout_s=20)
    assert not r.exists("atp:dlq")
    assert [fields[b"event_id"] for _, fields in r.xrange("atp:quarantine")] == [b"e1"]
    assert service.metrics.registry.get_sample_value("atp_dead_lettered_total", {"stream": "atp:in:pos"}) == 0
