"""atpctl's answers: numbers as numbers, a table for people, JSON for programs."""

from __future__ import annotations

import io
import json

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from atp_client import timestamp
from atp_client._output import EXIT_CONFLICT, EXIT_INVALID, EXIT_UNAVAILABLE, emit, in_doubt_after, plain, refusal
from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_service.edge.errors import trailers_of
from reservation import FailedPrecondition, InvalidArgument, ResourceExhausted


def test_int64_fields_are_numbers_at_every_depth_and_times_stay_readable() -> None:
    rec = pb.Reservation(reservation_id="r", state=pb.RESERVATION_STATE_HELD, create_time=timestamp(1_700_000_000_000),
                         lines=[pb.LineState(sku="A", location="L", held=3, committed=2**40)])
    data = plain(rec)
    assert data["lines"][0]["held"] == 3 and data["lines"][0]["committed"] == 2**40  # proto JSON: "3"
    assert data["lines"][0]["fulfilled"] == 0  # unset numbers are shown too
    assert data["state"] == "RESERVATION_STATE_HELD" and data["create_time"] == "2023-11-14T22:13:20Z"
    assert json.loads(json.dumps(data)) == data


def test_a_table_for_people() -> None:
    rows = [plain(pb.Availability(sku="A", location="dc-east", on_hand=10, available=7)),
            plain(pb.Availability(sku="B", location="s1", on_hand=1200))]
    out = io.StringIO()
    emit(rows, as_json=False, out=out)
    header, first, second = out.getvalue().splitlines()
    assert header.split() == ["sku", "location", "on_hand", "reserved", "committed", "safety_stock", "available"]
    assert first.split() == ["A", "dc-east", "10", "0", "0", "0", "7"]
    assert second.split() == ["B", "s1", "1200", "0", "0", "0", "0"]
    out = io.StringIO()
    emit(plain(pb.Reservation(reservation_id="r", lines=[pb.LineState(sku="A", location="L", held=1)])), False, out)
    assert out.getvalue().startswith("reservation_id  r\n") and "\nlines:\nsku  location  held" in out.getvalue()


class _Refused(grpc.aio.AioRpcError):
    def __init__(self, code: grpc.StatusCode, error: object) -> None:
        super().__init__(code, grpc.aio.Metadata(), grpc.aio.Metadata(*trailers_of(error)),  # type: ignore[arg-type]
                         str(error), None)


def test_each_class_of_refusal_has_its_exit_status_and_names_its_reason() -> None:
    bad = InvalidArgument("lines[0].quantity", "must be positive")
    code, line = refusal(_Refused(grpc.StatusCode.INVALID_ARGUMENT, bad))
    assert (code, line) == (EXIT_INVALID, "atpctl: INVALID_ARGUMENT INVALID_FIELD: lines[0].quantity: must be positive")
    expired = FailedPrecondition("EXPIRED", "only a HELD reservation can be confirmed", "r1")
    assert refusal(_Refused(grpc.StatusCode.FAILED_PRECONDITION, expired))[0] == EXIT_CONFLICT
    assert refusal(_Refused(grpc.StatusCode.RESOURCE_EXHAUSTED, ResourceExhausted("shard 1: full")))[0] \
        == EXIT_UNAVAILABLE


def _error(code: grpc.StatusCode, details: str, reason: str = "") -> grpc.aio.AioRpcError:
    trailers = grpc.aio.Metadata()
    if reason:
        status = status_pb2.Status(code=code.value[0], message=details)
        status.details.add().Pack(error_details_pb2.ErrorInfo(reason=reason, domain="atp.v1"))
        trailers = grpc.aio.Metadata(("grpc-status-details-bin", status.SerializeToString()))
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), trailers, details, "")


@pytest.mark.parametrize(("error", "retried", "doubt"), [
    (_error(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded"), False, True),  # sent, then no answer in time
    (_error(grpc.StatusCode.UNAVAILABLE, "Socket closed"), False, True),  # the connection lost mid-call
    (_error(grpc.StatusCode.UNAVAILABLE, "not durable", "OUTCOME_UNKNOWN"), False, True),
    (_error(grpc.StatusCode.UNAVAILABLE, "recovering", "RECOVERING"), False, False),  # the service refused it
    (_error(grpc.StatusCode.UNAVAILABLE, "cannot reach", "NOT_CONNECTED"), False, False),  # never sent
    (_error(grpc.StatusCode.INVALID_ARGUMENT, "bad", "INVALID_FIELD"), False, False),
    # gRPC's retries on: the last try's refusal may hide an earlier try lost mid-way (applied or not)
    (_error(grpc.StatusCode.UNAVAILABLE, "recovering", "RECOVERING"), True, True),
    (_error(grpc.StatusCode.RESOURCE_EXHAUSTED, "busy", "SHARD_OVERLOADED"), True, True),
    (_error(grpc.StatusCode.UNAVAILABLE, "cannot reach", "NOT_CONNECTED"), True, False),  # before any try
    (_error(grpc.StatusCode.INVALID_ARGUMENT, "bad", "INVALID_FIELD"), True, False),  # not retried: decided
])
def test_a_refused_change_is_in_doubt_only_where_it_may_have_been_made(error: grpc.aio.AioRpcError, retried: bool,
                                                                       doubt: bool) -> None:
    assert in_doubt_after(error, retried) is doubt
