"""The one table from a refusal's reason to what the caller is told: a gRPC status code, and the
``google.rpc.Status`` details of AIP-193 in ``grpc-status-details-bin``:

- ``ErrorInfo``: ``reason`` (the ``reservation.Reason`` name, stable and machine-readable),
  ``domain`` and the refusal's ``metadata``;
- ``BadRequest``: a field violation per field named, for INVALID_ARGUMENT;
- ``PreconditionFailure``: the reservation's current state, for a lifecycle conflict;
- ``RetryInfo``: how long to wait, for the refusals worth retrying (RESOURCE_EXHAUSTED,
  UNAVAILABLE), also as ``grpc-retry-pushback-ms`` so gRPC's own retry policy waits as long.

A ``GROUP_MOVED`` refusal (``Moved``) also carries ``atp-moved: "<group> <owner address>"``: where a
caller that routes by itself sends the call instead.

The message stays the human text of the refusal.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from typing import Any, NoReturn

import grpc
from google.protobuf.duration_pb2 import Duration
from google.rpc import error_details_pb2, status_pb2

from atp_client import MOVED_KEY, Refusal
from atp_service.edge.calls import current
from reservation import GIVEN_UP, DomainError, FailedPrecondition, Moved, Reason

DOMAIN = "atp.v1"
"""``ErrorInfo.domain``: the API the reasons belong to."""

S = grpc.StatusCode
STATUS: dict[Reason, tuple[grpc.StatusCode, int | None]] = {
    Reason.TOKEN_MISSING: (S.UNAUTHENTICATED, None),
    Reason.TOKEN_INVALID: (S.UNAUTHENTICATED, None),
    Reason.ROLE_NOT_PERMITTED: (S.PERMISSION_DENIED, None),
    Reason.REQUEST_MALFORMED: (S.INVALID_ARGUMENT, None),
    Reason.INVALID_FIELD: (S.INVALID_ARGUMENT, None),
    Reason.LIMIT_EXCEEDED: (S.INVALID_ARGUMENT, None),
    Reason.RESERVATION_ID_REUSED: (S.ALREADY_EXISTS, None),
    Reason.OPERATION_ID_REUSED: (S.ALREADY_EXISTS, None),
    Reason.RESERVATION_NOT_FOUND: (S.NOT_FOUND, None),
    Reason.CHANNEL_NOT_FOUND: (S.NOT_FOUND, None),
    Reason.RESERVATION_EXPIRED: (S.FAILED_PRECONDITION, None),
    Reason.RESERVATION_REJECTED: (S.FAILED_PRECONDITION, None),
    Reason.RESERVATION_RELEASED: (S.FAILED_PRECONDITION, None),
    Reason.RESERVATION_FULFILLED: (S.FAILED_PRECONDITION, None),
    Reason.RESERVATION_NOT_CONFIRMED: (S.FAILED_PRECONDITION, None),
    Reason.OPERATION_LIMIT_REACHED: (S.FAILED_PRECONDITION, None),
    Reason.ESTATE_UNUSABLE: (S.FAILED_PRECONDITION, None),
    Reason.SHARD_OVERLOADED: (S.RESOURCE_EXHAUSTED, 100),
    Reason.SERVICE_OVERLOADED: (S.RESOURCE_EXHAUSTED, 250),
    Reason.CAPACITY_REACHED: (S.RESOURCE_EXHAUSTED, 1000),
    Reason.OUTCOME_UNKNOWN: (S.UNAVAILABLE, 200),
    Reason.STORAGE_UNREACHABLE: (S.UNAVAILABLE, 500),
    Reason.CONCURRENT_CHANGE: (S.UNAVAILABLE, 20),
    Reason.RECOVERING: (S.UNAVAILABLE, 1000),
    Reason.SHUTTING_DOWN: (S.UNAVAILABLE, 250),
    Reason.SHARD_STOPPED: (S.UNAVAILABLE, 1000),
    Reason.INSTANCE_REPLACED: (S.UNAVAILABLE, 100),
    Reason.GROUP_MOVED: (S.UNAVAILABLE, 50),
    Reason.INTERNAL: (S.INTERNAL, None),
}
"""Every reason's status, and the delay (ms) to wait before a retry where a retry is the answer
(RetryInfo): a shed call soon, a full resource or a recovering service after a second."""

NOT_RETRIED_BY_GRPC = frozenset({Reason.OUTCOME_UNKNOWN})
"""Retryable, but by the caller: a change in doubt is learnt by retrying with the same ids, and an
automatic retry's answer (the shard refusing while it settles) would hide that it was in doubt."""

RETRIED_BY_GRPC = frozenset({S.UNAVAILABLE, S.RESOURCE_EXHAUSTED, S.CANCELLED})
"""The statuses the published retry policy has gRPC retry by itself (``atp_client/service_config.json``)."""

DETAILS_KEY = "grpc-status-details-bin"
SERVING_KEY = "atp-serving"
"""With ``GROUP_MOVED`` for a reservation a process does not hold: the groups it answers for now."""
PUSHBACK_KEY = "grpc-retry-pushback-ms"


def status_of(exc: DomainError) -> grpc.StatusCode:
    return STATUS[exc.reason][0]


def retry_delay_ms(exc: DomainError) -> int | None:
    """How long to wait before retrying this refusal: the table's delay, jittered (0.5-1.5x) so
    that callers shed together do not all come back at once. None: do not retry it."""
    base = STATUS[exc.reason][1]
    if base is None or exc.metadata.get(GIVEN_UP):  # an order given up: its id answers the same for good (R5)
        return None
    return max(1, round(base * (0.5 + random.random())))


