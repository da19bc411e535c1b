"""Facts through RecordEvents and the input streams: E3 order independence, E4-E9, dead letters, R4 by fact."""

from __future__ import annotations

import logging
import random
import time

import pytest
import redis

from atp_client import AtpClient, Refusal, timestamp
from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_service import ManualClock
from atp_service.intake import dead_letters
from atp_service.intake import facts as facts_module
from tests.atp_service.fact_helpers import (
    F,
    dead_lettered,
    on_hand_of,
    random_facts,
    reference_on_hand,
    send_grpc,
    send_stream,
    unfulfilled_told,
    wait_consumed,
    with_duplicates,
)
from tests.conftest import ServiceFactory
from tests.waiting import until

T0 = 1_700_000_000_000


async def test_order_independence_E3_grpc_and_streams(start_service: ServiceFactory, redis_url: str) -> None:
    """A few thousand facts, resent duplicates and equal timestamps included, in several arrival orders:
    every order gives the on_hand of the reference fold of the same facts sorted by E1."""
    _, client = await start_service(clock=ManualClock(T0))
    rng = random.Random(20261123)
    for order in range(4):
        prefix = f"o{order}-"
        facts = random_facts(random.Random(7), 3000, 120, prefix, T0)  # the same facts each time
        expected = reference_on_hand(facts)
        arrival = with_duplicates(rng, facts)
        rng.shuffle(arrival)
        if order < 3:
            await send_grpc(client, arrival, rng)
        else:
            half = len(arrival) // 2
            await send_stream(redis_url, "atp:in:pos", arrival[:half])
            await send_stream(redis_url, "atp:in:wms", arrival[half:])
            await wait_consumed(redis_url, ["atp:in:pos", "atp:in:wms"])
        got = await on_hand_of(client, sorted(expected))
        assert got == expected, f"arrival order {order} differs"


async def test_malformed_entry_is_dead_lettered_and_later_entries_still_apply(
    start_service: ServiceFactory, redis_url: str
) -> None:
    _, client = await start_service()
    now = int(time.time() * 1000)
    r = redis.Redis.from_url(redis_url)
    r.xadd("atp:in:pos", F("g1", "RECEIPT", "A", "S1", 5, now - 1000).fields())
    r.xadd("atp:in:pos", {"event_id": "bad1", "source": "pos", "kind": "SALE", "sku": "A", "location": "S1",
                          "quantity": "two", "event_time_ms": now})
    r.xadd("atp:in:pos", {"event_id": "bad2", "kind": "SALE"})
    r.xadd("atp:in:pos", {b"event_id": b"\xff\xfe", b"x": b"y"})
    r.xadd("atp:in:pos", F("g2", "SALE", "A", "S1", 2, now - 500).fields())
    await wait_consumed(redis_url, ["atp:in:pos"])
    (a,) = await client.availability([("A", "S1")])
    assert a.on_hand == 3
    dead = r.xrange("atp:dlq")
    reasons = [fields[b"_reason"].decode() for _, fields in dead]
    assert reasons == ["quantity: not an integer: 'two'", "source: missing",
                       "entry: field values must be UTF-8"]
    assert dead[0][1][b"event_id"] == b"bad1" and dead[0][1][b"_stream"] == b"atp:in:pos"


def _add_naming_quantity_twice(r: redis.Redis, now: int) -> None:
    """A till's SALE entry naming ``quantity`` twice (1, then 4): XADD keeps both."""
    r.execute_command("XADD", "atp:in:pos", "*", "event_id", "twice", "source", "pos", "kind", "SALE", "sku", "A",
                      "location", "S1", "quantity", "1", "event_time_ms", str(now), "quantity", "4")


