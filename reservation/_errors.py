"""Domain refusals: a closed vocabulary of reasons, each refusal naming the fields it is about.

The reason says why, in the domain's words; the service edge alone chooses the gRPC status and
the error details for it (one table, ``atp_service/edge/errors.py``), and the reason's name is the
stable, machine-readable code clients see (``google.rpc.ErrorInfo.reason``). Reasons are numbered
in precedence order: where faults of several kinds apply to one request, the lowest is the one
reported — who calls first (a denied call is never read), then the request itself, identity, what
it names, state, capacity, and last the service's own availability. The request's own faults
(INVALID_FIELD, LIMIT_EXCEEDED) are told one at a time, the first its checks meet: a list past its
limit is refused for its length without its items past the limit being read (bounded work for any
request), so an item at fault there is told only once the list fits. A call refused at the door
(SHUTTING_DOWN: the service stopping; SERVICE_OVERLOADED: its event loop late) is refused before its
request is read, whatever is wrong with it. Insufficient stock is not here: it is an outcome
(REJECTED), not a refusal.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from enum import IntEnum


class Reason(IntEnum):
    """Why a command was refused. Closed: a new reason is a change of the API contract."""

    TOKEN_MISSING = 1
    """No bearer token was sent (the service has auth on); the request was not read."""
    TOKEN_INVALID = 2
    """The bearer token is unknown or malformed; the request was not read."""
    ROLE_NOT_PERMITTED = 3
    """The caller's roles do not include the method (metadata ``method``, ``roles``)."""
    REQUEST_MALFORMED = 4
    """The request's bytes are not a valid message of its type (truncated, bad UTF-8)."""
    INVALID_FIELD = 5
    """A field is missing, malformed or out of range (the field violation names it)."""
    LIMIT_EXCEEDED = 6
    """A count or a length passes a named limit of the service (metadata ``limit`` names it)."""
    RESERVATION_ID_REUSED = 7
    """R5: the reservation id was used with other content (metadata ``field`` names what differs)."""
    OPERATION_ID_REUSED = 8
    """R5: the operation id was used with other lines, or by the other operation (a release's id for a fulfilment)."""
    RESERVATION_NOT_FOUND = 9
    """No reservation with that id (never made, or forgotten after its retention)."""
    CHANNEL_NOT_FOUND = 10
    """No channel with that name in the estate."""
    RESERVATION_EXPIRED = 11
    """R3: the hold expired before the command; reserve again. Also a Confirm of an order spanning
    groups whose hold in a group Redis lost (restarted from older data): the order is given up whole
    and the message names the groups (every part lost: given up already by whatever drove it on)."""
    RESERVATION_REJECTED = 12
    """R2: the reservation was refused when made; nothing of it can change."""
    RESERVATION_RELEASED = 13
    """R3: the reservation was released; nothing of it can change."""
    RESERVATION_FULFILLED = 14
    """R4: every unit of the reservation was fulfilled or released."""
    RESERVATION_NOT_CONFIRMED = 15
    """R4: a HELD reservation is confirmed before it is fulfilled."""
    OPERATION_LIMIT_REACHED = 16
    """The reservation has had as many partial releases and fulfilments as one may (metadata
    ``limit``: ``max_ops_per_reservation``; ``SHIPMENT`` facts naming it are not counted); a whole
    release or fulfilment still works, with an ``operation_id`` or without."""
    ESTATE_UNUSABLE = 17
    """The estate file cannot be used (or channels were off at start): nothing changed."""
    SHARD_OVERLOADED = 18
    """A shard's queue is full or too slow: shed at once, nothing of that shard's part applied (a RecordEvents
    or LoadCounts spanning shards says what the others recorded; an order spanning groups refused so was not
    opened, but one whose later step was shed is ``OUTCOME_UNKNOWN``: its other parts may hold); retry after
    the delay."""
    SERVICE_OVERLOADED = 19
    """The service's event loop runs late: shed at the door, nothing applied; or (metadata ``limit``:
    ``max_peer_channels``) a call to be forwarded to another process found every channel to other processes busy:
    nothing sent. Retry after the delay."""
    CAPACITY_REACHED = 20
    """A bounded resource is full (metadata ``limit``: a shard's live or resolved reservations or its
    positions (``max_positions_per_shard``: a LoadCounts or SetSafetyStock that would make one), open
    watches or reserve streams, open health watch and reflection streams (``max_open_service_streams``));
    it frees as reservations end or retention forgets them, or as watches and streams close. A stream
    already open ends so with ``limit`` ``stream_stall_s`` when its caller stopped reading: call again,
    resuming a watch from the last version seen. An order spanning groups given up for it says so (metadata
    ``given_up`` = ``true``): a retry of its id answers the same for good (no retry delay, gRPC told not to
    retry it): reserve again under a new id."""
    OUTCOME_UNKNOWN = 21
    """R7: the change is not known to be durable; retry with the same ids to learn what was decided."""
    STORAGE_UNREACHABLE = 22
    """The log cannot be reached, or refused the write before running it (out of memory; on a Redis
    Cluster, the slot moving or failing over); nothing was applied."""
    CONCURRENT_CHANGE = 23
    """The record is being changed by another call; retry."""
    RECOVERING = 24
    """The service is recovering its state; retry shortly."""
    SHUTTING_DOWN = 25
    """The service is stopping; retry (another instance answers)."""
    SHARD_STOPPED = 26
    """A shard stopped working; the service restarts."""
    INSTANCE_REPLACED = 27
    """A newer instance owns the keyspace; retry (it answers). Also when Redis lost this instance's
    claim (it restarted from older data): the instance restarts and the retry is answered then."""
    GROUP_MOVED = 28
    """The shard group of the call's SKU or reservation is owned by another service process
    (metadata ``group``, ``owner``: its address, empty while no process owns it): nothing was
    applied by this try (an earlier try lost with a process, ``UNAVAILABLE`` without details, may
    have been made there: retry with the same ids). Send the call to the owner (trailing metadata
    ``atp-moved``), or to any process without ``atp-routing: redirect`` to have it forwarded."""
    INTERNAL = 29
    """A bug: nothing of the command was applied."""


