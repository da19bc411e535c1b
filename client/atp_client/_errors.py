"""Refusals as typed exceptions, read from the ``google.rpc.Status`` details the service sends.

Every refusal of the service carries, in the ``grpc-status-details-bin`` trailer, a
``google.rpc.Status`` whose details hold an ``ErrorInfo`` (the ``reason``: a stable code such as
``RESERVATION_EXPIRED``), and where they apply a ``BadRequest`` (the fields at fault), a
``PreconditionFailure`` (the reservation's state) and a ``RetryInfo`` (how long to wait). The same
``google.rpc.Status`` describes one refused item of a batch (``ReserveOutcome.error``,
``FactResult.error``). See docs/API.md for the table of reasons.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import grpc
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2

DETAILS_KEY = "grpc-status-details-bin"


@dataclass(frozen=True, slots=True)
class FieldViolation:
    field: str
    """The request field at fault, as a path (``lines[2].quantity``)."""
    description: str


@dataclass(frozen=True, slots=True)
class Refusal:
    """What a ``google.rpc.Status`` says, decoded."""

    code: grpc.StatusCode
    message: str
    reason: str = ""
    """``ErrorInfo.reason``: the machine-readable why (empty when the status carries no ErrorInfo,
    e.g. a refusal by gRPC itself)."""
    metadata: dict[str, str] = field(default_factory=dict)
    field_violations: tuple[FieldViolation, ...] = ()
    state: str = ""
    """For a lifecycle conflict: the reservation's state (``EXPIRED``, ``RELEASED``, ...)."""
    retry_delay_s: float | None = None
    """``RetryInfo``: wait this long before retrying with the same ids (None: do not retry)."""

    @classmethod
    def from_status(cls, status: status_pb2.Status) -> Refusal:
        code = _CODES.get(status.code, grpc.StatusCode.UNKNOWN)
        reason, metadata, violations, state, delay = "", {}, [], "", None
        for detail in status.details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                reason, metadata = info.reason, dict(info.metadata)
            elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad = error_details_pb2.BadRequest()
                detail.Unpack(bad)
                violations = [FieldViolation(v.field, v.description) for v in bad.field_violations]
            elif detail.Is(error_details_pb2.PreconditionFailure.DESCRIPTOR):
                failure = error_details_pb2.PreconditionFailure()
                detail.Unpack(failure)
                state = next((v.type.removeprefix("STATE_") for v in failure.violations), "")
            elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                retry = error_details_pb2.RetryInfo()
                detail.Unpack(retry)
                delay = retry.retry_delay.ToMilliseconds() / 1000
        return cls(code, status.message, reason, metadata, tuple(violations), state, delay)

    @classmethod
    def from_trailers(cls, code: grpc.StatusCode, message: str, trailers: Any) -> Refusal:
        for key, value in trailers or ():
            if key == DETAILS_KEY:
                try:
                    return cls.from_status(status_pb2.Status.FromString(value))
                except (DecodeError, TypeError):  # not a Status (a proxy's, another server's): the code and message
                    break
        return cls(code, message)


_CODES = {code.value[0]: code for code in grpc.StatusCode}


class AtpError(grpc.aio.AioRpcError):
    """A call the service (or gRPC) refused. Still a ``grpc.aio.AioRpcError`` (``code()``,
    ``details()``), with the decoded details in ``refusal`` and its parts as attributes."""

    def __init__(self, error: grpc.aio.AioRpcError) -> None:
        super().__init__(error.code(), error.initial_metadata(), error.trailing_metadata(),  # type: ignore[arg-type]
                         error.details(), error.debug_error_string())
        self.refusal = Refusal.from_trailers(error.code(), error.details() or "", error.trailing_metadata())

    @property
    def reason(self) -> str:
        return self.refusal.reason

    @property
    def field_violations(self) -> tuple[FieldViolation, ...]:
        return self.refusal.field_violations

    @property
    def retry_delay_s(self) -> float | None:
        return self.refusal.retry_delay_s

    def __str__(self) -> str:
        reason = f" {self.reason}" if self.reason else ""
        return f"{self.code().name}{reason}: {self.details()}"