async def test_an_entry_naming_a_field_twice_is_dead_lettered_not_read_as_one_of_its_values(
    start_service: ServiceFactory, redis_url: str
) -> None:
    """XADD keeps a field named twice, both values: which one the POS meant is not known, so the
    entry is refused naming the field, not applied with the last value."""
    _, client = await start_service()
    now = int(time.time() * 1000)
    r = redis.Redis.from_url(redis_url)
    r.xadd("atp:in:pos", F("g1", "RECEIPT", "A", "S1", 5, now - 1000).fields())
    _add_naming_quantity_twice(r, now)
    r.xadd("atp:in:pos", F("g2", "SALE", "A", "S1", 2, now - 500).fields())
    await wait_consumed(redis_url, ["atp:in:pos"])
    (a,) = await client.availability([("A", "S1")])
    assert a.on_hand == 3
    (dead,) = [fields for _, fields in r.xrange("atp:dlq")]
    assert dead[b"_reason"] == b"quantity: named 2 times in the entry ('1', '4'): which one is meant is not known"
    assert dead[b"event_id"] == b"twice"


async def test_a_dead_letter_of_an_entry_naming_a_field_twice_keeps_both_values_and_replayed_is_refused_again(
    start_service: ServiceFactory, redis_url: str
) -> None:
    """A dead letter holds the entry's original fields (OPERATIONS.md "Dead letters"), and one replayed
    as it was is read as the entry it holds: a field named twice keeps both of its values there, so
    the replayed entry is refused again, not applied with the value the service would not guess."""
    _, client = await start_service()
    now = int(time.time() * 1000)
    r = redis.Redis.from_url(redis_url)
    r.xadd("atp:in:pos", F("g1", "RECEIPT", "A", "S1", 5, now - 1000).fields())
    _add_naming_quantity_twice(r, now)
    await wait_consumed(redis_url, ["atp:in:pos"])
    raw = redis.Redis.from_url(redis_url)
    raw.set_response_callback("XRANGE", lambda reply, **_: reply)  # a dict would keep one value a name
    ((_, flat),) = raw.execute_command("XRANGE", "atp:dlq", "-", "+")
    pairs = list(zip(flat[0::2], flat[1::2], strict=True))
    assert [value for name, value in pairs if name == b"quantity"] == [b"1", b"4"]
    r.execute_command("XADD", "atp:in:pos", "*", *flat)  # replayed as it was
    await wait_consumed(redis_url, ["atp:in:pos"])
    (a,) = await client.availability([("A", "S1")])
    assert a.on_hand == 5
    codes = [fields[b"_code"] for _, fields in r.xrange("atp:dlq")]
    assert codes == [b"FIELD_REPEATED", b"FIELD_REPEATED"]


async def test_a_flood_of_malformed_entries_logs_a_line_a_second_not_one_an_entry(
    start_service: ServiceFactory, redis_url: str, caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch
) -> None:
    """Any producer can write malformed entries at will (a typo in a till integration: every sale):
    each is dead-lettered and counted, but the log says so at most once an interval (an hour here, so
    that no timing decides the count), saying how many it left out, rather than a line for each."""
    monkeypatch.setattr(dead_letters, "DEAD_LETTER_LOG_EVERY_S", 3600.0, raising=False)
    service, _ = await start_service()
    now = int(time.time() * 1000)
    r = redis.Redis.from_url(redis_url)
    # Captured before the first entry is written: the reader may dead-letter (and log) it at once.
    with caplog.at_level(logging.WARNING):
        with r.pipeline(transaction=False) as pipe:
            for n in range(30):  # the field name a line break and a forged line, as a producer may send it
                pipe.xadd("atp:in:pos", {**F(f"bad{n}", "SALE", "A", "S1", 1, now).fields(),
                                         "qty\n2026-12-02 10:00:00,000 ERROR forged": "1"})
            pipe.execute()
        await wait_consumed(redis_url, ["atp:in:pos"])
        # Counted and said once the script that wrote their dead letters and acknowledged their entries
        # answered: after Redis shows them consumed, by a turn of the service's loop or more.
        await until(lambda: dead_lettered(service, "atp:in:pos") >= 30, "the dead letters counted")
    lines = [record for record in caplog.records if "dead-lettered" in record.getMessage()]
    assert len(lines) == 1, [record.getMessage() for record in lines]
    assert "\n" not in lines[0].getMessage()
    assert (lines[0].event, lines[0].code, lines[0].field) == (  # type: ignore[attr-defined]
        "ingest_dead_lettered", "INVALID_FIELD", "qty\n2026-12-02 10:00:00,000 ERROR forged")
    assert r.xlen("atp:dlq") == 30
    assert dead_lettered(service, "atp:in:pos") == 30


