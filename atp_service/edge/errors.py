"""The one table from a domain refusal's reason to its gRPC status (reservation.Reason)."""

from __future__ import annotations

import grpc

from reservation import DomainError, Reason

S = grpc.StatusCode
STATUS: dict[Reason, grpc.StatusCode] = {
    Reason.INVALID_FIELD: S.INVALID_ARGUMENT,
    Reason.LIMIT_EXCEEDED: S.INVALID_ARGUMENT,
    Reason.ID_REUSED: S.ALREADY_EXISTS,
    Reason.UNKNOWN_RESERVATION: S.NOT_FOUND,
    Reason.UNKNOWN_CHANNEL: S.NOT_FOUND,
    Reason.WRONG_STATE: S.FAILED_PRECONDITION,
    Reason.ESTATE_UNUSABLE: S.FAILED_PRECONDITION,
    Reason.OVERLOADED: S.RESOURCE_EXHAUSTED,
    Reason.CAPACITY_REACHED: S.RESOURCE_EXHAUSTED,
    Reason.OUTCOME_UNKNOWN: S.UNAVAILABLE,
    Reason.STORAGE_UNREACHABLE: S.UNAVAILABLE,
    Reason.CONCURRENT_CHANGE: S.UNAVAILABLE,
    Reason.RECOVERING: S.UNAVAILABLE,
    Reason.SHUTTING_DOWN: S.UNAVAILABLE,
    Reason.SHARD_STOPPED: S.UNAVAILABLE,
    Reason.REPLACED: S.UNAVAILABLE,
    Reason.INTERNAL: S.INTERNAL,
}
"""Every reason's status. UNAVAILABLE and RESOURCE_EXHAUSTED are the ones to retry (with the same ids)."""


def status_of(exc: DomainError) -> grpc.StatusCode:
    return STATUS[exc.reason]