class InvalidRequest(AtpError):
    """INVALID_ARGUMENT: the request is wrong (``field_violations`` says where); do not retry it. Also
    gRPC's own refusal of a request larger than the service's ``max_message_bytes`` (``code()``
    RESOURCE_EXHAUSTED, no reason: ``UNREAD_TOO_LARGE``): never read, nothing applied; send smaller ones."""


class NotFound(AtpError):
    """NOT_FOUND: no such reservation or channel."""


class Conflict(AtpError):
    """ALREADY_EXISTS (an id reused with other content) or FAILED_PRECONDITION (the reservation's
    state does not allow it: ``refusal.state``). Also an order spanning groups given up (``code()``
    RESOURCE_EXHAUSTED, reason ``CAPACITY_REACHED``, metadata ``given_up``: ``GIVEN_UP``): a retry of
    its id answers the same for good; reserve again under a new id."""


class Retryable(AtpError):
    """UNAVAILABLE, RESOURCE_EXHAUSTED, a CANCELLED this client did not cause, DEADLINE_EXCEEDED, or
    a stream grpcio lost (``CORE_LOST_CALL``): nothing was decided that a retry with the same ids
    would not answer (R5). A change refused so may be in doubt (``OUTCOME_UNKNOWN``; a deadline
    passed while it was being made, R7, R8): the retry says what was decided. ``retry_delay_s``
    says when (None: at the caller's pace)."""


class AccessDenied(AtpError):
    """UNAUTHENTICATED or PERMISSION_DENIED."""


_CLASSES: dict[grpc.StatusCode, type[AtpError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidRequest,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.ALREADY_EXISTS: Conflict,
    grpc.StatusCode.FAILED_PRECONDITION: Conflict,
    grpc.StatusCode.UNAVAILABLE: Retryable,
    grpc.StatusCode.RESOURCE_EXHAUSTED: Retryable,
    grpc.StatusCode.CANCELLED: Retryable,
    # A call that ran out of deadline may have been applied (R8): in doubt until a retry with the
    # same ids answers. Never a decision: as a plain failure, an OMS would reserve again (new id).
    grpc.StatusCode.DEADLINE_EXCEEDED: Retryable,
    grpc.StatusCode.UNAUTHENTICATED: AccessDenied,
    grpc.StatusCode.PERMISSION_DENIED: AccessDenied,
}


CORE_LOST_CALL = "Internal error from Core"
"""The details of the INTERNAL that grpcio's asyncio client makes up itself when a write to a stream
fails because the stream is already gone (the server killed or its connection lost), in place of a
status the server never sent (grpc/grpc#36066): no decision of the service, so as retryable as
UNAVAILABLE."""


def _raised_here(code: grpc.StatusCode, message: str, reason: str = "", domain: str = "",
                 metadata: dict[str, str] | None = None) -> Retryable:
    """A refusal this client raises itself, as a call's would read: the status, and an ``ErrorInfo``
    with ``reason`` (none where gRPC's own refusal of that kind carries none)."""
    return Retryable(_status_error(code, message, reason, domain, metadata))


def _status_error(code: grpc.StatusCode, message: str, reason: str, domain: str,
                  metadata: dict[str, str] | None, fields: tuple[FieldViolation, ...] = ()) -> grpc.aio.AioRpcError:
    trailers = grpc.aio.Metadata()
    if reason:
        status = status_pb2.Status(code=code.value[0], message=message)
        status.details.add().Pack(error_details_pb2.ErrorInfo(reason=reason, domain=domain, metadata=metadata or {}))
        if fields:
            status.details.add().Pack(error_details_pb2.BadRequest(field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field=f.field, description=f.description, reason=reason)
                for f in fields]))
        trailers = grpc.aio.Metadata((DETAILS_KEY, status.SerializeToString()))
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), trailers, message, "")


