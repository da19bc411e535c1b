"""Every RPC against the real gRPC server and a real Redis: happy paths and each error."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from google.rpc import error_details_pb2, status_pb2

from atp_client import Refusal, epoch_ms, timestamp, typed
from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_service import AtpService, ManualClock
from reservation import Limits
from tests.atp_service.refusals import fields_of, refused, told
from tests.conftest import ServiceFactory

T0 = 1_700_000_000_000


def receipt(eid: str, sku: str, loc: str, qty: int, t: int = T0 - 1000, kind: int = pb.FACT_KIND_RECEIPT) -> pb.Fact:
    return pb.Fact(event_id=eid, source="wms", kind=kind, sku=sku, location=loc, quantity=qty, event_time=timestamp(t))


async def stocked(start: ServiceFactory, clock: ManualClock | None = None, **kw: object):  # type: ignore[no-untyped-def]
    service, client = await start(clock=clock or ManualClock(T0), **kw)
    results = await client.record_events([
        receipt("e1", "A", "S1", 10), receipt("e2", "B", "S1", 5), receipt("e3", "D", "DC", 100),
    ])
    assert all(r.outcome == pb.FACT_OUTCOME_APPLIED for r in results)
    return service, client


async def test_reserve_confirm_fulfil_lifecycle(start_service: ServiceFactory) -> None:
    _, client = await stocked(start_service)
    resp = await client.reserve("r1", [("A", "S1", 3)], order_ref="o-1", channel="web", ttl_seconds=60)
    assert resp.state == pb.RESERVATION_STATE_HELD and resp.lines[0].granted == 3
    assert epoch_ms(resp.expire_time) == T0 + 60_000
    rec = await client.confirm("r1")
    assert rec.state == pb.RESERVATION_STATE_CONFIRMED and rec.lines[0].committed == 3
    rec = await client.fulfill("r1", [("A", "S1", 1)], operation_id="ship-1")
    assert rec.state == pb.RESERVATION_STATE_CONFIRMED and rec.lines[0].fulfilled == 1
    rec = await client.fulfill("r1")
    assert rec.state == pb.RESERVATION_STATE_FULFILLED
    (a,) = await client.availability([("A", "S1")])
    assert (a.on_hand, a.reserved, a.committed, a.available) == (7, 0, 0, 7)
    assert (await client.get_reservation("r1")).state == pb.RESERVATION_STATE_FULFILLED


async def test_release_full_and_partial(start_service: ServiceFactory) -> None:
    _, client = await stocked(start_service)
    await client.reserve("r1", [("A", "S1", 4), ("B", "S1", 2)])
    rec = await client.release("r1", [("A", "S1", 1)], operation_id="op-1")
    assert rec.lines[0].held == 3 and rec.lines[0].released == 1
    rec = await client.release("r1", [("A", "S1", 1)], operation_id="op-1")  # retry: harmless
    assert rec.lines[0].held == 3
    rec = await client.release("r1")
    assert rec.state == pb.RESERVATION_STATE_RELEASED
    got = await client.availability([("A", "S1"), ("B", "S1")])
    assert [p.available for p in got] == [10, 5]


async def test_all_or_nothing_across_two_shards(start_service: ServiceFactory) -> None:
    service, client = await stocked(start_service)
    assert service.engine is not None
    assert service.engine.place("A") != service.engine.place("D"), "test needs SKUs on two shards"
    resp = await client.reserve("r1", [("A", "S1", 2), ("D", "DC", 101)])
    assert resp.state == pb.RESERVATION_STATE_REJECTED
    assert [line.outcome for line in resp.lines] == [pb.LINE_OUTCOME_NOT_ATTEMPTED, pb.LINE_OUTCOME_INSUFFICIENT]
    got = await client.availability([("A", "S1"), ("D", "DC")])
    assert [p.reserved for p in got] == [0, 0]
    resp = await client.reserve("r2", [("A", "S1", 2), ("D", "DC", 100)])
    assert resp.state == pb.RESERVATION_STATE_HELD
    got = await client.availability([("A", "S1"), ("D", "DC")])
    assert [p.reserved for p in got] == [2, 100]
    rec = await client.confirm("r2")
    assert [line.committed for line in rec.lines] == [2, 100]
    rec = await client.release("r2")
    got = await client.availability([("A", "S1"), ("D", "DC")])
    assert [p.committed for p in got] == [0, 0] and rec.state == pb.RESERVATION_STATE_RELEASED


async def test_allow_partial(start_service: ServiceFactory) -> None:
    _, client = await stocked(start_service)
    resp = await client.reserve("r1", [("A", "S1", 2), ("B", "S1", 6)], allow_partial=True)
    assert resp.state == pb.RESERVATION_STATE_HELD and [line.granted for line in resp.lines] == [2, 0]


async def test_ttl_expiry_without_any_request(start_service: ServiceFactory) -> None:
    clock = ManualClock(T0)
    service, client = await stocked(start_service, clock=clock)
    await client.reserve("r1", [("A", "S1", 4)], ttl_seconds=30)
    clock.advance(29_999)
    await service.engine._housekeeper.run_pass()  # a whole maintenance pass 1 ms early: it expires nothing (R3)
    assert (await client.get_reservation("r1")).state == pb.RESERVATION_STATE_HELD
    clock.advance(1)
    for _ in range(1500):  # the maintenance pass runs every 20 ms in tests; 30 s: a bound, not a timing
        if (await client.get_reservation("r1")).state == pb.RESERVATION_STATE_EXPIRED:
            break
        await asyncio.sleep(0.02)
    assert (await client.get_reservation("r1")).state == pb.RESERVATION_STATE_EXPIRED
    (a,) = await client.availability([("A", "S1")])
    assert a.reserved == 0
    assert await told(client.confirm("r1")) == (grpc.StatusCode.FAILED_PRECONDITION, "RESERVATION_EXPIRED")


async def test_idempotent_replays(start_service: ServiceFactory) -> None:
    _, client = await stocked(start_service)
    first = await client.reserve("r1", [("A", "S1", 3)])
    again = await client.reserve("r1", [("A", "S1", 3)])
    assert again.replayed and not first.replayed and again.lines == first.lines
    rejected = await client.reserve("r2", [("B", "S1", 9)])
    await client.record_events([receipt("more", "B", "S1", 10)])
    replay = await client.reserve("r2", [("B", "S1", 9)])
    assert rejected.state == replay.state == pb.RESERVATION_STATE_REJECTED and replay.replayed
    (a,) = await client.availability([("A", "S1")])
    assert a.reserved == 3  # counted once
    refusal = await refused(client.reserve("r1", [("A", "S1", 4)]))
    assert (refusal.code, refusal.reason, refusal.metadata) == (
        grpc.StatusCode.ALREADY_EXISTS, "RESERVATION_ID_REUSED", {"field": "lines"})


async def test_second_conflicting_resolution_names_the_state(start_service: ServiceFactory) -> None:
    _, client = await stocked(start_service)
    await client.reserve("r1", [("A", "S1", 1)])
    await client.confirm("r1")
    await client.fulfill("r1")
    refusal = await refused(client.release("r1"))
    assert (refusal.code, refusal.reason, refusal.state) == (
        grpc.StatusCode.FAILED_PRECONDITION, "RESERVATION_FULFILLED", "FULFILLED")


async def test_a_fulfil_after_a_release_settled_it_is_refused_and_the_release_retried_answered_R3_R5(
        start_service: ServiceFactory) -> None:
    _, client = await stocked(start_service)
    await client.reserve("r1", [("A", "S1", 3)])
    await client.confirm("r1")
    await client.fulfill("r1", [("A", "S1", 1)], operation_id="ship-1")
    settled = await client.release("r1")  # the rest released: FULFILLED, something shipped
    assert settled.state == pb.RESERVATION_STATE_FULFILLED and settled.lines[0].released == 2
    refusal = await refused(client.fulfill("r1"))  # was: answered as a retry of a fulfilment
    assert (refusal.code, refusal.reason, refusal.state) == (
        grpc.StatusCode.FAILED_PRECONDITION, "RESERVATION_FULFILLED", "FULFILLED")
    assert await client.release("r1") == settled  # its own retry (R5)
    (a,) = await client.availability([("A", "S1")])
    assert (a.on_hand, a.reserved, a.committed) == (9, 0, 0)


@pytest.mark.parametrize(
    ("lines", "kwargs", "field"),
    [
        ([("", "S1", 1)], {}, "lines[0].sku"),
        ([("A", "x" * 200, 1)], {}, "lines[0].location"),
        ([("A", "S1", 0)], {}, "lines[0].quantity"),
        ([("A", "S1", -2)], {}, "lines[0].quantity"),
        ([("A", "S1", 10_000_000)], {}, "lines[0].quantity"),
        ([], {}, "lines"),
        ([("A", "S1", 1)] * 201, {}, "lines"),
        ([("A", "S1", 1)], {"ttl_seconds": 10**9}, "ttl"),
        ([("A", "S1", 1)], {"ttl_seconds": -1}, "ttl"),
    ],
)
async def test_bad_reserve_input_names_the_field(start_service: ServiceFactory, lines: list, kwargs: dict,  # type: ignore[type-arg]
                                                 field: str) -> None:
    _, client = await stocked(start_service)
    refusal = await refused(client.reserve("bad", lines, **kwargs))
    assert refusal.code == grpc.StatusCode.INVALID_ARGUMENT and fields_of(refusal) == [field]
    assert refusal.reason == ("LIMIT_EXCEEDED" if len(lines) > 200 or "x" * 200 in str(lines) else "INVALID_FIELD")
    (a,) = await client.availability([("A", "S1")])
    assert a.reserved == 0


async def test_other_errors(start_service: ServiceFactory) -> None:
    _, client = await stocked(start_service)
    assert await told(client.confirm("missing")) == (grpc.StatusCode.NOT_FOUND, "RESERVATION_NOT_FOUND")
    assert await told(client.get_reservation("missing")) == (grpc.StatusCode.NOT_FOUND, "RESERVATION_NOT_FOUND")
    assert await told(client.reserve("", [("A", "S1", 1)])) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_FIELD")
    keys = [("A", f"S{i}") for i in range(1001)]
    assert await told(client.availability(keys)) == (grpc.StatusCode.INVALID_ARGUMENT, "LIMIT_EXCEEDED")
    await client.reserve("r1", [("A", "S1", 2)])
    # A partial release needs an operation id so that a retry cannot release twice.
    refusal = await refused(client.release("r1", [("A", "S1", 1)]))
    assert (refusal.code, refusal.reason, fields_of(refusal)) == (
        grpc.StatusCode.INVALID_ARGUMENT, "INVALID_FIELD", ["operation_id"])


async def test_oversized_message_is_refused(start_service: ServiceFactory) -> None:
    _, client = await start_service(max_message_bytes=64 * 1024)
    keys = [("A" * 100, f"S{i}") for i in range(1000)]
    # Refused by gRPC itself, before the service reads it: no reason of the service's.
    assert await told(client.availability(keys)) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "")


async def test_record_events_whose_answer_outgrows_max_message_bytes_says_so_and_applies_the_valid_facts(
        start_service: ServiceFactory) -> None:
    """An invalid fact's answer carries its error, larger than the fact: a call that fits could have an
    answer gRPC cannot send, and the caller got RESOURCE_EXHAUSTED "sent message larger than max" —
    retried as it was, for ever, never told which facts were invalid or applied."""
    _, client = await stocked(start_service, max_message_bytes=64 * 1024)
    no_time = [pb.Fact(event_id=f"{n:080d}", source="wms", kind=pb.FACT_KIND_RECEIPT, sku="A", location="S1",
                       quantity=1) for n in range(400)]  # each refused: event_time missing
    request = pb.RecordEventsRequest(events=[receipt("valid-1", "B", "S1", 3), *no_time])
    assert request.ByteSize() < 64 * 1024
    refusal = await refused(client.stub.RecordEvents(request))
    assert (refusal.code, refusal.reason, refusal.metadata.get("limit")) == (
        grpc.StatusCode.UNAVAILABLE, "OUTCOME_UNKNOWN", "max_message_bytes")
    (b,) = await client.availability([("B", "S1")])
    assert b.on_hand == 5 + 3  # the valid fact was applied
    results = await client.record_events([receipt("valid-1", "B", "S1", 3), *no_time[:100]])  # smaller: answered
    assert results[0].outcome == pb.FACT_OUTCOME_DUPLICATE
    assert {r.outcome for r in results[1:]} == {pb.FACT_OUTCOME_INVALID}


async def test_record_events_reports_each_fact(start_service: ServiceFactory) -> None:
    _, client = await stocked(start_service)
    results = await client.record_events([
        receipt("e1", "A", "S1", 10),  # duplicate of the seed
        receipt("e9", "A", "S1", 0),  # invalid quantity
        receipt("c1", "A", "S1", 4, kind=pb.FACT_KIND_COUNT),
        receipt("f1", "A", "S1", 1, t=T0 + 3_600_000),  # beyond future skew (E7)
        pb.Fact(event_id="s1", source="pos", kind=pb.FACT_KIND_SALE, sku="A", location="S1", quantity=1,
                event_time=timestamp(T0)),
    ])
    outcomes = [r.outcome for r in results]
    assert outcomes == [pb.FACT_OUTCOME_DUPLICATE, pb.FACT_OUTCOME_INVALID, pb.FACT_OUTCOME_APPLIED,
                        pb.FACT_OUTCOME_INVALID, pb.FACT_OUTCOME_APPLIED]
    for n, field in ((1, "events[1].quantity"), (3, "events[3].event_time")):
        refusal = Refusal.from_status(results[n].error)
        assert (refusal.reason, [v.field for v in refusal.field_violations]) == ("INVALID_FIELD", [field])
    (a,) = await client.availability([("A", "S1")])
    assert a.on_hand == 3


def decisions(service: AtpService) -> dict[str, float]:
    return {outcome: service.metrics.registry.get_sample_value("atp_reservations_total", {"outcome": outcome}) or 0.0
            for outcome in ("held", "rejected")}


async def test_reserve_stream_tags_each_result(start_service: ServiceFactory) -> None:
    service, client = await stocked(start_service)
    assert service.engine is not None and service.engine.place("A") != service.engine.place("D")  # x2 spans shards
    before = decisions(service)
    batches = [
        [pb.ReserveRequest(reservation_id=f"s{i}", lines=[pb.Line(sku="D", location="DC", quantity=1)])
         for i in range(50)],
        [pb.ReserveRequest(reservation_id="bad", lines=[]),
         pb.ReserveRequest(reservation_id="x1", lines=[pb.Line(sku="A", location="S1", quantity=11)]),
         pb.ReserveRequest(reservation_id="x2", lines=[pb.Line(sku="A", location="S1", quantity=1),
                                                      pb.Line(sku="D", location="DC", quantity=1)])],
    ]
    results = [r async for r in client.reserve_stream(batches)]
    assert len(results) == 2
    assert [o.reservation_id for o in results[0].outcomes] == [f"s{i}" for i in range(50)]
    assert all(o.response.state == pb.RESERVATION_STATE_HELD for o in results[0].outcomes)
    bad, x1, x2 = results[1].outcomes
    refusal = Refusal.from_status(bad.error)
    assert (refusal.code, refusal.reason, [v.field for v in refusal.field_violations]) == (
        grpc.StatusCode.INVALID_ARGUMENT, "INVALID_FIELD", ["lines"])
    assert x1.WhichOneof("result") == "response" and x1.response.state == pb.RESERVATION_STATE_REJECTED
    assert x2.WhichOneof("result") == "response" and x2.response.state == pb.RESERVATION_STATE_HELD
    (c,) = await client.availability([("D", "DC")])
    assert c.reserved == 51
    after = decisions(service)  # each decision counted once, the cross-shard one too
    assert {k: after[k] - before[k] for k in after} == {"held": 51, "rejected": 1}


async def test_health_and_reflection(start_service: ServiceFactory) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    _, client = await start_service()
    health = health_pb2_grpc.HealthStub(client.channel)
    resp = await health.Check(health_pb2.HealthCheckRequest(service="atp.v1.AvailabilityService"))
    assert resp.status == health_pb2.HealthCheckResponse.SERVING
    stub = reflection_pb2_grpc.ServerReflectionStub(client.channel)

    async def ask():  # type: ignore[no-untyped-def]
        yield reflection_pb2.ServerReflectionRequest(list_services="")

    names = [s.name async for r in stub.ServerReflectionInfo(ask()) for s in r.list_services_response.service]
    assert "atp.v1.AvailabilityService" in names


async def test_resolved_reservations_are_forgotten_after_retention(start_service: ServiceFactory) -> None:
    """Bounded R5 memory: a resolved reservation is kept for replays for retention_ms, then forgotten,
    even when no hold is due to expire."""
    from reservation import Limits

    clock = ManualClock(T0)
    _, client = await stocked(start_service, clock=clock, limits=Limits(retention_ms=60_000))
    await client.reserve("r1", [("A", "S1", 1)])
    await client.release("r1")
    assert (await client.get_reservation("r1")).state == pb.RESERVATION_STATE_RELEASED
    clock.advance(60_001)
    for _ in range(1500):  # 30 s: a bound, not a timing
        try:
            await client.get_reservation("r1")
        except grpc.aio.AioRpcError as exc:
            assert exc.code() == grpc.StatusCode.NOT_FOUND
            break
        await asyncio.sleep(0.02)
    else:
        raise AssertionError("r1 was never forgotten")


async def test_hold_across_two_shards_expires_on_both(start_service: ServiceFactory) -> None:
    clock = ManualClock(T0)
    service, client = await stocked(start_service, clock=clock)
    assert service.engine is not None and service.engine.place("A") != service.engine.place("D")
    await client.reserve("x", [("A", "S1", 2), ("D", "DC", 5)], ttl_seconds=10)
    clock.advance(10_000)
    for _ in range(1500):  # 30 s: a bound, not a timing
        if (await client.get_reservation("x")).state == pb.RESERVATION_STATE_EXPIRED:
            break
        await asyncio.sleep(0.02)
    assert (await client.get_reservation("x")).state == pb.RESERVATION_STATE_EXPIRED
    assert [p.reserved for p in await client.availability([("A", "S1"), ("D", "DC")])] == [0, 0]


async def test_shipment_fact_fulfils_a_reservation_homed_on_another_shard(start_service: ServiceFactory) -> None:
    clock = ManualClock(T0)
    service, client = await stocked(start_service, clock=clock)
    assert service.engine is not None
    await client.reserve("x", [("A", "S1", 2), ("D", "DC", 5)])
    await client.confirm("x")
    home = service.engine.home_of("x")
    assert home is not None and home != service.engine.place("A")  # the record lives with "D"
    (result,) = await client.record_events([pb.Fact(
        event_id="ship-a", source="wms", kind=pb.FACT_KIND_SHIPMENT, sku="A", location="S1", quantity=2,
        event_time=timestamp(T0 - 1), reservation_id="x")])
    assert result.outcome == pb.FACT_OUTCOME_APPLIED and not result.HasField("error")
    rec = await client.get_reservation("x")
    assert [(ln.committed, ln.fulfilled) for ln in rec.lines] == [(0, 2), (5, 0)]
    (a,) = await client.availability([("A", "S1")])
    assert (a.on_hand, a.committed) == (8, 0)


async def test_error_details_decode_from_the_raw_trailer_as_any_grpc_client_would(
        start_service: ServiceFactory) -> None:
    """No Python helper: the grpc-status-details-bin trailer is a serialized google.rpc.Status whose
    details are Any messages named by type URL — what Java's StatusProto or Go's status package read."""
    _, client = await stocked(start_service)
    call = client.channel.unary_unary("/atp.v1.AvailabilityService/Reserve")
    body = pb.ReserveRequest(reservation_id="raw", lines=[pb.Line(sku="A", location="S1", quantity=0)])
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call(body.SerializeToString())
    trailers = dict(err.value.trailing_metadata() or ())
    raw = trailers["grpc-status-details-bin"]
    assert isinstance(raw, bytes)
    status = status_pb2.Status.FromString(raw)
    assert (status.code, status.message) == (3, "lines[0].quantity: must be positive, got 0")
    details = {d.type_url: d.value for d in status.details}
    info = error_details_pb2.ErrorInfo.FromString(details["type.googleapis.com/google.rpc.ErrorInfo"])
    bad = error_details_pb2.BadRequest.FromString(details["type.googleapis.com/google.rpc.BadRequest"])
    assert (info.reason, info.domain) == ("INVALID_FIELD", "atp.v1")
    assert [v.field for v in bad.field_violations] == ["lines[0].quantity"]
    assert set(details) == {"type.googleapis.com/google.rpc.ErrorInfo", "type.googleapis.com/google.rpc.BadRequest"}


async def test_a_batch_over_the_limit_ends_the_stream_naming_the_limit(start_service: ServiceFactory) -> None:
    _, client = await stocked(start_service, limits=Limits(max_batch_reservations=3))
    line = [pb.Line(sku="D", location="DC", quantity=1)]
    batches = [[pb.ReserveRequest(reservation_id="b1", lines=line)],
               [pb.ReserveRequest(reservation_id=f"big{i}", lines=line) for i in range(4)],
               [pb.ReserveRequest(reservation_id="after", lines=line)]]
    answered = []
    with pytest.raises(grpc.aio.AioRpcError) as err:
        async for result in client.reserve_stream(batches):
            answered.append(result)
    said = typed(err.value).refusal
    assert (said.code, said.reason, said.metadata, fields_of(said)) == (
        grpc.StatusCode.INVALID_ARGUMENT, "LIMIT_EXCEEDED", {"limit": "max_batch_reservations"}, ["reservations"])
    assert [o.reservation_id for r in answered for o in r.outcomes] == ["b1"]  # the batch before it is answered
    assert await told(client.get_reservation("big0")) == (grpc.StatusCode.NOT_FOUND, "RESERVATION_NOT_FOUND")
    # Nor is the batch sent after it applied: its caller was told the stream ended, not of it.
    assert await told(client.get_reservation("after")) == (grpc.StatusCode.NOT_FOUND, "RESERVATION_NOT_FOUND")


async def test_a_batch_of_no_reservations_ends_the_stream_naming_the_field(start_service: ServiceFactory) -> None:
    """A ``ReserveStream`` batch of no reservations is a caller's bug (a filter that dropped every order), as a
    ``RecordEvents`` of no facts is: it was answered with an empty answer, a feed sending nothing looking healthy.
    It ends the stream ``INVALID_FIELD`` naming ``reservations``, as a batch past the limit ends it, once the batches
    before it are answered; nothing after it is read."""
    _, client = await stocked(start_service)
    line = [pb.Line(sku="D", location="DC", quantity=1)]

    async def batches() -> AsyncIterator[pb.ReserveStreamRequest]:
        yield pb.ReserveStreamRequest(reservations=[pb.ReserveRequest(reservation_id="b1", lines=line)])
        yield pb.ReserveStreamRequest()

    call = client.stub.ReserveStream(batches())
    answered = []
    with pytest.raises(grpc.aio.AioRpcError) as err:
        async for result in call:
            answered.append(result)
    said = typed(err.value).refusal
    assert (said.code, said.reason, fields_of(said)) == (
        grpc.StatusCode.INVALID_ARGUMENT, "INVALID_FIELD", ["reservations"]), said
    assert [[o.reservation_id for o in r.outcomes] for r in answered] == [["b1"]]  # the batch before it: answered
    (d,) = await client.availability([("D", "DC")])
    assert d.reserved == 1


async def test_event_times_with_impossible_nanos_are_refused(start_service: ServiceFactory) -> None:
    _, client = await stocked(start_service)
    bad = Timestamp(seconds=T0 // 1000, nanos=-999_999_999)  # a binary client can send it; it means nothing
    (result,) = await client.record_events([pb.Fact(event_id="n1", source="pos", kind=pb.FACT_KIND_RECEIPT, sku="A",
                                                    location="S1", quantity=1, event_time=bad)])
    refusal = Refusal.from_status(result.error)
    assert (result.outcome, refusal.reason, fields_of(refusal)) == (
        pb.FACT_OUTCOME_INVALID, "INVALID_FIELD", ["events[0].event_time"])
