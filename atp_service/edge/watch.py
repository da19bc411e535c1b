"""WatchAvailability: a channel's snapshot (from memory) then its changes (from the channel stream).

The snapshot is the desk's published values as of version V: every one of them is already in
the stream, and every later one has a version above V, so reading the stream after V continues
exactly where the snapshot ends — snapshot + changes equals the stream's content. A subscriber
whose ``since_version`` is older than what trimming removed, or who meets a hole in the versions
(a Redis that lost the newest entries, the desk going on above them), is told to re-snapshot (never
silently skipped).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator
from typing import cast

from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_service.channels.desk import ChannelDesk
from atp_service.instruments import Counter
from atp_service.metrics import EngineMetrics
from atp_service.storage.channel_wire import follows_on, values_of
from atp_service.storage.durability import STORAGE_ERRORS, TIMEOUTS
from reservation import ChannelUpdate, Key, Published, Reason, ResourceExhausted, StockStatus, Unavailable

Response = pb.WatchAvailabilityResponse
_STATUS = {s: cast(pb.StockStatus, pb.StockStatus.Value(f"STOCK_STATUS_{s.value}")) for s in StockStatus}
_BLOCK_MS = 1000
_READ_TRIES = 3
"""Reads of the stream in a row that may time out before a watch ends UNAVAILABLE. A read changes nothing, so
one timed out is asked again: a process stalled past the socket timeout (a long collection, a starved CPU)
finds Redis's reply and the read's deadline due in the same pass of the event loop, and the deadline runs
first — every quiet watch ended against a healthy Redis. Asked again at once, not blocked: its reply comes in a
moment, which another stall hardly catches in flight. A Redis truly away fails every try."""


def update_pb(out: pb.ChannelUpdate, u: ChannelUpdate) -> None:
    out.channel, out.sku, out.location, out.quantity = u.channel, u.sku, u.location, u.quantity
    if u.previous is not None:
        out.previous = u.previous
    out.status = _STATUS[u.status]
    out.version = u.version
    for field, ms in (("event_time", u.event_time), ("publish_time", u.published_at), ("durable_time", u.durable_at)):
        if ms:
            getattr(out, field).FromMilliseconds(ms)


class Watchers:
    """Counts open watches against ``max_watchers`` (each may hold a Redis connection blocked);
    ``refusals``: ``atp_capacity_refusals_total``, where a watch refused at the bound is counted
    (the capacity alert reads it: a consumer refused sees no availability change)."""

    def __init__(self, limit: int, batch: int, refusals: Counter | None = None,
                 snapshot_keys: int = 10_000_000, max_message_bytes: int = 4 << 20) -> None:
        self.limit, self.batch, self.open = limit, batch, 0
        self.max_message_bytes = max_message_bytes
        """gRPC's bound on every message the service sends (``fitted``)."""
        self.snapshot_keys, self.held_keys = snapshot_keys, 0
        refusals = refusals or EngineMetrics().capacity_refusals
        self._refused = refusals.labels("max_watchers")
        self._refused_snapshot = refusals.labels("max_watch_snapshot_keys")

    async def watch(self, desk: ChannelDesk, request: pb.WatchAvailabilityRequest) -> AsyncIterator[Response]:
        channel = desk.channel(request.channel).name
        if self.open >= self.limit:
            self._refused.inc()
            raise ResourceExhausted(f"max_watchers: {self.limit} WatchAvailability streams are open already",
                                    Reason.CAPACITY_REACHED, metadata={"limit": "max_watchers"})
        self.open += 1
        try:
            async with contextlib.aclosing(self._watch(desk, channel, request)) as messages:  # closed at once
                async for message in messages:
                    for part in fitted(message, self.max_message_bytes):
                        yield part
        except STORAGE_ERRORS as exc:  # a status with a retry delay, not UNKNOWN (nor Redis's address)
            raise Unavailable(f"channel {channel}: its stream cannot be read now ({type(exc).__name__}); "
                              "watch again from the last version seen") from None
        finally:
            self.open -= 1

    async def _watch(self, desk: ChannelDesk, channel: str,
                     request: pb.WatchAvailabilityRequest) -> AsyncGenerator[Response, None]:
        if request.snapshot:
            since = desk.feeds[channel].published_version
            async with contextlib.aclosing(self._snapshot(desk, channel)) as chunks:  # its keys let go at once
                async for message in chunks:
                    since = message.version
                    yield message
        elif request.since_version:
            since = request.since_version
            if await desk.store.missed_after(channel, since):
                yield Response(kind=Response.KIND_RESNAPSHOT_REQUIRED, version=since)
                return
        else:
            # From the desk's newest, as a snapshot: what the stream lost of it (a Redis behind it) is
            # no gap for this watch, which follows the desk from there, not the stream's past.
            since = desk.feeds[channel].published_version
        async for message in self._changes(desk, channel, since):
            yield message

    async def _snapshot(self, desk: ChannelDesk, channel: str) -> AsyncGenerator[Response, None]:
        """The snapshot's chunks, then its end. Its copy of the channel's values lives only until then (a
        watch following the changes for days kept it) and counts against ``max_watch_snapshot_keys`` meanwhile:
        a subscriber that reads slowly or never held ~65 bytes a key (benchmarks/RESULTS.md; a per-location channel of
        millions of keys: tens or hundreds of MB a watch, bounded only by ``max_watchers``)."""
        keys = len(desk.feeds[channel].published)
        if self.held_keys and self.held_keys + keys > self.snapshot_keys:  # one alone always goes
            self._refused_snapshot.inc()
            raise ResourceExhausted(f"max_watch_snapshot_keys: snapshots of {self.held_keys} keys are being sent "
                                    f"already; {channel}'s {keys} would pass {self.snapshot_keys}: watch again later",
                                    Reason.CAPACITY_REACHED, metadata={"limit": "max_watch_snapshot_keys"})
        self.held_keys += keys
        try:
            since, items = desk.snapshot(channel)
            for start in range(0, len(items), self.batch):
                desk.channel(channel)  # a reload may have removed it since the last chunk: NotFound
                yield self._snapshot_chunk(channel, items[start:start + self.batch], since)
            yield Response(kind=Response.KIND_SNAPSHOT_END, version=since)
        finally:
            self.held_keys -= keys

    async def _changes(self, desk: ChannelDesk, channel: str, since: int) -> AsyncIterator[Response]:
        """The stream's updates after ``since``, while versions follow on one from the next (C3), and only
        those the desk has confirmed (C4). A run's versions have no gaps (a write refused gives its versions
        back; one in doubt not landed leaves them, linked past by a marker: ``RunFeed.lost_past``), and a
        start's jump is crossed only from the version its first entry says it follows, the newest Redis held then
        (``follows_on``), so any other version means updates this watch can never be sent: trimmed, or lost by a
        Redis behind the desk, which then went on above them (or a start above them). The watch ends
        RESNAPSHOT_REQUIRED there, never skipping them in silence (a stock-out among them would stay unknown)."""
        while True:
            # A channel a reload removed is written no more: its watch ends NotFound, naming it, as
            # one started now would, instead of waiting in silence for ever (checked every read:
            # ``_BLOCK_MS`` at most after the reload).
            desk.channel(channel)
            updates = await _read_after(desk, channel, since, self.batch)
            confirmed = desk.confirmations.next()
            # C4: an entry above what the desk published is a write not settled yet: on a primary whose
            # replicas lack it (redis_wait_replicas), lost with it in a failover, and its versions then
            # written again with other values. Sent, a watch resumed after them skipped those (a stock-out).
            desk.channel(channel)  # a reload may have removed it during the read: NotFound, not a KeyError
            following = _following(since, updates)
            shown, published = following, desk.feeds[channel].published_version
            while shown and updates[shown - 1].version > published:
                shown -= 1
            if shown:
                since = updates[shown - 1].version
                out = Response(kind=Response.KIND_CHANGES, version=since)
                for u in values_of(updates[:shown]):  # a start's marker is followed on (C3), and sends nothing
                    update_pb(out.updates.add(), u)
                if out.updates:
                    yield out
            if shown < following:  # read again once the desk has confirmed or settled a write
                await _until_settled(desk, channel, confirmed)
            elif following < len(updates):
                yield Response(kind=Response.KIND_RESNAPSHOT_REQUIRED, version=since)
                return

    @staticmethod
    def _snapshot_chunk(channel: str, items: list[tuple[Key, Published]], version: int) -> Response:
        out = Response(kind=Response.KIND_SNAPSHOT, version=version)
        for (sku, location), p in items:
            u = out.updates.add(channel=channel, sku=sku, location=location, quantity=p.quantity,
                                version=p.version)
            if p.event_time:
                u.event_time.FromMilliseconds(p.event_time)
            u.status = _STATUS[p.status]  # C3: as published at p.version, not classed anew by a reloaded policy
        return out


