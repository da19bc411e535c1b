"""docs/API.md, Reasons: where faults of several kinds apply to one request, the one told — pair by pair, each
pair made to co-occur for real (a real gRPC server on a real redis-server), not assumed from the numbering.

A shard's queue made full deterministically: the shard paused (as a coordinator holds it) with its one-message
mailbox (``mailbox_size=1``) taken by a read waiting behind the pause; every further call for it is shed."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration

from atp_client import AtpClient
from atp_client.pb.atp.v1 import atp_pb2 as pb
from reservation import Limits
from tests.atp_service.channel_helpers import write_estate
from tests.atp_service.edge.test_api import stocked
from tests.atp_service.edge.test_forward import TOKEN, Pair, forwarded, moved_away, pair
from tests.atp_service.refusals import fields_of, refused
from tests.conftest import ServiceFactory
from tests.waiting import until

__all__ = ["pair"]  # the fixture, used here by name
Stub = Any
LIMITS = Limits(max_live_reservations_per_shard=4, max_ops_per_reservation=1)


def _line(quantity: int = 1) -> pb.Line:
    return pb.Line(sku="A", location="S1", quantity=quantity)


# name -> (the call, the reason told when the shard has room, the reason told while its queue is full)
FULL_SHARD: dict[str, tuple[Callable[[Stub], Awaitable[Any]], str, str]] = {
    "invalid field": (lambda s: s.Confirm(pb.ConfirmRequest(reservation_id="")), "INVALID_FIELD", "INVALID_FIELD"),
    "id past its limit": (lambda s: s.Release(pb.ReleaseRequest(reservation_id="r" * 200)), "LIMIT_EXCEEDED",
                          "LIMIT_EXCEEDED"),
    "unknown id": (lambda s: s.Confirm(pb.ConfirmRequest(reservation_id="never")), "RESERVATION_NOT_FOUND",
                   "RESERVATION_NOT_FOUND"),
    # Decided against the reservation's state, which the shard reads only in its turn: shed first.
    "id reused": (lambda s: s.Reserve(pb.ReserveRequest(reservation_id="r-held", lines=[_line(2)])),
                  "RESERVATION_ID_REUSED", "SHARD_OVERLOADED"),
    "released": (lambda s: s.Confirm(pb.ConfirmRequest(reservation_id="r-released")), "RESERVATION_RELEASED",
                 "SHARD_OVERLOADED"),
}


async def test_a_full_shards_queue_is_told_after_the_requests_own_faults_and_before_its_state(
        start_service: ServiceFactory) -> None:
    """SHARD_OVERLOADED (18) against INVALID_FIELD, LIMIT_EXCEEDED, RESERVATION_NOT_FOUND (an id the process routes
    nowhere), RESERVATION_ID_REUSED (7) and RESERVATION_RELEASED (13). A shard decides a call against its records
    only in its turn, in order, and answers once what it read is durable (R7): a call it has no room for is not
    decided at all — told to retry, and retried it is told its state. docs/API.md said the lowest reason is told,
    7 and 13 before 18: the page says what the service does now."""
    service, client = await stocked(start_service, shards=1, mailbox_size=1, maintenance_interval_ms=3_600_000)
    stub = client.stub
    await client.reserve("r-held", [("A", "S1", 1)])
    await client.reserve("r-released", [("A", "S1", 1)])
    await client.release("r-released")
    at_rest = {name: (await refused(ask(stub))).reason for name, (ask, _, _) in FULL_SHARD.items()}
    assert at_rest == {name: reason for name, (_, reason, _) in FULL_SHARD.items()}
    assert service.engine is not None
    actor = service.engine.actors[0]
    resume = await actor.pause()
    waiting = asyncio.ensure_future(client.get_reservation("r-held"))  # the mailbox's one place taken
    try:
        await until(lambda: len(actor._mailbox) == 1, "a read queued behind the paused shard")
        full = {name: (await refused(ask(stub))).reason for name, (ask, _, _) in FULL_SHARD.items()}
    finally:
        resume.set_result(None)
    assert full == {name: reason for name, (_, _, reason) in FULL_SHARD.items()}
    assert (await waiting).state == pb.RESERVATION_STATE_HELD
    again = {name: (await refused(ask(stub))).reason for name, (ask, _, _) in FULL_SHARD.items()}
    assert again == at_rest  # retried once the shard has room: each its own refusal, nothing of the shed applied
    api = (Path(__file__).parents[3] / "docs" / "API.md").read_text()
    reasons = " ".join(api[api.index("### Reasons"):api.index("<!-- reasons:begin")].split())
    assert "before its state is read" in reasons, "the page does not say a full shard's queue is told first"


async def test_a_change_spanning_shards_waits_for_room_in_a_full_queue_and_is_told_its_state(
        start_service: ServiceFactory) -> None:
    """Only a call for one shard is shed for its full queue: a change spanning shards pauses each of them in turn
    (the coordinator) and waits for room in a full one instead — its other shards held meanwhile — then is decided
    there: a Confirm of a released reservation over two shards is told RESERVATION_RELEASED, and a Reserve reusing
    an id whose record is on another shard RESERVATION_ID_REUSED, never SHARD_OVERLOADED, though a Confirm over the
    full shard alone is. docs/API.md said every call for a full shard is refused before its state."""
    service, client = await stocked(start_service, shards=2, mailbox_size=1, maintenance_interval_ms=3_600_000)
    assert service.engine is not None
    engine, stub = service.engine, client.stub
    assert engine.place("A") != engine.place("D")  # two shards
    await client.reserve("r-both", [("A", "S1", 1), ("D", "DC", 1)])
    await client.release("r-both")
    await client.reserve("r-one", [("A", "S1", 1)])
    await client.release("r-one")
    actor = engine.actors[engine.place("A")]
    resume = await actor.pause()
    waiting = asyncio.ensure_future(client.get_reservation("r-one"))  # the mailbox's one place taken
    try:
        await until(lambda: len(actor._mailbox) == 1, "a read queued behind the paused shard")
        alone = await refused(stub.Confirm(pb.ConfirmRequest(reservation_id="r-one")))
        both = asyncio.ensure_future(refused(stub.Confirm(pb.ConfirmRequest(reservation_id="r-both"))))
        await until(lambda: both.done() or actor._mailbox._putters, "the change waiting for room (or refused)")
        assert not both.done(), both.result()  # waits for room: not shed
    finally:
        resume.set_result(None)
    assert alone.reason == "SHARD_OVERLOADED"
    assert (await both).reason == "RESERVATION_RELEASED"
    assert (await waiting).state == pb.RESERVATION_STATE_RELEASED
    await client.reserve("r-dc", [("D", "DC", 1)])  # homed on D's shard: its id reused with a line on A's spans both
    resume = await actor.pause()
    waiting = asyncio.ensure_future(client.get_reservation("r-one"))
    try:
        await until(lambda: len(actor._mailbox) == 1, "a read queued behind the paused shard")
        reused = asyncio.ensure_future(refused(stub.Reserve(pb.ReserveRequest(reservation_id="r-dc", lines=[_line()]))))
        await until(lambda: reused.done() or actor._mailbox._putters, "the Reserve waiting for room (or refused)")
        assert not reused.done(), reused.result()
    finally:
        resume.set_result(None)
    assert (await reused).reason == "RESERVATION_ID_REUSED"
    await waiting
    api = (Path(__file__).parents[3] / "docs" / "API.md").read_text()
    reasons = " ".join(api[api.index("### Reasons"):api.index("<!-- reasons:begin")].split())
    assert "spanning shards waits for room" in reasons, "the page says every call for a full shard is shed"


async def test_a_reused_id_is_told_before_a_full_shard_and_an_operation_id_before_its_limit(
        start_service: ServiceFactory) -> None:
    """CAPACITY_REACHED (20) against RESERVATION_ID_REUSED (7): a retry with other content to a shard at its bound
    of live reservations is told what differs (R5); a retry with the same content its original answer; a new id
    the bound. OPERATION_LIMIT_REACHED (16) against OPERATION_ID_REUSED (8): an id used with other lines is told
    so though the reservation has had all the partial operations it may."""
    _, client = await stocked(start_service, shards=1, limits=LIMITS)
    stub = client.stub
    for n in range(LIMITS.max_live_reservations_per_shard):
        await client.reserve(f"r{n}", [("A", "S1", 2)])
    said = await refused(stub.Reserve(pb.ReserveRequest(reservation_id="r0", lines=[_line(3)])))
    assert (said.code, said.reason, said.metadata.get("field")) == (
        grpc.StatusCode.ALREADY_EXISTS, "RESERVATION_ID_REUSED", "lines")
    assert (await client.reserve("r0", [("A", "S1", 2)])).state == pb.RESERVATION_STATE_HELD  # R5: its retry
    said = await refused(stub.Reserve(pb.ReserveRequest(reservation_id="r-new", lines=[_line()])))
    assert (said.reason, said.metadata.get("limit")) == ("CAPACITY_REACHED", "max_live_reservations_per_shard")
    await client.release("r1", [("A", "S1", 1)], operation_id="op-1")  # the one partial operation r1 may have
    said = await refused(stub.Release(pb.ReleaseRequest(reservation_id="r1", lines=[_line()], operation_id="op-2")))
    assert (said.reason, said.metadata.get("limit")) == ("OPERATION_LIMIT_REACHED", "max_ops_per_reservation")
    said = await refused(stub.Release(pb.ReleaseRequest(reservation_id="r1", lines=[_line(2)], operation_id="op-1")))
    assert (said.code, said.reason) == (grpc.StatusCode.ALREADY_EXISTS, "OPERATION_ID_REUSED")
    said = await refused(stub.Fulfill(pb.FulfillRequest(reservation_id="r1", lines=[_line()], operation_id="op-1")))
    assert said.reason == "OPERATION_ID_REUSED"  # a release's id for a fulfilment (8 before 15 and 16)
    (a,) = await client.availability([("A", "S1")])
    assert a.reserved == 2 * LIMITS.max_live_reservations_per_shard - 1  # only op-1 released anything


async def _watch(stub: Stub, channel: str) -> None:
    async for _ in stub.WatchAvailability(pb.WatchAvailabilityRequest(channel=channel)):
        pass


async def test_a_channel_name_at_fault_is_told_so_not_channel_not_found(start_service: ServiceFactory,
                                                                        tmp_path: Path) -> None:
    """INVALID_FIELD / LIMIT_EXCEEDED (5, 6) against CHANNEL_NOT_FOUND (10): no channel has an empty name, one
    with a control character or one past ``max_id_length`` — the name is told at fault, not unknown."""
    _, client = await start_service(estate=write_estate(tmp_path))
    for channel, reason in (("", "INVALID_FIELD"), ("web\x01", "INVALID_FIELD"), ("w" * 200, "LIMIT_EXCEEDED"),
                            ("nowhere", "CHANNEL_NOT_FOUND")):
        said = await refused(_watch(client.stub, channel))
        assert said.reason == reason, (channel, said)
        assert reason == "CHANNEL_NOT_FOUND" or fields_of(said) == ["channel"], said


async def test_a_retry_naming_the_default_ttl_is_the_same_reserve_as_one_leaving_it_unset_R5(
        start_service: ServiceFactory) -> None:
    """R5 compares the TTL as sent (docs/API.md, Idempotency): a TTL left unset repeats one left unset and one
    naming the TTL the reservation was given, either way round; another TTL is told ``ttl`` differs."""
    _, client = await stocked(start_service)
    stub, default = client.stub, Limits().default_ttl_seconds
    for rid, first, retry in (("r-unset", None, default), ("r-named", default, None)):
        asked = [pb.ReserveRequest(reservation_id=rid, lines=[_line()]) for _ in range(2)]
        for request, ttl in zip(asked, (first, retry), strict=True):
            if ttl is not None:
                request.ttl.CopyFrom(Duration(seconds=ttl))
        made = await stub.Reserve(asked[0])
        assert made.state == pb.RESERVATION_STATE_HELD
        again = await stub.Reserve(asked[1])
        assert again.replayed and not made.replayed, rid  # its retry: the original answer
        again.replayed = False
        assert again == made, rid
        other = pb.ReserveRequest(reservation_id=rid, lines=[_line()], ttl=Duration(seconds=default + 1))
        said = await refused(stub.Reserve(other))
        assert (said.reason, said.metadata.get("field")) == ("RESERVATION_ID_REUSED", "ttl"), rid
    (a,) = await client.availability([("A", "S1")])
    assert a.reserved == 2  # one unit each, the retries none


async def test_a_batch_of_no_facts_or_rows_is_refused_naming_the_field_as_a_request_of_no_keys_is(
        start_service: ServiceFactory) -> None:
    """A ``RecordEvents`` of no facts, a ``LoadCounts`` of no rows: a caller's bug (a filter that dropped every fact, a
    file read as empty) that was answered OK, recording nothing — a feed that sent nothing for a day looked healthy.
    Refused ``INVALID_FIELD`` naming ``events`` (a ``LoadCounts``: its row columns), as a ``GetAvailability`` of no
    keys is; nothing written."""
    _, client = await stocked(start_service)
    said = await refused(client.stub.RecordEvents(pb.RecordEventsRequest()))
    assert (said.code, said.reason, fields_of(said)) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_FIELD", ["events"])
    said = await refused(client.stub.LoadCounts(pb.LoadCountsRequest(source="erp", skus=["A"], locations=["S1"])))
    assert (said.code, said.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_FIELD")
    assert fields_of(said) == ["sku_index", "location_index", "on_hand", "as_of"], said
    (a,) = await client.availability([("A", "S1")])
    assert a.on_hand == 10


async def test_a_request_at_fault_is_told_its_fault_not_that_its_group_moved(pair: Pair,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """INVALID_FIELD (5) against GROUP_MOVED (28): a caller routing by itself (``atp-routing: redirect``) that sends a
    request at fault to a process not owning its group is told its fault — sent to the owner, it would be told the
    same — and nothing is forwarded; a request without one is redirected."""
    a, a_address, _, b_address = pair
    for method in ("reserve", "confirm"):
        moved_away(monkeypatch, a, method, b_address)
    redirect = (("atp-routing", "redirect"),)
    async with AtpClient(a_address, token=TOKEN, timeout_s=5) as via_a:
        stub = via_a.stub
        said = await refused(stub.Reserve(pb.ReserveRequest(reservation_id="r1", lines=[_line(0)]), metadata=redirect))
        assert (said.reason, fields_of(said)) == ("INVALID_FIELD", ["lines[0].quantity"])
        said = await refused(stub.Confirm(pb.ConfirmRequest(reservation_id="r\x01"), metadata=redirect))
        assert (said.reason, fields_of(said)) == ("INVALID_FIELD", ["reservation_id"])
        said = await refused(stub.Reserve(pb.ReserveRequest(reservation_id="", lines=[_line()])))  # to be forwarded
        assert (said.reason, fields_of(said)) == ("INVALID_FIELD", ["reservation_id"])
        said = await refused(stub.Reserve(pb.ReserveRequest(reservation_id="r1", lines=[_line()]), metadata=redirect))
        assert (said.reason, said.metadata.get("owner")) == ("GROUP_MOVED", b_address)
    assert forwarded(a, "Reserve", "ok") + forwarded(a, "Reserve", "error") == 0
