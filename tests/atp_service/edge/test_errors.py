"""The closed vocabulary of refusals (reservation.Reason) and the one table of what a caller is told:
status, and google.rpc.Status details (ErrorInfo, BadRequest, PreconditionFailure, RetryInfo)."""

from __future__ import annotations

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from atp_client import Refusal
from atp_service.edge.errors import DOMAIN, STATUS, rich_status, status_of, trailers_of
from reservation import (
    GIVEN_UP,
    AlreadyExists,
    DomainError,
    FailedPrecondition,
    InvalidArgument,
    Limits,
    NotFound,
    Reason,
    ResourceExhausted,
    Unavailable,
    reserve_command,
)

RETRY = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED}


def test_every_reason_has_its_status() -> None:
    assert set(STATUS) == set(Reason)


def test_reasons_are_numbered_in_precedence_order_request_first() -> None:
    order = [STATUS[r][0] for r in sorted(Reason)]
    first_retryable = next(i for i, status in enumerate(order) if status in RETRY)
    assert all(status not in RETRY for status in order[:first_retryable])  # decisions before "retry"
    assert order[0] == grpc.StatusCode.UNAUTHENTICATED and order[-1] == grpc.StatusCode.INTERNAL  # who calls first


def test_exactly_the_retryable_refusals_say_when_to_retry() -> None:
    for reason, (status, delay_ms) in STATUS.items():
        assert (delay_ms is not None) == (status in RETRY), reason
        assert delay_ms is None or 0 < delay_ms <= 1000


@pytest.mark.parametrize(("error", "reason", "status"), [
    (InvalidArgument("lines[0].quantity", "must be positive"), Reason.INVALID_FIELD, "INVALID_ARGUMENT"),
    (AlreadyExists("order_ref", "differs"), Reason.RESERVATION_ID_REUSED, "ALREADY_EXISTS"),
    (AlreadyExists("operation_id", "differs", Reason.OPERATION_ID_REUSED), Reason.OPERATION_ID_REUSED,
     "ALREADY_EXISTS"),
    (NotFound("reservation_id: no reservation 'x'"), Reason.RESERVATION_NOT_FOUND, "NOT_FOUND"),
    (FailedPrecondition("RELEASED", "only a HELD reservation can be confirmed"), Reason.RESERVATION_RELEASED,
     "FAILED_PRECONDITION"),
    (FailedPrecondition("EXPIRED", "only a HELD reservation can be confirmed"), Reason.RESERVATION_EXPIRED,
     "FAILED_PRECONDITION"),
    (FailedPrecondition("HELD", "confirm it first"), Reason.RESERVATION_NOT_CONFIRMED, "FAILED_PRECONDITION"),
    (ResourceExhausted("mailbox full"), Reason.SHARD_OVERLOADED, "RESOURCE_EXHAUSTED"),
    (Unavailable("log storage unreachable"), Reason.STORAGE_UNREACHABLE, "UNAVAILABLE"),
    (Unavailable("in doubt", Reason.OUTCOME_UNKNOWN), Reason.OUTCOME_UNKNOWN, "UNAVAILABLE"),
    (DomainError("a bug"), Reason.INTERNAL, "INTERNAL"),
])
def test_each_refusal_carries_a_reason_and_the_edge_alone_picks_the_status(
        error: DomainError, reason: Reason, status: str) -> None:
    assert error.reason == reason and status_of(error).name == status


def test_a_refusal_names_its_fields_and_a_limit_says_so() -> None:
    with pytest.raises(InvalidArgument) as err:
        reserve_command(reservation_id="r", order_ref="o", channel="web", ttl_seconds=60,
                        lines=[("A", "S", 1)] * 3, allow_partial=False, limits=Limits(max_lines=2))
    assert err.value.reason == Reason.LIMIT_EXCEEDED and err.value.fields == ("lines",)
    assert err.value.metadata == {"limit": "max_lines"}
    with pytest.raises(InvalidArgument) as err:
        reserve_command(reservation_id="r", order_ref="o", channel="web", ttl_seconds=60,
                        lines=[("A", "S", 0)], allow_partial=False, limits=Limits())
    assert err.value.reason == Reason.INVALID_FIELD and err.value.fields == ("lines[0].quantity",)


def _details(status: status_pb2.Status) -> dict[str, object]:
    out: dict[str, object] = {}
    for kind in (error_details_pb2.ErrorInfo, error_details_pb2.BadRequest, error_details_pb2.PreconditionFailure,
                 error_details_pb2.RetryInfo):
        for any_detail in status.details:
            if any_detail.Is(kind.DESCRIPTOR):
                message = kind()
                any_detail.Unpack(message)
                out[kind.__name__] = message
    return out