def _following(since: int, updates: list[ChannelUpdate]) -> int:
    """How many of ``updates`` follow on from ``since`` without a gap (C3): one version after the other, and across
    a start only from the version the start's first entry says it follows (``follows_on``)."""
    following, last = 0, since
    while following < len(updates) and follows_on(updates[following].version, updates[following].follows, last):
        last = updates[following].version
        following += 1
    return following


async def _read_after(desk: ChannelDesk, channel: str, since: int, batch: int) -> list[ChannelUpdate]:
    block: int | None = _BLOCK_MS
    for tries_left in range(_READ_TRIES - 1, -1, -1):
        try:
            return await desk.store.read_after(channel, since, batch, block)
        except TIMEOUTS:
            if not tries_left:
                raise
            block = None  # asked again at once, not blocked: a reply in a moment, which a stall hardly catches
    raise AssertionError("_READ_TRIES is at least 1")


async def _until_settled(desk: ChannelDesk, channel: str, confirmed: asyncio.Event) -> None:
    """Until the desk confirms or settles a write (``confirmed``, C4), or a reload gives the channel another feed;
    the channel checked every ``_BLOCK_MS`` meanwhile (removed: NotFound), the stream not read. Read again each
    ``_BLOCK_MS`` while a settle waited on Redis (a replica away, ``redis_wait_replicas``), the same unconfirmed
    entries, up to ``watch_batch`` of them decoded a read, held the event loop for more than a second a second
    with ``max_watchers`` watches: every call of the service slowed or shed for as long as the replica was away."""
    feed = desk.feeds[channel]
    while not confirmed.is_set():
        await desk.confirmations.wait(confirmed, _BLOCK_MS / 1000)
        desk.channel(channel)
        if desk.feeds[channel] is not feed:  # read from Redis by a reload that removed it and added it back
            return


def fitted(message: Response, max_bytes: int) -> list[Response]:
    """``message`` as messages of at most ``max_bytes`` each: ``watch_batch`` updates of ids up to
    ``max_id_length`` (~450 bytes each) outgrew a small ``max_message_bytes``, and gRPC failed the
    watch RESOURCE_EXHAUSTED with no reason at that message, every time it was opened again. Split
    in halves, in order: a snapshot's chunks keep the snapshot's version; changes say their last
    update's (where a watch ended between them resumes from). One size taken a message."""
    if len(message.updates) <= 1 or message.ByteSize() <= max_bytes:
        return [message]
    half = len(message.updates) // 2
    parts: list[Response] = []
    for updates in (message.updates[:half], message.updates[half:]):
        version = updates[-1].version if message.kind == Response.KIND_CHANGES else message.version
        parts += fitted(Response(kind=message.kind, version=version, updates=updates), max_bytes)
    return parts
