"""The channel desk's feeds across a reload: which are kept, which are read from Redis, which are set aside.

A channel a reload removes may still have a write of its numbers on its way (the desk's round took them before
the swap). Its feed is set aside (``retired``) until that write is settled, and a reload that adds the channel
back meanwhile takes that feed again: read from Redis instead, it lacked what the write then published, and a
number curated under the new rules equal to the one before the write was taken for no change (E11) - the
write's number, curated under the old rules, shown for good (C1, C4).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from atp_service.channels.estate import Channel
from atp_service.storage.channel_wire import StartMarker, start_marker, values_of
from reservation import ChannelUpdate, Feed, FeedPolicy, Key, Published

log = logging.getLogger(__name__)
Stored = tuple[dict[Key, Published], int, int]
"""What ``ChannelStore.load`` read of a channel: its published values, its newest version, its stream's last id."""

VERSIONS_PER_MS = 1000
"""A run's first version is at least its start's clock time in ms times this: its time in microseconds
(below 2^53, exact in a JSON number and in Redis's Lua, until the year 2255)."""


def run_first_version(newest: int, now_ms: int) -> int:
    """The first version a feed read from Redis hands out (C3): above ``newest`` (what Redis holds) and above
    every version handed out before this start, also those Redis lost since (a restart from an older AOF or
    RDB, a failover to a replica behind its primary): its clock floor passes them while the clock does not go
    back and no run handed out more than ``VERSIONS_PER_MS`` versions a ms on average since its own start."""
    return max(newest + 1, now_ms * VERSIONS_PER_MS)


class RunFeed(Feed):
    """A channel's feed in this run of the service: its versions begin at ``first``, after ``resumed_from``,
    the newest Redis held at the start (one run's versions have no gaps; between runs they jump). Version ``first``
    is the run's start marker (``StartMarker``: no update, ``follows`` = ``resumed_from``), its first entry in the
    stream, written by the first write whatever else is due: a reader at exactly ``resumed_from`` goes on across
    the jump, any other is told it missed versions, and a publisher names the keys it delivered at versions above
    ``resumed_from`` that Redis lost (C4) — at the start, also on a channel none of whose keys change after a
    restore. Its updates' versions follow on from ``first + 1``."""

    def __init__(self, channel: str, policy: FeedPolicy, now_ms: int, published: dict[Key, Published],
                 newest: int, reached: int = 0) -> None:
        """``reached``: the newest id Redis had handed out in the stream when the run read it (0: no stream), which
        the start's marker is written only above (``StartMarker.reached``: a loss before the first write, C4)."""
        self.first = run_first_version(newest, now_ms)
        self.reached = reached
        super().__init__(channel, policy, now_ms, published, self.first - 1)
        self.resumed_from = self.published_version = newest  # a snapshot before the run's first write
        self.loaded = newest
        """The newest version Redis held when the run read the channel: unlike ``resumed_from``, never moved by a
        settle (``lost_past``), so a version published above it is one this run wrote (``desk.lost_under``)."""
        self.marking = True
        """The start marker is yet to be written (taken with the next write; given back, taken again)."""
        self._marker: StartMarker | None = None
        """The marker being written."""
        self.relinked = False
        """``resumed_from`` is what a settle read in the stream (``lost_past``), not the start's: checked (LOST)."""

    def take(self, now_ms: int, limit: int, urgent_only: bool = False) -> list[ChannelUpdate]:
        marker = self._take_marker(now_ms)
        updates = super().take(now_ms, limit, urgent_only)
        return updates if marker is None else [marker, *updates]

    def _take_marker(self, now_ms: int) -> StartMarker | None:
        """The start marker at version ``first``, unless written or being written. A settle that found the stream
        past ``first - 1`` (versions this desk did not write) left no version for it: none then, and a reader at
        ``resumed_from`` takes the jump for versions it missed (C3: it looks for them, never skips them)."""
        if not self.marking or self._marker is not None:
            return None
        if self.version != self.first - 1:
            self.marking = False
            return None
        self.version = self.first
        self._marker = start_marker(self.channel, self.first, self.resumed_from, now_ms, self.relinked, self.reached)
        return self._marker

    def confirm(self, updates: list[ChannelUpdate]) -> None:
        super().confirm(values_of(updates))
        marker = self._marker_in(updates)
        if marker is not None:
            self.marking, self._marker = False, None
            self.published_version = max(self.published_version, marker.version)
            log.info("%s: this run's versions go on at %d, after %d (the newest Redis held at the start or settle)",
                     self.channel, marker.version, marker.follows, extra={
                         "event": "channel_run_marked", "channel": self.channel, "version": marker.version,
                         "follows": marker.follows})

    def give_back(self, updates: list[ChannelUpdate], now_ms: int) -> None:
        super().give_back(values_of(updates), now_ms)
        marker = self._marker_in(updates)
        if marker is not None:
            self._marker = None  # taken again at its version: contiguous, as the updates' (C3)
            self.version = marker.version - 1

    def lost_past(self, handed_out: int, follows: int) -> None:
        """A write in doubt settled as not landed, its versions up to ``handed_out``: it may have landed and been lost
        since (Redis restarted from data saved before it, a failover), a reader having read it meanwhile (a publisher
        delivering its values). Those versions are never handed out again (C3: a version names one value for good; a
        publisher skips a version it delivered, a stock-out written again at it never delivered, C4): the next write
        begins with a marker above them that ``follows`` the newest the stream holds, as a start's does, so a reader
        at ``follows`` goes on across the jump and one past it is told it read versions Redis lost."""
        self.first = max(self.version, handed_out) + 1
        self.version, self.resumed_from = self.first - 1, follows
        self.marking, self._marker, self.relinked = True, None, True

    def begin_above(self, version: int) -> None:
        """The run's versions begin above ``version`` too: a relink's feed, above every version the feed it replaces
        handed out, also those Redis lost and any taken by a write it refused (C3: a version names one value for good;
        the clock floor of ``run_first_version`` passes them only on average)."""
        if version >= self.first:
            self.first = version + 1
            self.version = self.first - 1

    def _marker_in(self, updates: list[ChannelUpdate]) -> StartMarker | None:
        """The marker being written, where ``updates`` (a write confirmed or given back) carried it."""
        marker = self._marker
        return marker if marker is not None and any(u is marker for u in updates) else None

    @property
    def in_flight(self) -> int:  # a marker being written is a write on its way (``unsettled``)
        return super().in_flight + (self._marker is not None)

    def next_wakeup(self, now_ms: int) -> int | None:  # the marker goes at once, even with no value waiting
        return now_ms if self.marking and self._marker is None else super().next_wakeup(now_ms)