def test_invalid_input_carries_error_info_and_the_field_violation() -> None:
    status = rich_status(InvalidArgument("lines[2].quantity", "must be positive, got 0"))
    assert status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert status.message == "lines[2].quantity: must be positive, got 0"  # stays human
    details = _details(status)
    info, bad = details["ErrorInfo"], details["BadRequest"]
    assert isinstance(info, error_details_pb2.ErrorInfo) and isinstance(bad, error_details_pb2.BadRequest)
    assert (info.reason, info.domain) == ("INVALID_FIELD", DOMAIN)
    violations = [(v.field, v.description) for v in bad.field_violations]
    assert violations == [("lines[2].quantity", "must be positive, got 0")]
    assert "RetryInfo" not in details and "PreconditionFailure" not in details


def test_a_lifecycle_conflict_names_the_state_and_the_reservation() -> None:
    status = rich_status(FailedPrecondition("EXPIRED", "only a HELD reservation can be confirmed", "r-9"))
    failure = _details(status)["PreconditionFailure"]
    assert isinstance(failure, error_details_pb2.PreconditionFailure)
    assert [(v.type, v.subject) for v in failure.violations] == [("STATE_EXPIRED", "r-9")]
    refusal = Refusal.from_status(status)
    assert (refusal.code, refusal.reason, refusal.state) == (
        grpc.StatusCode.FAILED_PRECONDITION, "RESERVATION_EXPIRED", "EXPIRED")
    assert refusal.metadata == {"state": "EXPIRED"}


def test_shed_load_says_when_to_retry_in_the_details_and_to_grpc_itself() -> None:
    shed = ResourceExhausted("shard 3: mailbox full", metadata={"shard": "3"})
    delays = set()
    for _ in range(50):
        trailers = dict(trailers_of(shed, remaining_s=10))
        refusal = Refusal.from_trailers(grpc.StatusCode.RESOURCE_EXHAUSTED, "", trailers.items())
        assert (refusal.reason, refusal.metadata) == ("SHARD_OVERLOADED", {"shard": "3"})
        assert refusal.retry_delay_s is not None and 0.05 <= refusal.retry_delay_s <= 0.15  # 100 ms, jittered
        assert trailers["grpc-retry-pushback-ms"] == str(round(refusal.retry_delay_s * 1000))  # gRPC waits as long
        delays.add(refusal.retry_delay_s)
    assert len(delays) > 10  # callers shed together do not all come back at once
    assert "grpc-retry-pushback-ms" not in dict(trailers_of(NotFound("no reservation")))


def test_the_refusal_an_order_was_given_up_for_says_no_retry_of_its_id_can_help() -> None:
    """An order spanning groups refused CAPACITY_REACHED (a part's group full) is given up, and a retry of its
    id answers the same refusal for good (R5): told "retry in a second" (RetryInfo, and gRPC's own retry told
    so), a caller following it asked again for hours, until retention forgot the order."""
    given_up = ResourceExhausted("shard 1: full", Reason.CAPACITY_REACHED,
                                 metadata={"limit": "max_live_reservations_per_shard", GIVEN_UP: "true"})
    trailers = dict(trailers_of(given_up, remaining_s=10))
    assert trailers["grpc-retry-pushback-ms"] == "-1"
    refusal = Refusal.from_trailers(grpc.StatusCode.RESOURCE_EXHAUSTED, "", trailers.items())
    assert (refusal.reason, refusal.retry_delay_s, refusal.metadata[GIVEN_UP]) == ("CAPACITY_REACHED", None, "true")
    full = ResourceExhausted("shard 1: full", Reason.CAPACITY_REACHED)  # a one-group Reserve: room may free
    assert Refusal.from_trailers(grpc.StatusCode.RESOURCE_EXHAUSTED, "", trailers_of(full)).retry_delay_s


def test_grpc_does_not_retry_an_outcome_in_doubt_nor_past_the_deadline() -> None:
    """Its last try's answer would hide that the first one may have landed (R7); a wait longer than
    the call has left would end it in a bare DEADLINE_EXCEEDED instead of the reason."""
    doubt = dict(trailers_of(Unavailable("not known to be durable", Reason.OUTCOME_UNKNOWN), remaining_s=10))
    assert doubt["grpc-retry-pushback-ms"] == "-1"
    assert Refusal.from_trailers(grpc.StatusCode.UNAVAILABLE, "", doubt.items()).retry_delay_s is not None
    recovering = Unavailable("recovering", Reason.RECOVERING)  # 1 s, jittered to at least 0.5 s
    assert dict(trailers_of(recovering, remaining_s=0.4))["grpc-retry-pushback-ms"] == "-1"
    assert dict(trailers_of(recovering, remaining_s=30))["grpc-retry-pushback-ms"] != "-1"