async def test_a_dead_letter_names_the_field_and_a_code_of_the_documented_vocabulary(
    start_service: ServiceFactory, redis_url: str
) -> None:
    """Beside ``_reason`` (words), each dead letter says which field is at fault (``_field``, empty for
    the entry as a whole) and why as a code a tool can act on (``_code``, docs/OPERATIONS.md)."""
    await start_service()
    now = int(time.time() * 1000)
    r = redis.Redis.from_url(redis_url)
    good = F("g1", "SALE", "A", "S1", 1, now).fields()
    r.xadd("atp:in:pos", {**good, "event_id": "d1", "quantity": "two"})
    r.xadd("atp:in:pos", {k: v for k, v in good.items() if k != "source"})
    r.xadd("atp:in:pos", {**good, "event_id": b"\xff\xfe"})
    r.xadd("atp:in:pos", {**good, "event_id": "d4", "sku": "s" * 129})  # past max_id_length (128)
    r.execute_command("XADD", "atp:in:pos", "*", *[x for kv in good.items() for x in kv], "quantity", "4")
    await wait_consumed(redis_url, ["atp:in:pos"])
    got = [(f[b"_field"], f[b"_code"], f[b"_reason"].split(b":")[0]) for _, f in r.xrange("atp:dlq")]
    assert got == [(b"quantity", b"INVALID_FIELD", b"quantity"), (b"source", b"INVALID_FIELD", b"source"),
                   (b"", b"REQUEST_MALFORMED", b"entry"), (b"sku", b"LIMIT_EXCEEDED", b"sku"),
                   (b"quantity", b"FIELD_REPEATED", b"quantity")]


async def test_late_fact_is_quarantined_with_its_reason_E6(start_service: ServiceFactory, redis_url: str) -> None:
    _, client = await start_service(clock=ManualClock(T0 + 48 * 3600_000))
    await client.record_events([F("new", "RECEIPT", "A", "S1", 5, T0 + 48 * 3600_000).pb()])
    results = await client.record_events([F("old", "COUNT", "A", "S1", 99, T0).pb()])
    assert (results[0].outcome, results[0].quarantine_reason) == (pb.FACT_OUTCOME_QUARANTINED,
                                                                   pb.QUARANTINE_REASON_LATE)
    (a,) = await client.availability([("A", "S1")])
    assert a.on_hand == 5
    entries = redis.Redis.from_url(redis_url).xrange("atp:quarantine")
    assert len(entries) == 1 and entries[0][1][b"event_id"] == b"old"
    assert entries[0][1][b"reason"].startswith(b"late")


async def test_delta_before_latest_count_is_absorbed_E4(start_service: ServiceFactory) -> None:
    _, client = await start_service(clock=ManualClock(T0))
    await client.record_events([F("c", "COUNT", "A", "S1", 10, T0 - 1000).pb()])
    results = await client.record_events([F("s", "SALE", "A", "S1", 3, T0 - 2000).pb()])
    assert results[0].outcome == pb.FACT_OUTCOME_ABSORBED
    (a,) = await client.availability([("A", "S1")])
    assert a.on_hand == 10


async def test_older_count_changes_nothing_E5(start_service: ServiceFactory) -> None:
    _, client = await start_service(clock=ManualClock(T0))
    await client.record_events([F("c2", "COUNT", "A", "S1", 10, T0 - 1000).pb()])
    results = await client.record_events([F("c1", "COUNT", "A", "S1", 50, T0 - 2000).pb()])
    assert results[0].outcome == pb.FACT_OUTCOME_ABSORBED
    (a,) = await client.availability([("A", "S1")])
    assert a.on_hand == 10


async def test_future_fact_is_refused_E7(start_service: ServiceFactory) -> None:
    _, client = await start_service(clock=ManualClock(T0))
    results = await client.record_events([F("f", "RECEIPT", "A", "S1", 1, T0 + 5 * 60_000 + 1).pb()])
    refusal = Refusal.from_status(results[0].error)
    assert results[0].outcome == pb.FACT_OUTCOME_INVALID
    assert (refusal.reason, [v.field for v in refusal.field_violations]) == ("INVALID_FIELD", ["events[0].event_time"])