_STATE_REASONS = {
    "EXPIRED": Reason.RESERVATION_EXPIRED,
    "REJECTED": Reason.RESERVATION_REJECTED,
    "RELEASED": Reason.RESERVATION_RELEASED,
    "FULFILLED": Reason.RESERVATION_FULFILLED,
    "HELD": Reason.RESERVATION_NOT_CONFIRMED,
}


GIVEN_UP = "given_up"
"""``DomainError.metadata`` key ("true") of the refusal an order spanning groups was given up for: a retry of its
id answers the same refusal for good (R5), so no retry of it can help — reserve again under a new id."""


class DomainError(Exception):
    """Base of every refusal the domain can raise: a ``reason``, the ``fields`` it is about, string
    ``metadata`` for machines (ErrorInfo) and a message for people."""

    reason = Reason.INTERNAL

    def __init__(self, message: str, reason: Reason | None = None, fields: tuple[str, ...] = (),
                 metadata: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        if reason is not None:
            self.reason = reason
        self.fields = fields
        self.metadata: dict[str, str] = dict(metadata or {})


class InvalidArgument(DomainError):
    """Bad input; ``field`` names the offending request field (e.g. ``lines[2].quantity``) and
    ``problem`` what is wrong with it."""

    reason = Reason.INVALID_FIELD

    def __init__(self, field: str, problem: str, reason: Reason | None = None, limit: str = "") -> None:
        super().__init__(f"{field}: {problem}", reason, (field,), {"limit": limit} if limit else None)
        self.field = field
        self.problem = problem

    def within(self, parent: str) -> InvalidArgument:
        """The same refusal, its field named inside ``parent`` (``events[3]`` + ``quantity``)."""
        return InvalidArgument(f"{parent}.{self.field}", self.problem, self.reason, self.metadata.get("limit", ""))


class NotFound(DomainError):
    reason = Reason.RESERVATION_NOT_FOUND


class AlreadyExists(DomainError):
    """R5: the same id was used with different content; ``field`` names what differs."""

    reason = Reason.RESERVATION_ID_REUSED

    def __init__(self, field: str, message: str, reason: Reason | None = None) -> None:
        super().__init__(f"{field}: {message}", reason, (field,), {"field": field})
        self.field = field


class FailedPrecondition(DomainError):
    """R3, R4: the reservation's state does not allow the command; ``state`` is the state's name,
    ``subject`` the reservation's id. The reason follows the state."""

    def __init__(self, state: str, message: str, subject: str = "") -> None:
        super().__init__(f"reservation is {state}: {message}", _STATE_REASONS.get(state, Reason.INTERNAL),
                         metadata={"state": state})
        self.state = state
        self.subject = subject


class ResourceExhausted(DomainError):
    reason = Reason.SHARD_OVERLOADED


class Unavailable(DomainError):
    """Not done now; retry with the same ids. Either nothing was applied (refused before any work), or
    the change is not known to be durable: it may yet be found in the log, and a retry with the same
    ids answers what was decided (R5, R7). The reason says which."""

    reason = Reason.STORAGE_UNREACHABLE


class Moved(Unavailable):
    """The call needs ``group``, which another service process owns (``owner``, its advertised
    address; "" while none does): refused before any work, nothing applied."""

    reason = Reason.GROUP_MOVED

    def __init__(self, group: int, owner: str, epoch: int = 0, serving: Iterable[int] = ()) -> None:
        """``group`` -1: a reservation this process does not hold, whose group it cannot tell;
        ``serving`` then names the groups this process answers for now (it holds no such record in
        any of them)."""
        self.group, self.owner, self.epoch, self.serving = group, owner, epoch, tuple(sorted(serving))
        if group < 0:
            super().__init__("reservation_id: not held by this process; ask the others, or retry",
                             metadata={"group": "-1", "serving": ",".join(map(str, self.serving))})
            return
        where = f"process {owner}" if owner else "no process yet (being taken over)"
        super().__init__(f"shard group {group} is owned by {where}; send the call there, or retry",
                         metadata={"group": str(group), "owner": owner, "epoch": str(epoch)})

