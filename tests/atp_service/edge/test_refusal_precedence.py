"""Reasons are numbered in precedence order (docs/API.md, ``reservation/_errors.py``): where several apply to
one request, the lowest is told — the request itself before the service's own availability. A call whose
request is at fault is told so while the service recovers its state, by every method, not ``RECOVERING``:
retried on that word (by gRPC's own retry policy too) it was refused again, and told its fault only once
the start had finished."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc

from atp_client import AtpClient, Refusal
from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_service import AtpService
from reservation import Limits
from tests.atp_service.app.test_healthcheck import starting_until_logged
from tests.atp_service.channel_helpers import write_estate
from tests.atp_service.edge.test_api import stocked
from tests.atp_service.refusals import fields_of, refused
from tests.conftest import ServiceFactory
from tests.conftest import test_config as make_config
from tests.ports import held_port

Ask = Callable[[AtpClient], Any]
LINE = pb.Line(sku="A", location="S1", quantity=1)
# name -> (the call with its fault, the field named, the reason)
FAULTS: dict[str, tuple[Ask, str, str]] = {
    "release": (lambda c: c.stub.Release(pb.ReleaseRequest(reservation_id="")), "reservation_id", "INVALID_FIELD"),
    "fulfill-lines": (lambda c: c.stub.Fulfill(pb.FulfillRequest(
        reservation_id="r", lines=[pb.Line(sku="A", location="S1", quantity=0)], operation_id="op")),
        "lines[0].quantity", "INVALID_FIELD"),
    "availability": (lambda c: c.stub.GetAvailability(pb.GetAvailabilityRequest()), "keys", "INVALID_FIELD"),
    "availability-keys": (lambda c: c.stub.GetAvailability(pb.GetAvailabilityRequest(
        keys=[pb.PositionKey(sku="A", location="S1")] * 3)), "keys", "LIMIT_EXCEEDED"),
    "record-events": (lambda c: c.stub.RecordEvents(pb.RecordEventsRequest(events=[pb.Fact()] * 3)), "events",
                      "LIMIT_EXCEEDED"),
    "record-events-none": (lambda c: c.stub.RecordEvents(pb.RecordEventsRequest()), "events", "INVALID_FIELD"),
    "load-counts": (lambda c: c.stub.LoadCounts(pb.LoadCountsRequest(source="")), "source", "INVALID_FIELD"),
    "load-counts-none": (lambda c: c.stub.LoadCounts(pb.LoadCountsRequest(source="erp")), "as_of", "INVALID_FIELD"),
    "load-counts-rows": (lambda c: c.stub.LoadCounts(pb.LoadCountsRequest(
        source="erp", as_of=bytes(8 * 3), on_hand=bytes(8 * 3), sku_index=bytes(4 * 3), location_index=bytes(4 * 3))),
        "as_of", "LIMIT_EXCEEDED"),
    "explain": (lambda c: c.stub.ExplainAvailability(pb.ExplainAvailabilityRequest(location="S1")), "sku",
                "INVALID_FIELD"),
    # Those that were told so already: the same order.
    "reserve": (lambda c: c.stub.Reserve(pb.ReserveRequest(reservation_id="", lines=[LINE])), "reservation_id",
                "INVALID_FIELD"),
    "confirm": (lambda c: c.stub.Confirm(pb.ConfirmRequest()), "reservation_id", "INVALID_FIELD"),
    "safety-stock": (lambda c: c.stub.SetSafetyStock(pb.SetSafetyStockRequest(sku="A", location="S1", quantity=-1)),
                     "quantity", "INVALID_FIELD"),
}
LIMITS = Limits(max_availability_keys=2, max_events_per_call=2, max_rows_per_load=2)


async def test_a_request_at_fault_is_told_its_fault_while_the_service_recovers_not_recovering() -> None:
    service = AtpService(make_config(limits=LIMITS), f"redis://127.0.0.1:{held_port()}/0")  # no Redis there
    try:
        async with starting_until_logged(service, "waiting for Redis") as starting:
            assert not starting.done()
            async with AtpClient(f"127.0.0.1:{service.port}") as client:
                said = await refused(client.stub.GetReservation(pb.GetReservationRequest(reservation_id="r")))
                assert (said.code, said.reason) == (grpc.StatusCode.UNAVAILABLE, "RECOVERING")  # recovering indeed
                told = {name: await refused(ask(client)) for name, (ask, _, _) in FAULTS.items()}
        wrong = {name: told[name].reason for name, (_, _, reason) in FAULTS.items() if told[name].reason != reason}
        assert not wrong, wrong
        for name, (_, field, reason) in FAULTS.items():
            refusal = told[name]
            assert (refusal.code, refusal.reason) == (grpc.StatusCode.INVALID_ARGUMENT, reason), (name, refusal)
            assert field in [v.field for v in refusal.field_violations], (name, refusal)
    finally:
        await asyncio.wait_for(service.stop(grace_s=0), timeout=30)



async def test_a_stream_batch_at_fault_is_told_its_fault_while_the_service_recovers_not_recovering() -> None:
    """A ``ReserveStream`` batch of no reservations ends the stream ``INVALID_FIELD`` while the service recovers, as
    after; a batch whose every item is at fault is answered each item's fault, as a ``Reserve`` of it is told (the
    request before the service's availability), where the whole stream ended ``RECOVERING``: retried on that word,
    it was ended again, its items told their faults only once the start had finished. A batch with an item the
    service could decide ends the stream ``RECOVERING``: nothing of it is decided."""
    service = AtpService(make_config(), f"redis://127.0.0.1:{held_port()}/0")  # no Redis there: the start waits
    bad = pb.ReserveRequest(reservation_id="", lines=[LINE])
    good = pb.ReserveRequest(reservation_id="fine", lines=[LINE])

    async def batches(*batch: list[pb.ReserveRequest]) -> AsyncIterator[pb.ReserveStreamRequest]:
        for items in batch:
            yield pb.ReserveStreamRequest(reservations=items)

    try:
        async with starting_until_logged(service, "waiting for Redis") as starting:
            assert not starting.done()
            async with AtpClient(f"127.0.0.1:{service.port}") as client:
                none = await refused(anext(aiter(client.stub.ReserveStream(batches([])))))
                (answer,) = [a async for a in client.stub.ReserveStream(batches([bad, bad]))]
                mixed = await refused(anext(aiter(client.stub.ReserveStream(batches([bad, good])))))
        assert (none.code, none.reason, fields_of(none)) == (
            grpc.StatusCode.INVALID_ARGUMENT, "INVALID_FIELD", ["reservations"]), none
        items = [Refusal.from_status(o.error) for o in answer.outcomes]
        assert [(r.code, r.reason, fields_of(r)) for r in items] == [
            (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_FIELD", ["reservation_id"])] * 2, items
        assert (mixed.code, mixed.reason) == (grpc.StatusCode.UNAVAILABLE, "RECOVERING"), mixed
    finally:
        await asyncio.wait_for(service.stop(grace_s=0), timeout=30)


async def test_an_estate_reload_while_the_service_starts_is_told_recovering_and_retried_not_estate_unusable(
        tmp_path: Path) -> None:
    """A ``ReloadEstate`` (``atpctl estate reload``, an operator's script) sent while the service recovers its
    state: a good file, nothing wrong with it or the call, only too early. It was refused ``FAILED_PRECONDITION``
    ``ESTATE_UNUSABLE`` ("the estate file cannot be used"): a decision, which no retry policy retries and no caller
    tells from a bad file. Now ``UNAVAILABLE`` ``RECOVERING`` with its retry delay, as every other call then."""
    config = make_config(estate=write_estate(tmp_path))
    service = AtpService(config, f"redis://127.0.0.1:{held_port()}/0")  # no Redis there: the start waits
    try:
        async with starting_until_logged(service, "waiting for Redis") as starting:
            assert not starting.done()
            async with AtpClient(f"127.0.0.1:{service.port}") as client:
                said = await refused(client.stub.ReloadEstate(pb.ReloadEstateRequest()))
        assert (said.code, said.reason) == (grpc.StatusCode.UNAVAILABLE, "RECOVERING"), said
        assert said.retry_delay_s is not None
    finally:
        await asyncio.wait_for(service.stop(grace_s=0), timeout=30)


async def test_a_requests_own_faults_are_told_as_its_checks_meet_them_and_state_before_lines_it_checks(
        start_service: ServiceFactory) -> None:
    """docs/API.md, Reasons: the request's own faults are told one at a time, the first its checks meet — a list
    past its limit for its length, its items past the limit not read (the work for a bad request stays bounded), an
    id past ``max_id_length`` for its length whatever its characters; a line checked against the reservation (units
    outstanding, a position it holds) after the reservation's state. Nothing of any of them is applied."""
    _, client = await stocked(start_service)
    stub, line = client.stub, pb.Line(sku="A", location="S1", quantity=1)
    past = [line] * Limits().max_lines + [pb.Line(sku="A", location="S1", quantity=0)]
    said = await refused(stub.Reserve(pb.ReserveRequest(reservation_id="r-faults", lines=past)))
    assert (said.reason, fields_of(said), said.metadata.get("limit")) == ("LIMIT_EXCEEDED", ["lines"], "max_lines")
    said = await refused(stub.Reserve(pb.ReserveRequest(reservation_id="r-faults", lines=past[::-1])))
    assert (said.reason, fields_of(said)) == ("INVALID_FIELD", ["lines[0].quantity"])
    said = await refused(stub.Confirm(pb.ConfirmRequest(reservation_id="\x01" * (Limits().max_id_length + 1))))
    assert (said.reason, fields_of(said)) == ("LIMIT_EXCEEDED", ["reservation_id"])
    said = await refused(stub.GetAvailability(pb.GetAvailabilityRequest(
        keys=[pb.PositionKey(sku="", location="S1")] * (Limits().max_availability_keys + 1))))
    assert (said.reason, fields_of(said)) == ("LIMIT_EXCEEDED", ["keys"])
    said = await refused(stub.GetReservation(pb.GetReservationRequest(reservation_id="r-faults")))
    assert said.reason == "RESERVATION_NOT_FOUND"  # nothing of the refused Reserves was made
    await client.reserve("r-released", [("A", "S1", 2)])
    await client.release("r-released")
    for lines in ([pb.Line(sku="A", location="S1", quantity=9)], [pb.Line(sku="B", location="S1", quantity=1)]):
        request = pb.ReleaseRequest(reservation_id="r-released", operation_id="op", lines=lines)
        said = await refused(stub.Release(request))
        assert (said.code, said.reason, said.state) == (grpc.StatusCode.FAILED_PRECONDITION, "RESERVATION_RELEASED",
                                                        "RELEASED")
    (a,) = await client.availability([("A", "S1")])
    assert (a.on_hand, a.reserved, a.committed) == (10, 0, 0)


async def test_a_call_refused_at_the_door_is_told_so_whatever_its_request_and_the_page_says_so(
        start_service: ServiceFactory) -> None:
    """Two refusals come before the request is read at all: a call beginning while the service stops
    (``SHUTTING_DOWN``) and one shed while its event loop runs late (``SERVICE_OVERLOADED``) — a request at fault is
    told so then, not its fault (lower). docs/API.md said the lowest of all kinds applying is told, the service's
    availability last: an OMS expected ``INVALID_FIELD`` and was told to retry. The page says so now."""
    service, client = await start_service()
    bad = pb.ReserveRequest(reservation_id="", lines=[LINE])
    drain, monitor = service._servicer.drain, service._monitor
    drain.closing = True  # as a stop begun: new calls refused at the door
    try:
        said = await refused(client.stub.Reserve(bad))
    finally:
        drain.closing = False
    assert (said.code, said.reason) == (grpc.StatusCode.UNAVAILABLE, "SHUTTING_DOWN")
    monitor._until = time.monotonic() + 3600  # overloaded, as late wake-ups in a row make it
    try:
        said = await refused(client.stub.Reserve(bad))
    finally:
        monitor._until = 0.0
    assert (said.code, said.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "SERVICE_OVERLOADED")
    said = await refused(client.stub.Reserve(bad))  # retried: its own fault
    assert (said.reason, fields_of(said)) == ("INVALID_FIELD", ["reservation_id"])
    api = (Path(__file__).parents[3] / "docs" / "API.md").read_text()
    reasons = api[api.index("### Reasons"):api.index("<!-- reasons:begin")]
    assert "`SHUTTING_DOWN`" in reasons and "`SERVICE_OVERLOADED`" in reasons, "the door's refusals not told apart"


async def test_a_stream_batch_all_at_fault_whose_answer_is_too_large_is_not_said_decided() -> None:
    """A ``ReserveStream`` batch whose every item is at fault is answered while the service recovers: an answer past
    ``max_message_bytes`` (a refusal per item is larger than an empty item) ends the stream ``OUTCOME_UNKNOWN`` as
    any other (batches read after it may have been decided), but not saying "they were decided": none of its items
    was, and none could be while the service recovers."""
    service = AtpService(make_config(max_message_bytes=64 << 10), f"redis://127.0.0.1:{held_port()}/0")
    empty = [pb.ReserveRequest()] * Limits().max_batch_reservations

    async def batches() -> AsyncIterator[pb.ReserveStreamRequest]:
        yield pb.ReserveStreamRequest(reservations=empty)

    try:
        async with starting_until_logged(service, "waiting for Redis") as starting:
            assert not starting.done()
            async with AtpClient(f"127.0.0.1:{service.port}") as client:
                ended = await refused(anext(aiter(client.stub.ReserveStream(batches()))))
        assert (ended.code, ended.reason, ended.metadata.get("limit")) == (
            grpc.StatusCode.UNAVAILABLE, "OUTCOME_UNKNOWN", "max_message_bytes"), ended
        assert "were decided" not in ended.message and "none of them was decided" in ended.message, ended.message
    finally:
        await asyncio.wait_for(service.stop(grace_s=0), timeout=30)