async def test_duplicates_and_conflicts_E8(start_service: ServiceFactory, redis_url: str) -> None:
    _, client = await start_service(clock=ManualClock(T0))
    await client.record_events([F("e", "RECEIPT", "A", "S1", 4, T0 - 10).pb()])
    dup, conflict = await client.record_events([F("e", "RECEIPT", "A", "S1", 4, T0 - 10).pb(),
                                                F("e", "RECEIPT", "A", "S1", 9, T0 - 10).pb()])
    assert dup.outcome == pb.FACT_OUTCOME_DUPLICATE
    assert (conflict.outcome, conflict.quarantine_reason) == (pb.FACT_OUTCOME_QUARANTINED,
                                                              pb.QUARANTINE_REASON_CONFLICT)
    (a,) = await client.availability([("A", "S1")])
    assert a.on_hand == 4
    assert redis.Redis.from_url(redis_url).xlen("atp:quarantine") == 1


async def test_explain_shows_count_deltas_holds_and_safety_stock(start_service: ServiceFactory) -> None:
    _service, client = await start_service(clock=ManualClock(T0))
    await client.record_events([F("c", "COUNT", "A", "S1", 10, T0 - 5000).pb(),
                                F("s1", "SALE", "A", "S1", 2, T0 - 4000).pb(),
                                F("old", "SALE", "A", "S1", 1, T0 - 9000).pb()])
    await client.stub.SetSafetyStock(pb.SetSafetyStockRequest(sku="A", location="S1", quantity=1))
    await client.reserve("r1", [("A", "S1", 3)], order_ref="o-9", channel="web")
    await client.reserve("r2", [("A", "S1", 1), ("D", "S1", 0 + 1)], allow_partial=True)
    ex = await client.stub.ExplainAvailability(pb.ExplainAvailabilityRequest(sku="A", location="S1"))
    a = ex.availability
    assert (a.on_hand, a.reserved, a.safety_stock, a.available) == (8, 4, 1, 3)
    assert ex.has_count and ex.count_event_id == "c" and ex.count_quantity == 10
    assert [(d.source, d.delta) for d in ex.deltas_after_count] == [("pos", -2)]
    assert sorted((h.reservation_id, h.held) for h in ex.holds) == [("r1", 3), ("r2", 1)]
    assert {h.order_ref for h in ex.holds} == {"o-9", ""}


async def test_safety_stock_is_durable(start_service: ServiceFactory) -> None:
    service, client = await start_service()
    await client.stub.SetSafetyStock(pb.SetSafetyStockRequest(sku="A", location="S1", quantity=7))
    await client.close()
    await service.stop(grace_s=0.1)
    _, again = await start_service()
    (a,) = await again.availability([("A", "S1")])
    assert a.safety_stock == 7


async def shipped_after_confirm(start_service: ServiceFactory, committed: int,
                                shipped: int) -> tuple[AtpClient, pb.Fact, pb.FactResult]:
    """r1 of ``committed`` units of A@S1 (10 received) confirmed, then a SHIPMENT of ``shipped``
    naming it: the client, the fact and what RecordEvents answered."""
    _, client = await start_service(clock=ManualClock(T0))
    await client.record_events([F("r", "RECEIPT", "A", "S1", 10, T0 - 5000).pb()])
    await client.reserve("r1", [("A", "S1", committed)])
    await client.confirm("r1")
    ship = pb.Fact(event_id="w1", source="wms", kind=pb.FACT_KIND_SHIPMENT, sku="A", location="S1",
                   quantity=shipped, event_time=timestamp(T0 - 10), reservation_id="r1")
    (result,) = await client.record_events([ship])
    return client, ship, result


