"""Every answer the service sends fits ``max_message_bytes`` (gRPC refuses to send a larger one:
RESOURCE_EXHAUSTED "Sent message larger than max", no reason, an ERROR in the log, and the same
again at every retry), or the call is refused with a reason naming the limit - before anything
is applied where the answer's size is known in advance (Reserve), else saying what was done (R7).
Against the real gRPC server and a real Redis, at the smallest ``max_message_bytes`` accepted."""

from __future__ import annotations

from pathlib import Path

import grpc

from atp_client import Refusal
from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_service import ManualClock
from atp_service.edge.convert import ECHO_CHARS, echoed_id
from reservation import Limits
from tests.atp_service.edge.test_api import T0, receipt
from tests.atp_service.refusals import fields_of, refused, told
from tests.conftest import ServiceFactory

SMALLEST = 64 << 10
"""The lowest ``max_message_bytes`` accepted."""
LONG = "x" * 120
"""With a few characters more: an id of the default ``max_id_length`` (128 bytes)."""
MEMBERS = 600
"""Stores of one group, each with a long id: a line naming the group split over all of them."""


async def stock(client: object, facts: list[pb.Fact]) -> None:
    for start in range(0, len(facts), 100):  # each call well within the smallest message
        results = await client.record_events(facts[start:start + 100])  # type: ignore[attr-defined]
        assert {r.outcome for r in results} == {pb.FACT_OUTCOME_APPLIED}


async def test_a_reserve_of_max_lines_with_long_ids_is_refused_before_it_is_decided(
        start_service: ServiceFactory) -> None:
    """200 lines (``max_lines``) of 128-byte ids fit a request of the smallest ``max_message_bytes``, but
    each line is answered with its ids, its numbers and its allocation: the answer outgrew it. The
    units were held and durable, and the caller was told RESOURCE_EXHAUSTED with no reason - not
    that anything had been held (R7); its retry failed the same, for ever."""
    _, client = await start_service(clock=ManualClock(T0), max_message_bytes=SMALLEST)
    skus = [f"{n:03d}{LONG}sku"[:128] for n in range(200)]
    await stock(client, [receipt(f"e{n}", sku, f"S{LONG}"[:128], 5) for n, sku in enumerate(skus)])
    request = pb.ReserveRequest(reservation_id="r-long", lines=[
        pb.Line(sku=sku, location=f"S{LONG}"[:128], quantity=1) for sku in skus])
    assert request.ByteSize() < SMALLEST  # the request fits: only its answer would not

    refusal = await refused(client.stub.Reserve(request, timeout=10))
    assert (refusal.code, refusal.reason, refusal.metadata.get("limit"), fields_of(refusal)) == (
        grpc.StatusCode.INVALID_ARGUMENT, "LIMIT_EXCEEDED", "max_message_bytes", ["lines"])
    assert "max_message_bytes=65536" in refusal.message
    assert await told(client.get_reservation("r-long")) == (grpc.StatusCode.NOT_FOUND, "RESERVATION_NOT_FOUND")
    (held,) = await client.availability([(skus[0], f"S{LONG}"[:128])])
    assert held.reserved == 0  # nothing was held
    answer = await client.stub.Reserve(pb.ReserveRequest(reservation_id="r-half", lines=request.lines[:100]),
                                       timeout=10)
    assert answer.state == pb.RESERVATION_STATE_HELD  # fewer lines: decided and answered


def group_estate(stores: list[str]) -> str:
    listed = ", ".join(f'"{store}"' for store in stores)
    return (f'[[locations]]\nids = [{listed}]\ntype = "store"\n\n[groups]\nall-stores = {{ type = "store" }}\n\n'
            '[[channels]]\nname = "web"\nsells_from = ["all-stores"]\n')


