"""``AtpClient.watch``: a channel's ``WatchAvailability``, its arguments checked before anything is sent and
every end of the call raised typed."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

import grpc

from atp_client._errors import invalid_field, typed
from atp_client.pb.atp.v1 import atp_pb2 as pb

MAX_VERSION = (1 << 64) - 1
"""The largest version a request carries (``since_version`` is a uint64)."""
NOT_PRINTABLE = "must be printable (no control, format, separator or unassigned character; ASCII space is fine)"
"""Why the service refuses an id with a character ``str.isprintable`` refuses (docs/API.md)."""


def watch_request(channel: str, *, snapshot: bool = False, since_version: int = 0) -> pb.WatchAvailabilityRequest:
    """A ``WatchAvailabilityRequest``, each argument checked before anything is sent: one the request cannot
    carry, or that the service would refuse whatever its settings, raises ``InvalidRequest`` (``INVALID_FIELD``,
    the field named). ``snapshot`` with a ``since_version`` is refused too: the service ignores the version then
    (a snapshot sends every published value, then the changes after it), and a caller resuming from it would be
    sent the whole snapshot instead, told nothing."""
    if not isinstance(channel, str):
        raise invalid_field("channel", f"must be a string, got {type(channel).__name__}")
    if not channel:
        raise invalid_field("channel", "must not be empty")
    if not channel.isprintable():
        raise invalid_field("channel", NOT_PRINTABLE)
    if not isinstance(snapshot, bool):
        raise invalid_field("snapshot", f"must be True or False, got {type(snapshot).__name__}")
    if isinstance(since_version, bool) or not isinstance(since_version, int) or not 0 <= since_version <= MAX_VERSION:
        got = since_version if isinstance(since_version, int) else type(since_version).__name__
        raise invalid_field("since_version", f"must be a version within [0, {MAX_VERSION}], got {got}")
    if snapshot and since_version:
        raise invalid_field("since_version", "not with snapshot, which sends every published value and then the "
                                             "changes after them: one or the other")
    return pb.WatchAvailabilityRequest(channel=channel, snapshot=snapshot, since_version=since_version)


async def watched(method: Any,
                  request: pb.WatchAvailabilityRequest) -> AsyncGenerator[pb.WatchAvailabilityResponse, None]:
    """The messages of the ``WatchAvailability`` call ``method`` makes, as they come; its end raised typed. The
    call is made at the first ``anext`` and cancelled however the iteration ends: its end, a refusal, the
    generator closed (``aclose``), the task reading it cancelled."""
    call = method(request)
    try:
        while (message := await call.read()) is not grpc.aio.EOF:  # type: ignore[attr-defined]
            yield message
    except grpc.aio.AioRpcError as exc:
        raise typed(exc) from None
    finally:
        call.cancel()  # a caller gone (a loop left and the generator closed, its task cancelled): ended now