async def test_shipment_fact_naming_a_reservation_fulfils_it_R4(start_service: ServiceFactory) -> None:
    client, ship, result = await shipped_after_confirm(start_service, committed=4, shipped=3)
    assert result.outcome == pb.FACT_OUTCOME_APPLIED and not result.HasField("error")
    (again,) = await client.record_events([ship])
    assert again.outcome == pb.FACT_OUTCOME_DUPLICATE
    rec = await client.get_reservation("r1")
    assert rec.state == pb.RESERVATION_STATE_CONFIRMED and rec.lines[0].fulfilled == 3 and rec.lines[0].committed == 1
    (a,) = await client.availability([("A", "S1")])
    assert (a.on_hand, a.committed, a.available) == (7, 1, 6)


async def test_a_shipment_naming_its_reservation_by_a_field_the_format_lacks_is_dead_lettered(
        start_service: ServiceFactory, redis_url: str) -> None:
    """``reservation`` written for ``reservation_id``: read as it was, the units left on_hand and the
    reservation's stayed committed, counted twice against availability. A producer's ``x-`` field is
    its own and is not read."""
    _, client = await start_service()
    now = int(time.time() * 1000)
    await client.record_events([F("r", "RECEIPT", "A", "S1", 10, now - 5000).pb()])
    await client.reserve("r1", [("A", "S1", 4)])
    await client.confirm("r1")
    r = redis.Redis.from_url(redis_url)
    ship = {"event_id": "s1", "source": "wms", "kind": "SHIPMENT", "sku": "A", "location": "S1", "quantity": 4,
            "event_time_ms": now - 1000}
    r.xadd("atp:in:wms", {**ship, "reservation": "r1"})
    r.xadd("atp:in:wms", {**ship, "event_id": "s2", "reservation_id": "r1", "x-trace-id": "t-42"})
    await wait_consumed(redis_url, ["atp:in:wms"])
    (dead,) = [fields for _, fields in r.xrange("atp:dlq")]
    assert (dead[b"_field"], dead[b"_code"], dead[b"event_id"]) == (b"reservation", b"INVALID_FIELD", b"s1")
    (a,) = await client.availability([("A", "S1")])
    assert (a.on_hand, a.committed) == (6, 0)


async def test_an_entry_past_its_byte_bound_is_dead_lettered_cut_short_not_copied_whole(
        start_service: ServiceFactory, redis_url: str) -> None:
    """A producer's runaway field (a 200 KB blob): the entry was read, validated field by field and
    copied whole into the dead-letter stream; it is now refused by its size (LIMIT_EXCEEDED) and its
    dead letter keeps a bounded part of each field, saying how many bytes the entry had."""
    _, client = await start_service(ingest_max_entry_bytes=4096)
    now = int(time.time() * 1000)
    r = redis.Redis.from_url(redis_url)
    big = {**F("b1", "RECEIPT", "A", "S1", 5, now - 1000).fields(), "x-blob": "z" * 200_000}
    r.xadd("atp:in:pos", big)
    r.xadd("atp:in:pos", {**F("ok", "RECEIPT", "A", "S1", 2, now - 1000).fields(), "x-note": "y" * 3000})
    await wait_consumed(redis_url, ["atp:in:pos"])
    (dead,) = [fields for _, fields in r.xrange("atp:dlq")]
    size = sum(len(str(k)) + len(str(v)) for k, v in big.items())
    assert dead[b"_reason"] == f"entry: {size} bytes, more than 4096 (limit ingest_max_entry_bytes)".encode()
    assert (dead[b"_field"], dead[b"_code"], dead[b"_truncated"]) == (b"", b"LIMIT_EXCEEDED", str(size).encode())
    assert dead[b"event_id"] == b"b1" and dead[b"x-blob"] == b"z" * 256
    assert sum(len(k) + len(v) for k, v in dead.items()) < 8192
    (a,) = await client.availability([("A", "S1")])
    assert a.on_hand == 2  # the entry within the bound, its producer's note and all


