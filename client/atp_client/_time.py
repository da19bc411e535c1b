"""Times and durations of the API (google.protobuf Timestamp and Duration) from and to plain numbers."""

from __future__ import annotations

from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp


def timestamp(epoch_ms: int) -> Timestamp:
    """The Timestamp of an epoch time in milliseconds."""
    out = Timestamp()
    out.FromMilliseconds(epoch_ms)
    return out


def epoch_ms(value: Timestamp) -> int:
    """A Timestamp in epoch milliseconds (0 for an unset one)."""
    return value.seconds * 1000 + value.nanos // 1_000_000


def duration(seconds: int) -> Duration:
    """A Duration of whole seconds (a reservation's ``ttl``)."""
    return Duration(seconds=seconds)


MAX_TIMEOUT_S = 365 * 86400.0
"""The longest deadline a client takes for a call (``timeout_s``, ``atpctl --timeout``): a year. gRPC holds a
deadline as now plus it in its own clock, which one past ~7.5e9 s (or infinite) overflows: such a call, like one
of 0 s or less, failed at once ``DEADLINE_EXCEEDED``, unsent, read as a change in doubt and retried for ever."""


def checked_timeout(timeout_s: object, name: str = "timeout_s") -> float:
    """``timeout_s`` as a call's deadline in seconds: a finite number within (0, ``MAX_TIMEOUT_S``], else
    ``ValueError`` naming ``name``."""
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, int | float):
        raise ValueError(f"{name}: must be a number of seconds, got {type(timeout_s).__name__}")
    if not 0 < timeout_s <= MAX_TIMEOUT_S:  # NaN fails it too
        raise ValueError(f"{name}: must be above 0 and at most {MAX_TIMEOUT_S:g} seconds (MAX_TIMEOUT_S), "
                         f"got {timeout_s}")
    return float(timeout_s)
