"""The closed vocabulary of refusals (reservation.Reason) and the one table of their gRPC status."""

from __future__ import annotations

import grpc
import pytest

from atp_service.edge.errors import STATUS, status_of
from reservation import (
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
    order = [STATUS[r] for r in sorted(Reason)]
    first_retryable = next(i for i, status in enumerate(order) if status in RETRY)
    assert all(status not in RETRY for status in order[:first_retryable])  # decisions before "retry"
    assert order[0] == grpc.StatusCode.INVALID_ARGUMENT and order[-1] == grpc.StatusCode.INTERNAL


@pytest.mark.parametrize(("error", "reason", "status"), [
    (InvalidArgument("lines[0].quantity", "must be positive"), Reason.INVALID_FIELD, "INVALID_ARGUMENT"),
    (AlreadyExists("order_ref", "differs"), Reason.ID_REUSED, "ALREADY_EXISTS"),
    (NotFound("reservation_id: no reservation 'x'"), Reason.UNKNOWN_RESERVATION, "NOT_FOUND"),
    (FailedPrecondition("RELEASED", "only a HELD reservation can be confirmed"), Reason.WRONG_STATE,
     "FAILED_PRECONDITION"),
    (ResourceExhausted("mailbox full"), Reason.OVERLOADED, "RESOURCE_EXHAUSTED"),
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
    with pytest.raises(InvalidArgument) as err:
        reserve_command(reservation_id="r", order_ref="o", channel="web", ttl_seconds=60,
                        lines=[("A", "S", 0)], allow_partial=False, limits=Limits())
    assert err.value.reason == Reason.INVALID_FIELD and err.value.fields == ("lines[0].quantity",)