INVALID_FIELD = "INVALID_FIELD"
"""``ErrorInfo.reason`` of a request field at fault: the service's, and this client's where it refuses an
argument before anything is sent (``invalid_field``)."""


def invalid_field(field: str, problem: str) -> InvalidRequest:
    """An argument that cannot make the request's ``field``, or that the service would refuse, refused by this
    client before anything is sent: raised as the service refuses a field at fault (``INVALID_ARGUMENT``,
    ``INVALID_FIELD``, a ``BadRequest`` naming ``field``; message ``field: problem``), domain ``atp.client``."""
    return InvalidRequest(_status_error(grpc.StatusCode.INVALID_ARGUMENT, f"{field}: {problem}; not sent",
                                        INVALID_FIELD, "atp.client", None, (FieldViolation(field, problem),)))


def request_too_large(request: str, size: int, limit: int) -> InvalidRequest:
    """A request of ``size`` bytes, past ``limit`` (``max_request_bytes``), refused by this client before it
    is sent: ``InvalidRequest`` (``INVALID_ARGUMENT``, ``LIMIT_EXCEEDED``, metadata ``limit``), nothing sent.
    Sent, the service refuses it unread — and gRPC's retry policy (``RESOURCE_EXHAUSTED`` is retried) sent
    it again, all of it, up to ``maxAttempts`` times, which the caller cannot stop."""
    message = (f"{request}: the request is {size} bytes, past max_request_bytes={limit} (the service's "
               "max_message_bytes, ATP_MAX_MESSAGE_BYTES: 4 MiB unless set otherwise); not sent: send smaller ones, "
               "or set max_request_bytes to the service's limit")
    return InvalidRequest(_status_error(grpc.StatusCode.INVALID_ARGUMENT, message, "LIMIT_EXCEEDED", "atp.client",
                                        {"limit": "max_request_bytes", "size": str(size)}))


def batch_too_large(batch: int, reservations: int, limit: int) -> InvalidRequest:
    """The ``batch``-th batch of a ``ReserveStream``, of more ``reservations`` than ``limit``
    (``max_batch_reservations``), refused by this client before it is sent: ``InvalidRequest`` (``LIMIT_EXCEEDED``,
    metadata ``limit``). Sent, the service ends the stream so, once the batches before it are answered."""
    message = (f"ReserveStream batch {batch}: {reservations} reservations exceed max_batch_reservations={limit} (the "
               "service's, 1,000 unless set otherwise); not sent: send smaller batches, or set max_batch_reservations "
               "to the service's limit")
    return InvalidRequest(_status_error(grpc.StatusCode.INVALID_ARGUMENT, message, "LIMIT_EXCEEDED", "atp.client",
                                        {"limit": "max_batch_reservations", "reservations": str(reservations)}))


def in_doubt(lost: grpc.aio.AioRpcError, then: grpc.aio.AioRpcError) -> Retryable:
    """A change whose call was lost in the hands of a process (``lost``: gone, or its connection
    reset, mid-call), then refused by the next process asked (``then``: not owned there, the
    service stopping, ...): it may have been made (R7). Raised as the service says so itself:
    ``UNAVAILABLE`` / ``OUTCOME_UNKNOWN``; a retry with the same ids answers what was decided."""
    message = (f"the call was lost with a process that had it ({lost.details()}), then refused elsewhere "
               f"({then.code().name}: {then.details()}); it may have been made: retry with the same ids")
    return _raised_here(grpc.StatusCode.UNAVAILABLE, message, OUTCOME_UNKNOWN, "atp.v1")


