"""Protobuf <-> domain conversions, kept out of the servicer so each handler stays short."""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import grpc
import numpy as np
import numpy.typing as npt
from google.protobuf.duration_pb2 import Duration
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from google.rpc import status_pb2

from atp_client import Refusal, epoch_ms
from atp_client import timestamp as api_timestamp
from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_service.edge.errors import STATUS, rich_status
from reservation import (
    DomainError,
    Fact,
    FactOutcome,
    InvalidArgument,
    Limits,
    Quantities,
    Reason,
    Reservation,
    ReserveCommand,
    Unavailable,
    reserve_command,
    reserve_one_line,
)
from reservation._limits import CAPACITY_QUARANTINE

_FACT_KIND_PREFIX = "FACT_KIND_"
_OUTCOMES = frozenset(int(outcome) for outcome in FactOutcome)


def timestamp(ms: int) -> Timestamp | None:
    """The Timestamp of an epoch time in ms; None (unset) for 0, which the domain uses for "none"."""
    return api_timestamp(ms) if ms else None


def ms_of(message: Message, field: str) -> int:
    """A Timestamp field in epoch ms (0 when unset: the domain refuses it where it is required).
    Times are kept to the millisecond, as the log and the input streams keep them: finer digits
    are dropped, and facts within one millisecond are ordered by E1's tie rule."""
    if not message.HasField(field):
        return 0
    value: Timestamp = getattr(message, field)
    if not 0 <= value.nanos < 1_000_000_000:
        raise InvalidArgument(field, f"nanos must be within [0, 999999999], got {value.nanos}")
    return epoch_ms(value)


def ttl_seconds(req: pb.ReserveRequest) -> int:
    """``ttl`` in whole seconds; 0 (the service's default TTL) when unset."""
    if not req.HasField("ttl"):
        return 0
    ttl: Duration = req.ttl
    if ttl.nanos:
        raise InvalidArgument("ttl", f"must be whole seconds, got {ttl.seconds}s and {ttl.nanos}ns")
    if ttl.seconds <= 0:
        raise InvalidArgument("ttl", f"must be positive, got {ttl.seconds}s (leave it unset for the default)")
    return ttl.seconds


_QUARANTINE = (("late", pb.QUARANTINE_REASON_LATE), ("conflict", pb.QUARANTINE_REASON_CONFLICT),
               ("out of range", pb.QUARANTINE_REASON_OUT_OF_RANGE),
               (CAPACITY_QUARANTINE, pb.QUARANTINE_REASON_CAPACITY))


def quarantine_reason(text: str) -> pb.QuarantineReason:
    """The code of a quarantine reason the ledger gave as text (``late: ...``)."""
    return next((code for prefix, code in _QUARANTINE if text.startswith(prefix)), pb.QUARANTINE_REASON_UNSPECIFIED)


def fact_kind_name(kind: int) -> str:
    """A FactKind's short name (``RECEIPT``), as metrics and the input streams spell it."""
    if kind not in pb.FactKind.values():
        return "unknown"
    return pb.FactKind.Name(kind).removeprefix(_FACT_KIND_PREFIX)


ECHO_CHARS = 32
"""The characters of an id past ``max_id_length`` an answer tags its item with (``echoed_id``)."""


def echoed_id(value: str, limits: Limits) -> str:
    """The id an item's answer (a ``ReserveStream`` outcome, a fact's result) is tagged with: the item's own, or
    for one past ``max_id_length`` (refused for it) and longer than ``2 * ECHO_CHARS`` characters its first
    ``ECHO_CHARS``, ``...`` and its length in bytes. Sent back whole, an id filling the request made its answer
    larger than ``max_message_bytes``: never sent, the one item's refusal included."""
    if len(value) <= 2 * ECHO_CHARS or len(value.encode()) <= limits.max_id_length:  # cut, no shorter: sent whole
        return value
    return f"{value[:ECHO_CHARS]}...({len(value.encode())} bytes)"


def fact_pb(fact: Fact) -> pb.Fact:
    """A validated fact as ``RecordEvents`` carries it (to the process owning its group)."""
    return pb.Fact(event_id=fact.event_id, source=fact.source, kind=cast(pb.FactKind, fact.kind), sku=fact.sku,
                   location=fact.location, quantity=fact.quantity, event_time=timestamp(fact.event_time),
                   reservation_id=fact.reservation_id)