async def test_a_group_line_that_could_split_past_the_answer_is_refused_before_it_is_decided(
        start_service: ServiceFactory, tmp_path: Path) -> None:
    """One line naming a group of 600 stores, each with one unit: its units came from every store,
    one allocation each (and one line each in the reservation Confirm and GetReservation answer)."""
    stores = [f"store-{n:03d}-{LONG}"[:120] for n in range(MEMBERS)]
    estate = tmp_path / "estate.toml"
    estate.write_text(group_estate(stores))
    _, client = await start_service(clock=ManualClock(T0), max_message_bytes=SMALLEST, estate=estate)
    await stock(client, [receipt(f"e{n}", "A", store, 1) for n, store in enumerate(stores)])
    line = pb.Line(sku="A", location="all-stores", quantity=MEMBERS)

    refusal = await refused(client.stub.Reserve(
        pb.ReserveRequest(reservation_id="r-group", channel="web", lines=[line]), timeout=10))
    assert (refusal.code, refusal.reason, refusal.metadata.get("limit"), fields_of(refusal)) == (
        grpc.StatusCode.INVALID_ARGUMENT, "LIMIT_EXCEEDED", "max_message_bytes", ["lines"])
    assert await told(client.get_reservation("r-group")) == (grpc.StatusCode.NOT_FOUND, "RESERVATION_NOT_FOUND")
    stream = client.stub.ReserveStream()  # an item of a batch: refused on its own, the others decided
    await stream.write(pb.ReserveStreamRequest(reservations=[
        pb.ReserveRequest(reservation_id="r-group", channel="web", lines=[line]),
        pb.ReserveRequest(reservation_id="r-small", channel="web", lines=[pb.Line(sku="A", location="all-stores",
                                                                                  quantity=2)])]))
    answer = await stream.read()
    await stream.done_writing()
    too_big, small = answer.outcomes
    assert too_big.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "max_message_bytes" in too_big.error.message
    assert small.response.state == pb.RESERVATION_STATE_HELD
    assert len(small.response.lines[0].allocations) == 2
    assert await told(client.get_reservation("r-group")) == (grpc.StatusCode.NOT_FOUND, "RESERVATION_NOT_FOUND")


async def test_a_reservation_larger_than_a_lowered_limit_is_told_so(start_service: ServiceFactory,
                                                                     tmp_path: Path) -> None:
    """A reservation made under a larger ``max_message_bytes`` outgrows the answers of a service
    restarted with a smaller one: Confirm (a change made, R7: said so) and GetReservation (a read:
    nothing done) name the limit instead of failing RESOURCE_EXHAUSTED with no reason."""
    stores = [f"store-{n:03d}-{LONG}"[:120] for n in range(MEMBERS)]
    estate = tmp_path / "estate.toml"
    estate.write_text(group_estate(stores))
    service, client = await start_service(clock=ManualClock(T0), estate=estate)
    await stock(client, [receipt(f"e{n}", "A", store, 1) for n, store in enumerate(stores)])
    made = await client.reserve("r-group", [("A", "all-stores", MEMBERS)], channel="web")
    assert len(made.lines[0].allocations) == MEMBERS
    await service.stop(grace_s=0.1)
    _, client = await start_service(clock=ManualClock(T0), estate=estate, max_message_bytes=SMALLEST)

    read = await refused(client.stub.GetReservation(pb.GetReservationRequest(reservation_id="r-group"), timeout=10))
    assert (read.code, read.reason, read.metadata.get("limit")) == (
        grpc.StatusCode.INVALID_ARGUMENT, "LIMIT_EXCEEDED", "max_message_bytes")
    confirmed = await refused(client.stub.Confirm(pb.ConfirmRequest(reservation_id="r-group"), timeout=10))
    assert (confirmed.code, confirmed.reason, confirmed.metadata.get("limit")) == (
        grpc.StatusCode.UNAVAILABLE, "OUTCOME_UNKNOWN", "max_message_bytes")
    assert "Confirm" in confirmed.message and "was made" in confirmed.message
    (a,) = await client.availability([("A", stores[0])])
    assert (a.reserved, a.committed) == (0, 1)  # the change landed: the caller is not told it failed