def retry_refused(doubt: grpc.aio.AioRpcError, then: grpc.aio.AioRpcError) -> Retryable:
    """A call answered in doubt (``doubt``: ``OUTCOME_UNKNOWN``), sent again and refused short of an
    answer (``then``: access, a limit, the retries given up): the first try may have been made (R7),
    which no refusal of the retry undoes. Raised as ``in_doubt`` says so: ``UNAVAILABLE`` /
    ``OUTCOME_UNKNOWN``; a retry with the same ids answers what was decided."""
    message = (f"a try was answered in doubt ({doubt.details()}), then its retry refused ({then.code().name}: "
               f"{then.details()}); it may have been made: retry with the same ids")
    return _raised_here(grpc.StatusCode.UNAVAILABLE, message, OUTCOME_UNKNOWN, "atp.v1")


OUTCOME_UNKNOWN = "OUTCOME_UNKNOWN"
"""``ErrorInfo.reason`` of a change that may or may not have been made (R7): the service's own, and
the client's where it knows a change in doubt (``in_doubt``, ``stream_unanswered``)."""


def stream_unanswered(batches: int, answer_timeout_s: float) -> Retryable:
    """A ``ReserveStream`` whose service said nothing for ``answer_timeout_s`` while ``batches`` waited
    for their answers: ended ``DEADLINE_EXCEEDED`` with the reason every change in doubt carries,
    ``OUTCOME_UNKNOWN`` (metadata ``limit``: ``timeout_s``, the client's bound; ``unanswered``: the
    batches in doubt), as the service ends a stream whose caller stopped reading (``stream_stall_s``)."""
    message = (f"ReserveStream: no answer for {answer_timeout_s:g}s with batches waiting; {batches} batch(es) "
               "sent and not answered are in doubt: retry them with the same reservation ids")
    return _raised_here(grpc.StatusCode.DEADLINE_EXCEEDED, message, OUTCOME_UNKNOWN, "atp.v1",
                        {"limit": "timeout_s", "unanswered": str(batches)})


def deadline_exceeded(waiting_for: str) -> Retryable:
    """A call whose deadline passed in this client, ``waiting_for`` something before a try could be
    sent: raised as gRPC ends a call out of deadline (``DEADLINE_EXCEEDED``, no ``ErrorInfo``), for
    a caller to handle both alike — a change so refused is in doubt as any past its deadline (R8)."""
    return _raised_here(grpc.StatusCode.DEADLINE_EXCEEDED, f"Deadline Exceeded ({waiting_for})")


NOT_CONNECTED = "NOT_CONNECTED"
"""``ErrorInfo.reason`` of the refusals this client raises itself when nothing was sent: no
connection (``AtpClient.connect``), or a ``ReserveStream`` the service did not accept in time
(``stream_not_accepted``). The service never sends it."""


def not_connected(target: str, why: str) -> Retryable:
    """No connection to ``target`` (``why``): nothing was sent, so nothing can land (R7). Raised as
    ``UNAVAILABLE`` with its own reason, for a caller to tell it from a call lost mid-way (in doubt)."""
    message = f"cannot reach {target}: {why}; nothing was sent"
    return _raised_here(grpc.StatusCode.UNAVAILABLE, message, NOT_CONNECTED, "atp.client")


def stream_not_accepted(timeout_s: float) -> Retryable:
    """A ``ReserveStream`` whose service did not accept it (send its headers) within ``timeout_s``: its
    batches wait for that, so none was sent and none can land (R7). Raised as ``not_connected``
    (``UNAVAILABLE``, ``NOT_CONNECTED``), metadata ``limit``: ``timeout_s``."""
    message = f"ReserveStream: not accepted by the service within {timeout_s:g}s; no batch was sent"
    return _raised_here(grpc.StatusCode.UNAVAILABLE, message, NOT_CONNECTED, "atp.client", {"limit": "timeout_s"})


UNREAD_TOO_LARGE = "SERVER: Received message larger than max"
"""The details of gRPC's own RESOURCE_EXHAUSTED (no ``ErrorInfo``) for a request larger than the service
takes (``max_message_bytes``): refused before the service read it, and the same at every retry (docs/API.md:
"no retry can help: send smaller ones"). Not "CLIENT: Received …": an answer this client would not read, to
a call the service may have made (in doubt)."""