def fact_result(answer: pb.FactResult) -> tuple[FactOutcome, str] | DomainError:
    """A fact's outcome as the process that applied it answered: (outcome, detail), or for an
    ``INVALID`` one the refusal naming the field (``events[3].event_time`` read as ``event_time``),
    with the reason and limit the answer's ``ErrorInfo`` carries: read as ``INVALID_FIELD`` whatever it
    was, a fact refused past a limit was dead-lettered naming a malformed field instead."""
    if answer.outcome == pb.FACT_OUTCOME_INVALID:
        field, _, problem = answer.error.message.partition(": ")
        reason, limit = _error_info(answer.error)
        return InvalidArgument(field.partition("].")[2] or field, problem, reason, limit)
    if answer.outcome not in _OUTCOMES:
        return Unavailable(f"fact {answer.event_id!r}: no outcome in the answer ({answer.outcome})")
    return FactOutcome(answer.outcome), answer.detail


def _error_info(error: status_pb2.Status) -> tuple[Reason, str]:
    """The reason (one of a bad request's: the vocabulary of an ``INVALID`` fact) and the ``limit`` a
    refusal's ``ErrorInfo`` names; ``INVALID_FIELD`` where it names none of those."""
    refusal = Refusal.from_status(error)
    if refusal.reason in _BAD_REQUEST:
        return Reason[refusal.reason], refusal.metadata.get("limit", "")
    return Reason.INVALID_FIELD, ""


_BAD_REQUEST = frozenset(reason.name for reason, (code, _) in STATUS.items()
                         if code is grpc.StatusCode.INVALID_ARGUMENT)
"""The reasons an invalid fact may carry (those answered ``INVALID_ARGUMENT``)."""


def lines_of(lines: Sequence[pb.Line]) -> list[tuple[str, str, int]]:
    """A request's lines as (sku, location, quantity); one line (most requests) without a
    comprehension's function object."""
    if len(lines) == 1:
        line = lines[0]
        return [(line.sku, line.location, line.quantity)]
    return [(line.sku, line.location, line.quantity) for line in lines]


def reserve_cmd(req: pb.ReserveRequest, limits: Limits) -> ReserveCommand:
    lines = req.lines
    if len(lines) == 1:  # most Reserves: no list of lines, a TTL in whole seconds read without HasField
        line, ttl = lines[0], req.ttl
        seconds = ttl.seconds  # positive: set (an unset TTL reads 0)
        return reserve_one_line(req.reservation_id, req.order_ref, req.channel, line.sku, line.location, line.quantity,
                                seconds if seconds > 0 and not ttl.nanos else ttl_seconds(req), req.allow_partial,
                                limits)
    return reserve_command(
        reservation_id=req.reservation_id,
        order_ref=req.order_ref,
        channel=req.channel,
        lines=lines_of(req.lines),
        ttl_seconds=ttl_seconds(req),
        allow_partial=req.allow_partial,
        limits=limits,
    )


def reserve_answer(decided: tuple[Reservation, bool]) -> pb.ReserveResponse:
    """A unary Reserve's reply to its decision (record, replayed): ``reserve_response`` of the pair."""
    rec, replayed = decided
    lines = rec.lines
    if len(lines) == 1 and not (line := lines[0]).group:  # one line at one location (most Reserves): no merging
        granted = line.granted
        out = _ReserveResponse(reservation_id=rec.reservation_id, replayed=replayed,
                               state=_HELD if granted else _REJECTED)
        # outcome: an int of pb.LineOutcome's values as it is (typing.cast: a call)
        answer = out.lines.add(sku=line.sku, location=line.location, requested=line.requested, granted=granted,
                               outcome=line.outcome, available=line.available)
        if granted:  # as ``fill_reserve_response``: its allocation, and when it expires
            answer.allocations.add(location=line.location, quantity=granted)
            expire_ms, stamp = rec.created_at + rec.ttl_ms, out.expire_time
            stamp.seconds, stamp.nanos = expire_ms // 1000, expire_ms % 1000 * 1_000_000
        return out
    return reserve_response(rec, replayed)


_ReserveResponse, _HELD, _REJECTED = pb.ReserveResponse, pb.RESERVATION_STATE_HELD, pb.RESERVATION_STATE_REJECTED
"""``reserve_answer``'s (every unary Reserve's): a global each, not a global and an attribute."""