def carried_status(code: grpc.StatusCode, message: str, trailers: Iterable[tuple[str, Any]]) -> status_pb2.Status:
    """The ``google.rpc.Status`` a refusal from another process carries in ``trailers`` (its reason
    with it), else one of its ``code`` and ``message`` alone (gRPC's own refusal)."""
    given = next((value for key, value in trailers if key == DETAILS_KEY), None)
    if given is None:
        return status_pb2.Status(code=code.value[0], message=message)
    return status_pb2.Status.FromString(given)


def carried_reason(code: grpc.StatusCode, message: str, trailers: Iterable[tuple[str, Any]]) -> str:
    """The reason (``ErrorInfo.reason``) a refusal from another process carries; "" for gRPC's own."""
    return Refusal.from_status(carried_status(code, message, trailers)).reason


def rich_status(exc: DomainError, delay_ms: int | None = None) -> status_pb2.Status:
    """The ``google.rpc.Status`` of a refusal, with its details (``delay_ms``: the RetryInfo delay;
    by default a fresh ``retry_delay_ms``)."""
    code = STATUS[exc.reason][0]
    status = status_pb2.Status(code=code.value[0], message=exc.message)
    status.details.add().Pack(error_details_pb2.ErrorInfo(reason=exc.reason.name, domain=DOMAIN,
                                                          metadata=exc.metadata))
    if code is S.INVALID_ARGUMENT and exc.fields:
        problem = getattr(exc, "problem", exc.message)
        status.details.add().Pack(error_details_pb2.BadRequest(field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field=field, description=problem, reason=exc.reason.name)
            for field in exc.fields]))
    if isinstance(exc, FailedPrecondition):
        status.details.add().Pack(error_details_pb2.PreconditionFailure(violations=[
            error_details_pb2.PreconditionFailure.Violation(type=f"STATE_{exc.state}", subject=exc.subject,
                                                            description=exc.message)]))
    delay_ms = retry_delay_ms(exc) if delay_ms is None else delay_ms
    if delay_ms is not None:
        delay = Duration()
        delay.FromMilliseconds(delay_ms)
        status.details.add().Pack(error_details_pb2.RetryInfo(retry_delay=delay))
    return status


def trailers_of(exc: DomainError, remaining_s: float | None = None) -> tuple[tuple[str, Any], ...]:
    """The trailing metadata carrying a refusal's details, and gRPC's retry pushback: the RetryInfo
    delay, or -1 (gRPC does not retry) where an automatic retry would mislead — an outcome in
    doubt (the last try's answer would hide it: the caller must learn it with the same ids) or a
    delay longer than the call has left (the caller would get a bare DEADLINE_EXCEEDED)."""
    delay_ms = retry_delay_ms(exc)
    out: tuple[tuple[str, Any], ...] = ((DETAILS_KEY, rich_status(exc, delay_ms).SerializeToString()),)
    if exc.metadata.get(GIVEN_UP) and STATUS[exc.reason][0] in RETRIED_BY_GRPC:
        out += ((PUSHBACK_KEY, "-1"),)  # gRPC's own retry of it would be answered the same
    elif delay_ms is not None:
        late = remaining_s is not None and delay_ms / 1000 >= remaining_s
        out += ((PUSHBACK_KEY, "-1" if late or exc.reason in NOT_RETRIED_BY_GRPC else str(delay_ms)),)
    if isinstance(exc, Moved):
        out += ((MOVED_KEY, f"{exc.group} {exc.owner}"),)
        if exc.group < 0:
            out += ((SERVING_KEY, ",".join(map(str, exc.serving))),)
    return out


def retold(refusal: DomainError, message: str, metadata: dict[str, str]) -> DomainError:
    """A copy of this process's ``refusal`` told with ``message`` and more ``ErrorInfo`` metadata (its status
    and reason kept): a call refused after some of its parts were made says which. A copy: a shard answers
    every message waiting behind a doubt with one exception (``refuse_all``), so other calls may hold this
    one and must not read this call's parts."""
    told = type(refusal).__new__(type(refusal))  # not copy.copy: Moved and its kind take other arguments
    told.__dict__.update(refusal.__dict__)
    told.message = message
    told.args = (message,)
    told.metadata = {**refusal.metadata, **metadata}
    return told


def retold_trailers(code: grpc.StatusCode, details: str, trailers: Iterable[tuple[str, Any]], message: str,
                    metadata: dict[str, str]) -> tuple[tuple[str, Any], ...]:
    """The trailing metadata of a refusal relayed from another process (``code``, ``details``, ``trailers``)
    told again with ``message`` and more ``ErrorInfo`` metadata (``retold``'s, for a refusal of another process)."""
    status = carried_status(code, details, trailers)
    status.message = message
    infos = [detail for detail in status.details if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR)]
    if not infos:  # gRPC's own refusal (the owner not reached): no reason to give, the metadata still told
        infos = [status.details.add()]
        infos[0].Pack(error_details_pb2.ErrorInfo(domain=DOMAIN))
    for detail in infos:
        info = error_details_pb2.ErrorInfo()
        detail.Unpack(info)
        info.metadata.update(metadata)
        detail.Pack(info)
    kept = [(key, value) for key, value in trailers if key != DETAILS_KEY]
    return (*kept, (DETAILS_KEY, status.SerializeToString()))


async def abort(context: grpc.aio.ServicerContext[Any, Any], exc: DomainError) -> NoReturn:
    """End the call with the refusal's status, message and details: what is left of it is gRPC's write of them."""
    if (call := current()) is not None:
        call.write_begun()
    await context.abort(status_of(exc), exc.message, trailers_of(exc, context.time_remaining()))
    raise AssertionError("unreachable: grpc.aio's abort raises")