def stream_cut_unread(error: grpc.aio.AioRpcError, unanswered: int) -> AtpError:
    """A ``ReserveStream`` ended by gRPC's own refusal of a batch larger than the service takes (``UNREAD_TOO_LARGE``)
    with ``unanswered`` batches sent and not answered: that batch was never read, but the others sent before it were
    read, decided, and their answers never sent (the call was over). ``InvalidRequest`` where it is the only one;
    else ``Retryable`` in doubt (``UNAVAILABLE``, ``OUTCOME_UNKNOWN``, metadata ``unanswered``), as ``in_doubt``: a
    retry of the batches with the same ids answers what was decided (R5, R7), the one too large refused again."""
    refused = typed(error)
    if not isinstance(refused, InvalidRequest) or UNREAD_TOO_LARGE not in (error.details() or "") or unanswered <= 1:
        return refused
    message = (f"ReserveStream: a batch larger than the service takes was refused unread ({error.details()}); the "
               f"{unanswered - 1} other batch(es) sent and not answered may have been made: retry them with the same "
               "reservation ids, and that batch in smaller ones")
    return _raised_here(grpc.StatusCode.UNAVAILABLE, message, OUTCOME_UNKNOWN, "atp.v1",
                        {"limit": "max_message_bytes", "unanswered": str(unanswered - 1)})


def typed(error: grpc.aio.AioRpcError) -> AtpError:
    """The typed exception for a failed call (``AtpError`` for codes without a class of their own)."""
    if isinstance(error, AtpError):
        return error
    if error.code() == grpc.StatusCode.INTERNAL and error.details() == CORE_LOST_CALL:
        return Retryable(error)
    if error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and UNREAD_TOO_LARGE in (error.details() or ""):
        return InvalidRequest(error)  # typed Retryable, it was retried with the same bytes for ever
    typed_error = _CLASSES.get(error.code(), AtpError)(error)
    if isinstance(typed_error, Retryable) and typed_error.refusal.metadata.get(GIVEN_UP) == "true":
        return Conflict(error)  # R5: its id answers the same for good; typed Retryable, it was asked again for hours
    return typed_error



def renumbered(error: AtpError, name: str, places: Sequence[int]) -> AtpError:
    """``error``, the refusal of a call that sent some items of the caller's list ``name`` (its n-th item the
    caller's ``places[n]``), naming each item in its message and field violations by its place in the caller's list
    (``keys[0].location`` of the call: the caller's ``keys[3].location``), as the service names it when sent them all:
    by its place in the call, the caller was pointed at an item not at fault."""
    at = re.compile(rf"\b{re.escape(name)}\[(\d+)\]")

    def fix(text: str) -> str:
        return at.sub(lambda m: f"{name}[{places[int(m[1])]}]" if int(m[1]) < len(places) else m[0], text)

    trailers: list[tuple[str, Any]] = []
    received = cast(Iterable[tuple[str, Any]], error.trailing_metadata() or ())
    for key, value in received:
        if key == DETAILS_KEY:
            try:
                status = status_pb2.Status.FromString(value)
            except (DecodeError, TypeError):  # not a Status: kept as it came
                trailers.append((key, value))
                continue
            status.message = fix(status.message)
            for detail in status.details:
                if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                    bad = error_details_pb2.BadRequest()
                    detail.Unpack(bad)
                    for violation in bad.field_violations:
                        violation.field = fix(violation.field)
                    detail.Pack(bad)
            value = status.SerializeToString()
        trailers.append((key, value))
    return typed(grpc.aio.AioRpcError(error.code(), error.initial_metadata(), grpc.aio.Metadata(*trailers),
                                      fix(error.details() or ""), error.debug_error_string()))

GIVEN_UP = "given_up"
"""``ErrorInfo`` metadata (``"true"``) of the refusal an order spanning groups was given up for (docs/API.md,
``CAPACITY_REACHED``): a decision on its id, which no retry of it can change (R5)."""
