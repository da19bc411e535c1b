"""Input-stream entries trimmed away before the consumer group read them.

Their facts were never applied and never will be, and Redis says nothing of it to a reader:
XREADGROUP simply goes on from the oldest entry left. A producer's ``MAXLEN`` shorter than the
backlog (the service down for a while, or reading slower than the tills write) loses sales and
receipts that way — on_hand wrong, and units sold that are gone. The reader looks for that gap, where
it can still be seen: before its first read (a read moves the group's position past the gap) and
with its pending gauge. The group's ``lag`` (entries added less entries read) less the entries left
after its position is how many went unread.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from redis.exceptions import ResponseError

from atp_service.intake.entries import id_key
from atp_service.storage.resp import as_text, no_such_key

log = logging.getLogger(__name__)


def _as_bytes(value: bytes | str) -> bytes:
    return value if isinstance(value, bytes) else value.encode()


@dataclass(frozen=True)
class Backlog:
    """A consumer group's entries of one stream not done with."""

    pending: int
    """Delivered to a consumer, not acknowledged."""
    lag: int | None
    """Not delivered yet (None: Redis cannot tell, after XDEL of entries the group has not read)."""


async def trimmed_unread(client: Any, stream: str, group: str) -> tuple[int, bytes, Backlog | None]:
    """How many entries of ``stream`` were trimmed before ``group`` read them (0: none, or not
    known — a group whose lag Redis cannot tell, after XDEL), the group's position and its backlog
    (None: no such group, or stream)."""
    try:
        # One MULTI: other processes' consumers of the group read on, and the producer trims, between
        # two calls; the group's old position and lag against the stream as trimmed since would count
        # entries they read as lost (a false critical alert).
        async with client.pipeline(transaction=True) as pipe:
            pipe.xinfo_groups(stream)
            pipe.xinfo_stream(stream)
            groups, info = await pipe.execute()
    except ResponseError as exc:
        if no_such_key(exc):  # the stream deleted: the reader makes it again
            return 0, b"", None
        raise
    mine = next((g for g in groups if as_text(g["name"]) == group), None)
    if mine is None:
        return 0, b"", None
    lag = mine.get("lag")
    backlog = Backlog(int(mine["pending"]), None if lag is None else int(lag))
    if lag is None:
        return 0, b"", backlog
    position = _as_bytes(mine["last-delivered-id"])
    first = info.get("first-entry")
    if first is None:  # the stream is empty: any entry added after the position went unread
        behind = id_key(_as_bytes(info["last-generated-id"])) > id_key(position)
        left = 0
    else:  # trimming takes the oldest entries: a gap only when the oldest left is past the position
        behind = id_key(_as_bytes(first[0])) > id_key(position)
        left = int(info["length"])
    if not behind:
        return 0, position, backlog
    return max(0, int(lag) - left), position, backlog


class UnreadWatch:
    """Counts and says each gap once: the same position seen again says only what grew since."""

    def __init__(self, client: Any, group: str, counter: Any) -> None:
        self._client = client
        self._group = group
        self._counter = counter
        self._told: dict[str, tuple[bytes, int]] = {}  # per stream: the position and the count told

    async def check(self, stream: str) -> int:
        """Look for entries of ``stream`` trimmed unread; count and log those not told yet."""
        return (await self.measure(stream))[0]

    async def measure(self, stream: str) -> tuple[int, Backlog | None]:
        """``check``, and the group's backlog on ``stream`` read in the same round trip."""
        lost, position, backlog = await trimmed_unread(self._client, stream, self._group)
        if not lost:
            return 0, backlog
        told_at, told = self._told.get(stream, (b"", 0))
        new = lost - told if told_at == position else lost
        self._told[stream] = (position, lost)
        if new > 0:
            self._counter.labels(stream).inc(new)
            log.error("input stream %s: %d entries were trimmed from the stream before consumer group %s read "
                      "them (after entry %s): their facts were never applied; the stream's MAXLEN is shorter "
                      "than the backlog", stream, new, self._group, as_text(position),
                      extra={"event": "ingest_trimmed_unread", "stream": stream, "entries": new,
                             "after": as_text(position)})
        return max(0, new), backlog
