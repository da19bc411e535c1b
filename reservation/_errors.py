"""Domain errors. Each maps to one gRPC status code at the service edge."""

from __future__ import annotations


class DomainError(Exception):
    """Base of every refusal the domain can raise; ``code`` names the gRPC status."""

    code = "INTERNAL"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(DomainError):
    """Bad input; ``field`` names the offending request field (e.g. ``lines[2].quantity``)."""

    code = "INVALID_ARGUMENT"

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field


class NotFound(DomainError):
    code = "NOT_FOUND"


class AlreadyExists(DomainError):
    """R5: the same id was used with different content; ``field`` names what differs."""

    code = "ALREADY_EXISTS"

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class FailedPrecondition(DomainError):
    """R3: a conflicting second resolution; ``state`` is the current state's name."""

    code = "FAILED_PRECONDITION"

    def __init__(self, state: str, message: str) -> None:
        super().__init__(f"reservation is {state}: {message}")
        self.state = state


class ResourceExhausted(DomainError):
    code = "RESOURCE_EXHAUSTED"


class Unavailable(DomainError):
    """The change could not be made durable; nothing was applied (R7)."""

    code = "UNAVAILABLE"
