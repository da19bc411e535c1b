"""The input streams' backlog, measured apart from the reader: what is pending and what is unread.

The reader cannot measure its own backlog: stuck — waiting for room among its batches in flight,
each behind a shard or an owner that does not answer — it measures nothing, and a gauge it sets
freezes at its last value while the tills' sales pile up unread (availability stale: oversell). So a
task of its own reads, per stream and interval, the consumer group's pending and unread (``lag``)
entries (entries trimmed unread are counted by the read that crosses them: ``GroupReader``), and its consumers:
one left by a process renamed, or gone without a sweep that removes it (``departed.py``: leased,
``<name>@<address>``), stays with its keys until an operator removes it — the gauge shows them growing.
"""

from __future__ import annotations

import asyncio
import logging
import math
from dataclasses import dataclass
from typing import Any

from redis.exceptions import RedisClusterException, RedisError, ResponseError

from atp_service.storage.resp import as_text, no_such_key
from atp_service.tasks import stop_if_cancelled

log = logging.getLogger(__name__)
BACKLOG_EVERY_S = 5.0
"""How often the backlog is measured: one XINFO GROUPS per input stream."""


@dataclass(frozen=True)
class Backlog:
    """A consumer group's entries of one stream not done with."""

    pending: int
    """Delivered to a consumer, not acknowledged."""
    lag: int | None
    """Not delivered yet (None: Redis cannot tell, after XDEL of entries the group has not read)."""
    consumers: int
    """The group's consumers, those of processes gone or renamed that no sweep removes too (``departed.py``)."""


async def backlog(client: Any, stream: str, group: str) -> Backlog | None:
    """The group's backlog on ``stream`` (None: no such group, or stream)."""
    try:
        groups = await client.xinfo_groups(stream)
    except ResponseError as exc:
        if no_such_key(exc):  # the stream deleted: the reader makes it again
            return None
        raise
    mine = next((g for g in groups if as_text(g["name"]) == group), None)
    if mine is None:
        return None
    lag = mine.get("lag")
    return Backlog(int(mine["pending"]), None if lag is None else int(lag), int(mine["consumers"]))


class BacklogGauge:
    """Sets ``pending``, ``lag`` and ``consumers`` (gauges labelled by stream) every ``BACKLOG_EVERY_S``, whatever the
    reader does."""

    def __init__(self, client: Any, group: str, streams: list[str], pending: Any, lag: Any, consumers: Any) -> None:
        self._client = client
        self._group = group
        self._streams = streams
        self._pending = pending
        self._lag = lag
        self._consumers = consumers
        for stream in streams:  # there from the start, at 0: an alert on their growth sees the first rise
            lag.labels(stream)

    async def run(self, every_s: float = BACKLOG_EVERY_S) -> None:
        while True:
            for stream in self._streams:
                await self.measure(stream)
                stop_if_cancelled()  # a cancel redis-py lost during the measure: the loop ran on for ever
            await asyncio.sleep(every_s)

    async def measure(self, stream: str) -> None:
        """One stream's backlog into the gauges. Redis not answering leaves them as they were: the
        reader counts its own failed reads (``atp_ingest_read_failures_total``)."""
        try:
            measured = await backlog(self._client, stream, self._group)
        except (RedisError, RedisClusterException, OSError) as exc:
            log.debug("input stream %s: backlog not measured: %s", stream, exc)
            return
        if measured is None:  # no stream or group (yet): the reader makes them
            return
        self._pending.labels(stream).set(measured.pending)
        self._consumers.labels(stream).set(measured.consumers)
        # Unknown after XDEL of unread entries, until the group reads past them: not a number, not 0.
        self._lag.labels(stream).set(math.nan if measured.lag is None else measured.lag)