async def test_get_availability_whose_answer_outgrows_the_limit_names_it(start_service: ServiceFactory) -> None:
    """Each position is answered with its numbers: 1000 keys (``max_availability_keys``) of oversold
    positions (negative numbers take ten bytes apiece) outgrew the smallest ``max_message_bytes``."""
    _, client = await start_service(clock=ManualClock(T0), max_message_bytes=SMALLEST)
    keys = [(f"sku-{n:04d}-{LONG}"[:24], f"loc-{n:04d}-{LONG}"[:20]) for n in range(1000)]
    await stock(client, [receipt(f"s{n}", sku, loc, 1, kind=pb.FACT_KIND_SALE) for n, (sku, loc) in enumerate(keys)])
    request = pb.GetAvailabilityRequest(keys=[pb.PositionKey(sku=s, location=loc) for s, loc in keys])
    assert request.ByteSize() < SMALLEST

    refusal = await refused(client.stub.GetAvailability(request, timeout=10))
    assert (refusal.code, refusal.reason, refusal.metadata.get("limit"), fields_of(refusal)) == (
        grpc.StatusCode.INVALID_ARGUMENT, "LIMIT_EXCEEDED", "max_message_bytes", ["keys"])
    half = await client.stub.GetAvailability(pb.GetAvailabilityRequest(keys=request.keys[:500]), timeout=10)
    assert [p.on_hand for p in half.positions] == [-1] * 500