def known_feeds(current: dict[str, Feed], retired: dict[str, Feed]) -> dict[str, Feed]:
    """The feeds a reload takes again if it names their channel: the current ones, and those set aside whose write
    is still on its way (one settled since is read from Redis: what landed of it is there)."""
    return {**unsettled(retired), **current}


def unsettled(retired: dict[str, Feed]) -> dict[str, Feed]:
    """The feeds set aside whose write is still on its way; the others are let go once their write is settled (every
    key a removed channel published, millions for a per-location one, was held until a later reload, if any)."""
    return {name: feed for name, feed in retired.items() if feed.in_flight} if retired else retired


def next_feeds(channels: dict[str, Channel], known: dict[str, Feed], stored: dict[str, Stored],
               now_ms: int) -> tuple[dict[str, Feed], dict[str, Feed]]:
    """(the feeds of ``channels``: those ``known`` with their new policy, the others from ``stored``; the feeds set
    aside: those ``known`` of removed channels with a write on its way)."""
    feeds: dict[str, Feed] = {}
    for name, channel in channels.items():
        old = known.get(name)
        if old is not None:
            old.set_policy(channel.policy, now_ms)
            feeds[name] = old
        else:
            feeds[name] = feed = RunFeed(name, channel.policy, now_ms, *stored[name])
            feed.held_until = now_ms + channel.policy.throttle_ms  # C2: its keys' last intervals were another's
            if feed.published:  # C2: what the bucket had left is not known either
                feed.bucket.assume_spent()
    return feeds, {name: feed for name, feed in known.items() if name not in feeds and feed.in_flight}


class Confirmations:
    """Wakes the watches waiting for the desk to settle a write they found in a channel stream above what it has
    published: only what the desk confirmed is published (C4). Until then a write may be in doubt (its replicas did
    not confirm it), and lost with its primary: its versions are then written again with other values."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def next(self) -> asyncio.Event:
        """Set at the desk's next confirmation (or settle): taken before ``published_version`` is read, so none
        between the two is missed."""
        return self._event

    def note(self) -> None:
        """The desk confirmed (or settled) a write: each waiting watch reads its channel again."""
        event, self._event = self._event, asyncio.Event()
        event.set()

    @staticmethod
    async def wait(event: asyncio.Event, timeout_s: float) -> None:
        """Until ``event`` is set, at most ``timeout_s``."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), timeout_s)
