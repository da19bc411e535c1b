"""Domain refusals: a closed vocabulary of reasons, each refusal naming the fields it is about.

The reason says why, in the domain's words; the service edge alone chooses the gRPC status for it
(one table, ``atp_service/edge/errors.py``). Reasons are numbered in precedence order: where
several apply to one request, the lowest is the one reported — the request itself first, then
identity, what it names, state, capacity, and last the service's own availability.
"""

from __future__ import annotations

from enum import IntEnum


class Reason(IntEnum):
    """Why a command was refused. Closed: a new reason is a change of the API contract."""

    INVALID_FIELD = 1
    """A field is missing, malformed or out of range (``fields`` names it)."""
    LIMIT_EXCEEDED = 2
    """A count or a length passes a named limit of the service (the message names the limit)."""
    ID_REUSED = 3
    """R5: an id already used with other content (``fields`` names what differs)."""
    UNKNOWN_RESERVATION = 4
    """No reservation with that id (never made, or forgotten after its retention)."""
    UNKNOWN_CHANNEL = 5
    """No channel with that name in the estate."""
    WRONG_STATE = 6
    """R3: the reservation's state does not allow the command (``state`` names it)."""
    ESTATE_UNUSABLE = 7
    """The estate file cannot be used (or channels were off at start): nothing changed."""
    OVERLOADED = 8
    """Shed at once: a queue is too long or too slow; retry with backoff (nothing was applied)."""
    CAPACITY_REACHED = 9
    """A bounded resource is full (live reservations of a shard, open watches)."""
    OUTCOME_UNKNOWN = 10
    """R7: the change is not known to be durable; retry with the same ids to learn what was decided."""
    STORAGE_UNREACHABLE = 11
    """The log cannot be reached; refused before any work (nothing was applied)."""
    CONCURRENT_CHANGE = 12
    """The record is being changed by another call; retry."""
    RECOVERING = 13
    """The service is recovering its state; retry shortly."""
    SHUTTING_DOWN = 14
    """The service is stopping; retry (another instance answers)."""
    SHARD_STOPPED = 15
    """A shard stopped working; the service restarts."""
    REPLACED = 16
    """A newer instance owns the keyspace; retry (it answers)."""
    INTERNAL = 17
    """A bug: nothing of the command was applied."""


class DomainError(Exception):
    """Base of every refusal the domain can raise: a ``reason``, the ``fields`` it is about and a
    message for people."""

    reason = Reason.INTERNAL

    def __init__(self, message: str, reason: Reason | None = None, fields: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.message = message
        if reason is not None:
            self.reason = reason
        self.fields = fields


class InvalidArgument(DomainError):
    """Bad input; ``field`` names the offending request field (e.g. ``lines[2].quantity``)."""

    reason = Reason.INVALID_FIELD

    def __init__(self, field: str, problem: str, reason: Reason | None = None) -> None:
        super().__init__(f"{field}: {problem}", reason, (field,))
        self.field = field


class NotFound(DomainError):
    reason = Reason.UNKNOWN_RESERVATION


class AlreadyExists(DomainError):
    """R5: the same id was used with different content; ``field`` names what differs."""

    reason = Reason.ID_REUSED

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}", None, (field,))
        self.field = field


class FailedPrecondition(DomainError):
    """R3: a conflicting second resolution; ``state`` is the current state's name."""

    reason = Reason.WRONG_STATE

    def __init__(self, state: str, message: str) -> None:
        super().__init__(f"reservation is {state}: {message}")
        self.state = state


class ResourceExhausted(DomainError):
    reason = Reason.OVERLOADED


class Unavailable(DomainError):
    """Not done now; retry with the same ids. Either nothing was applied (refused before any work), or
    the change is not known to be durable: it may yet be found in the log, and a retry with the same
    ids answers what was decided (R5, R7). The reason says which."""

    reason = Reason.STORAGE_UNREACHABLE
