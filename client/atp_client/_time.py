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