async def test_a_reserve_retried_after_its_group_widened_answers_what_was_decided(
        start_service: ServiceFactory, tmp_path: Path) -> None:
    """R5: the same id with the same content returns the original result. A Reserve decided while its
    group had two stores (its answer two allocations) was retried after a reload widened the group to
    600: the retry was refused LIMIT_EXCEEDED "nothing was decided", as if the units were not held -
    they were, and the caller reserved again under new ids. A new id with those lines is refused."""
    stores = [f"store-{n:03d}-{LONG}"[:120] for n in range(MEMBERS)]
    estate = tmp_path / "estate.toml"
    estate.write_text(group_estate(stores[:2]))
    _, client = await start_service(clock=ManualClock(T0), max_message_bytes=SMALLEST, estate=estate)
    await stock(client, [receipt(f"e{n}", "A", store, MEMBERS // 2) for n, store in enumerate(stores[:2])])
    line = pb.Line(sku="A", location="all-stores", quantity=MEMBERS)
    request = pb.ReserveRequest(reservation_id="r-group", channel="web", lines=[line])
    made = await client.stub.Reserve(request, timeout=10)
    assert made.state == pb.RESERVATION_STATE_HELD and len(made.lines[0].allocations) == 2
    estate.write_text(group_estate(stores))
    await client.stub.ReloadEstate(pb.ReloadEstateRequest(), timeout=10)

    again = await client.stub.Reserve(request, timeout=10)  # its answer: the record's, two allocations
    assert (again.state, again.replayed, list(again.lines)) == (pb.RESERVATION_STATE_HELD, True, list(made.lines))
    stream = client.stub.ReserveStream()  # so is an item of a stream
    await stream.write(pb.ReserveStreamRequest(reservations=[
        request, pb.ReserveRequest(reservation_id="r-new", channel="web", lines=[line])]))
    retried, new = (await stream.read()).outcomes
    await stream.done_writing()
    assert (retried.response.replayed, list(retried.response.lines)) == (True, list(made.lines))
    assert new.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0] and "max_message_bytes" in new.error.message
    refusal = await refused(client.stub.Reserve(pb.ReserveRequest(reservation_id="r-other", channel="web",
                                                                  lines=[line]), timeout=10))
    assert (refusal.reason, fields_of(refusal)) == ("LIMIT_EXCEEDED", ["lines"])


HUGE = "r" * (SMALLEST - 200)
"""An id filling a request of the smallest ``max_message_bytes``: far past ``max_id_length``."""
ECHO = f"{HUGE[:32]}...({len(HUGE)} bytes)"
"""What an answer tags an item of that id with."""


async def test_an_item_whose_id_is_past_max_id_length_is_answered_its_id_cut_short(
        start_service: ServiceFactory) -> None:
    """A ``ReserveStream`` item is answered tagged with its id, and a ``RecordEvents`` fact with its event id. One
    past ``max_id_length``, filling the request, was sent back whole beside its refusal: the answer passed
    ``max_message_bytes``, so the stream ended ``OUTCOME_UNKNOWN`` and the call ``UNAVAILABLE`` - a batch of that
    one item could never be answered. Each is told its own fault, its id cut to a prefix and its length."""
    _, client = await start_service(clock=ManualClock(T0), max_message_bytes=SMALLEST)
    item = pb.ReserveRequest(reservation_id=HUGE, lines=[pb.Line(sku="A", location="S1", quantity=1)])
    assert pb.ReserveStreamRequest(reservations=[item]).ByteSize() < SMALLEST
    stream = client.stub.ReserveStream()
    await stream.write(pb.ReserveStreamRequest(reservations=[item]))
    (outcome,) = (await stream.read()).outcomes
    await stream.done_writing()
    assert await stream.code() == grpc.StatusCode.OK
    told_item = Refusal.from_status(outcome.error)
    assert (outcome.reservation_id, told_item.code, told_item.reason, told_item.metadata.get("limit")) == (
        ECHO, grpc.StatusCode.INVALID_ARGUMENT, "LIMIT_EXCEEDED", "max_id_length")

    (result,) = (await client.stub.RecordEvents(pb.RecordEventsRequest(events=[receipt(HUGE, "A", "S1", 1)]),
                                                timeout=10)).results
    told_fact = Refusal.from_status(result.error)
    assert (result.event_id, result.outcome, told_fact.reason, fields_of(told_fact)) == (
        ECHO, pb.FACT_OUTCOME_INVALID, "LIMIT_EXCEEDED", ["events[0].event_id"])


async def test_a_unary_call_naming_an_id_past_max_id_length_is_refused_without_it(
        start_service: ServiceFactory) -> None:
    """Every unary call naming an id past ``max_id_length`` is refused naming the field, its message not the id."""
    _, client = await start_service(clock=ManualClock(T0), max_message_bytes=SMALLEST)
    line = pb.Line(sku="A", location="S1", quantity=1)
    calls = [client.stub.Reserve(pb.ReserveRequest(reservation_id=HUGE, lines=[line]), timeout=10),
             client.stub.Confirm(pb.ConfirmRequest(reservation_id=HUGE), timeout=10),
             client.stub.Release(pb.ReleaseRequest(reservation_id=HUGE), timeout=10),
             client.stub.Fulfill(pb.FulfillRequest(reservation_id=HUGE), timeout=10),
             client.stub.GetReservation(pb.GetReservationRequest(reservation_id=HUGE), timeout=10),
             client.stub.GetAvailability(pb.GetAvailabilityRequest(keys=[pb.PositionKey(sku=HUGE, location="S1")]),
                                         timeout=10)]
    for call in calls:
        refusal = await refused(call)
        assert (refusal.code, refusal.reason, refusal.metadata.get("limit")) == (
            grpc.StatusCode.INVALID_ARGUMENT, "LIMIT_EXCEEDED", "max_id_length"), refusal
        assert len(refusal.message) < 200 and HUGE[:200] not in refusal.message


def test_an_id_past_max_id_length_is_cut_only_where_that_shortens_it() -> None:
    """At a small ``max_id_length`` an id just past it, cut to ``ECHO_CHARS`` characters and its length, came back
    longer than it was sent: sent whole until cutting shortens it; an id within the limit never cut."""
    small = Limits(max_id_length=8)
    assert echoed_id("r" * 20, small) == "r" * 20
    assert echoed_id("r" * (2 * ECHO_CHARS), small) == "r" * (2 * ECHO_CHARS)
    assert echoed_id("r" * 1000, small) == "r" * ECHO_CHARS + "...(1000 bytes)"
    assert echoed_id("é" * 60, Limits(max_id_length=100)) == "é" * 60  # 120 bytes: past 100, cut no shorter
    assert echoed_id("é" * 64, Limits(max_id_length=128)) == "é" * 64  # within: 128 bytes
