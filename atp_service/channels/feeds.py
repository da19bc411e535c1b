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

from atp_service.channels.estate import Channel
from reservation import ChannelUpdate, Feed, FeedPolicy, Key, Published

Stored = tuple[dict[Key, Published], int]
"""What ``ChannelStore.load`` read of a channel: its published values, its newest version."""

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
    the newest Redis held at the start (one run's versions have no gaps; between runs they jump). The update of
    version ``first`` says so in the stream (``ChannelUpdate.follows``, the entry's ``follows`` field): a
    reader at exactly ``resumed_from`` goes on across the jump, any other is told it missed versions."""

    def __init__(self, channel: str, policy: FeedPolicy, now_ms: int, published: dict[Key, Published],
                 newest: int) -> None:
        self.first = run_first_version(newest, now_ms)
        super().__init__(channel, policy, now_ms, published, self.first - 1)
        self.resumed_from = self.published_version = newest  # a snapshot before the run's first write

    def take(self, now_ms: int, limit: int, urgent_only: bool = False) -> list[ChannelUpdate]:
        updates = super().take(now_ms, limit, urgent_only)
        for u in updates:  # the run's first: taken again after a write that did not land (``give_back``)
            if u.version == self.first:
                u.follows = self.resumed_from
        return updates


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
            published, version = stored[name]
            feeds[name] = feed = RunFeed(name, channel.policy, now_ms, published, version)
            feed.held_until = now_ms + channel.policy.throttle_ms  # C2: its keys' last intervals were another's
            if published:  # C2: what the bucket had left is not known either; full, a restart gave a burst again
                feed.bucket.tokens = 0.0
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