async def test_a_shipment_that_fulfils_nothing_of_its_reservation_is_counted_R4(
        start_service: ServiceFactory, redis_url: str) -> None:
    """From an input stream no caller reads the reason: a SHIPMENT that moved stock but fulfilled
    nothing (its reservation still HELD) leaves the units counted twice, and must not be silent."""
    service, client = await start_service(clock=ManualClock(T0))
    await client.record_events([F("r", "RECEIPT", "A", "S1", 10, T0 - 5000).pb()])
    await client.reserve("r1", [("A", "S1", 4)])
    r = redis.Redis.from_url(redis_url)
    for eid, qty, reservation in (("w1", 4, "r1"), ("w2", 1, "nope")):
        fields = F(eid, "SHIPMENT", "A", "S1", qty, T0 - 10, "wms").fields()
        fields["reservation_id"] = reservation
        r.xadd("atp:in:wms", fields)  # type: ignore[arg-type]
    await wait_consumed(redis_url, ["atp:in:wms"])
    assert [unfulfilled_told(service, reason, "stream") for reason in ("not_confirmed", "unknown")] == [1, 1]
    (a,) = await client.availability([("A", "S1")])
    assert (a.on_hand, a.reserved) == (5, 4)  # stock moved; the hold stands, as the reason said


async def test_a_flood_of_shipments_that_fulfil_nothing_logs_a_line_an_interval_not_one_a_fact(
        start_service: ServiceFactory, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """An ingest caller may send 10,000 facts a RecordEvents, each SHIPMENT naming a reservation that
    does not exist (a WMS integration shipping before it confirms): every one is counted, but the log says
    so at most once an interval (an hour here, so that no timing decides the count), saying how many it
    left out, rather than a WARNING line for each, which buried everything else in the log."""
    monkeypatch.setattr(facts_module, "UNFULFILLED_LOG_EVERY_S", 3600.0, raising=False)
    service, client = await start_service(clock=ManualClock(T0))
    await client.record_events([F("r", "RECEIPT", "A", "S1", 100, T0 - 5000).pb()])
    shipments = []
    for n in range(30):
        fact = F(f"w{n}", "SHIPMENT", "A", "S1", 1, T0 - 10, "wms").pb()
        fact.reservation_id = f"nope{n}"
        shipments.append(fact)
    with caplog.at_level(logging.WARNING):
        await client.record_events(shipments[:29])
        await client.record_events(shipments[29:])
    lines = [record for record in caplog.records if getattr(record, "event", "") == "shipment_not_fulfilled"]
    assert len(lines) == 1, [record.getMessage() for record in lines]
    assert unfulfilled_told(service, "unknown") == 30
    (a,) = await client.availability([("A", "S1")])
    assert a.on_hand == 70  # every shipment applied: only the lines about them are left out
    assert service.desk is not None
    service.desk.unfulfilled_lines.interval_s = 0  # the interval over: the next line says what it left out
    late = F("w30", "SHIPMENT", "A", "S1", 1, T0 - 10, "wms").pb()
    late.reservation_id = "nope30"
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        await client.record_events([late])
    (line,) = [record for record in caplog.records if getattr(record, "event", "") == "shipment_not_fulfilled"]
    assert (line.reservation_id, line.left_out) == ("nope30", 29)  # type: ignore[attr-defined]


async def test_a_shipment_of_more_than_its_line_committed_fulfils_every_committed_unit_R4(
        start_service: ServiceFactory) -> None:
    """WMS ships 5 units naming a reservation with 3 committed there: all 3 left with it. The fact was
    refused whole by the reservation ("exceeds the 3 units committed"), so the 3 stayed committed for
    good (Q3: they never expire) beside the 5 gone from on_hand: availability 3 short until someone
    released them by hand. A restart (E10) holds the same."""
    client, _, result = await shipped_after_confirm(start_service, committed=3, shipped=5)
    assert result.outcome == pb.FACT_OUTCOME_APPLIED and not result.detail, result.detail
    await fulfilled_whole(client)
    _, again = await start_service(clock=ManualClock(T0 + 1000))  # replays the log: the first is fenced
    await fulfilled_whole(again)


async def fulfilled_whole(client: AtpClient) -> None:
    rec = await client.get_reservation("r1")
    assert rec.state == pb.RESERVATION_STATE_FULFILLED
    assert (rec.lines[0].fulfilled, rec.lines[0].committed) == (3, 0)
    (a,) = await client.availability([("A", "S1")])
    assert (a.on_hand, a.reserved, a.committed, a.available) == (5, 0, 0, 5)  # Q5: nothing counted twice