def reserve_response(rec: Reservation, replayed: bool) -> pb.ReserveResponse:
    out = pb.ReserveResponse()
    fill_reserve_response(out, rec, replayed)
    return out


def fill_reserve_response(out: pb.ReserveResponse, rec: Reservation, replayed: bool) -> None:
    """Fill in place: building sub-messages and assigning them would copy each one."""
    out.reservation_id = rec.reservation_id
    granted = False
    add = out.lines.add
    last: pb.LineResult | None = None
    for line in rec.lines:
        if line.group and last is not None and last.sku == line.sku and last.location == line.group:
            last.requested += line.requested  # another location of the same group line
            last.granted += line.granted
            last.available += line.available
        else:
            last = add(sku=line.sku, location=line.group or line.location, requested=line.requested,
                       # outcome: an int of pb.LineOutcome's values as it is (typing.cast: a call per line)
                       granted=line.granted, outcome=line.outcome, available=line.available)
        if line.granted:
            last.allocations.add(location=line.location, quantity=line.granted)
        granted = granted or line.granted > 0
    out.state = pb.RESERVATION_STATE_HELD if granted else pb.RESERVATION_STATE_REJECTED  # the decision (R5)
    if granted:  # Timestamp.FromMilliseconds, without its Python range check: now + ttl is in range
        expire_ms, stamp = rec.created_at + rec.ttl_ms, out.expire_time
        stamp.seconds, stamp.nanos = expire_ms // 1000, expire_ms % 1000 * 1_000_000
    out.replayed = replayed


def reservation_pb(rec: Reservation) -> pb.Reservation:
    return pb.Reservation(
        reservation_id=rec.reservation_id,
        order_ref=rec.order_ref,
        channel=rec.channel,
        state=cast(pb.ReservationState, int(rec.state)),
        lines=[
            pb.LineState(
                sku=line.sku, location=line.location, held=line.held, committed=line.committed,
                fulfilled=line.fulfilled, released=line.released,
            )
            for line in rec.lines
        ],
        create_time=timestamp(rec.created_at),
        expire_time=timestamp(rec.expires_at),
        update_time=timestamp(rec.updated_at),
    )


def availability_pb(sku: str, location: str, q: Quantities) -> pb.Availability:
    return pb.Availability(
        sku=sku, location=location, on_hand=q.on_hand, reserved=q.reserved,
        committed=q.committed, safety_stock=q.safety_stock, available=q.available,
    )


def load_counts_response(rows: npt.NDArray[np.intp], outcomes: npt.NDArray[np.uint8], reasons: dict[int, str],
                         errors: dict[int, InvalidArgument]) -> pb.LoadCountsResponse:
    """The answer to LoadCounts: ``rows[k]`` is the request row of loaded row k (its outcome
    ``outcomes[k]``, its quarantine reason ``reasons[k]``); ``errors``: refused rows, by request row.
    Rows are answered in groups that share a reason, so the answer stays small for any block."""
    counted = np.bincount(outcomes, minlength=len(FactOutcome) + 1).tolist()
    out = pb.LoadCountsResponse(
        applied=counted[FactOutcome.APPLIED], absorbed=counted[FactOutcome.ABSORBED],
        duplicate=counted[FactOutcome.DUPLICATE], quarantined=counted[FactOutcome.QUARANTINED], invalid=len(errors))
    groups: dict[tuple[str, ...], tuple[list[int], pb.RejectedRows]] = {}
    for row, exc in errors.items():
        key = ("invalid", exc.field, exc.problem)
        if key not in groups:
            groups[key] = ([], pb.RejectedRows(outcome=pb.FACT_OUTCOME_INVALID, error=rich_status(exc)))
        groups[key][0].append(row)
    for k, reason in reasons.items():
        code = quarantine_reason(reason)
        detail = LATE_ROWS if code == pb.QUARANTINE_REASON_LATE else reason  # late reasons name each row's time
        key = ("quarantined", str(code), detail)
        if key not in groups:
            groups[key] = ([], pb.RejectedRows(outcome=pb.FACT_OUTCOME_QUARANTINED, quarantine_reason=code,
                                               detail=detail))
        groups[key][0].append(int(rows[k]))
    for members, group in groups.values():
        group.rows.extend(sorted(members))
        out.rejected.append(group)
    return out


LATE_ROWS = "late: before the shard's stream time minus the grace window (E6; each row's reason: quarantine stream)"
