"""Keys published again at a new version, on a publisher's word that it delivered them at versions Redis lost.

Redis restored from older data (or failed over to a replica behind its primary), and the service started again on
it: the values a publisher delivered from the lost versions stay at its destination, which keeps the highest version
per key (C3) — a key the lost entries made (the restored state hash holds none of it), and one whose restored value
is older than the one delivered. The state hash cannot say which keys those are; the publisher can (it finds the loss
at the run's first entry, ``follows``, and knows what it delivered above it), and names each in the channel's
``restamp`` hash (``sku<TAB>location`` -> the newest lost version it delivered; ``publishers/_restamp.py``).

The desk looks at it every ``POLL_S``: each key named is offered again as a baseline (at once, outside the rate limit,
``previous`` unknown) with its curated value of what is durable — the value it publishes now (``published``, or one
pending, which goes out anyway), 0 for a key it holds nothing of — at a version of this run, above every lost one
(C3: each start's versions begin above every version handed out before). C4: the destination converges to the
durable value. A key is forgotten from the hash only once the channel published it above the version named (the
write confirmed): a stop or a failed write in between leaves it named for the next look, the next run's included.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from typing import Any

from redis.exceptions import ResponseError

from atp_service.logs import EveryInterval
from atp_service.metrics import ChannelMetrics
from atp_service.storage.channel_store import ChannelStore
from atp_service.storage.durability import STORAGE_ERRORS
from reservation import Feed, Key

log = logging.getLogger(__name__)
POLL_S = 1.0
"""How often the desk looks for keys to publish again (one HSCAN per channel, of a hash empty but after a loss)."""


def restamp(feed: Feed, key: Key, now_ms: int) -> bool:
    """``key`` offered again as a baseline (its published value, 0 if none): published at a new version even if equal
    to what the channel shows (not E11: the destination may show a value of a lost version). Its published value stays
    in the feed's ``published`` meanwhile (``Feed.offer_again``): a snapshot taken before the write is confirmed shows
    it, not no value at all (C4: only what is durable). False: a value of it is pending or being written already (a
    new version, unless withdrawn: looked at again next time)."""
    if feed.waiting(key):
        return False
    pub = feed.published.get(key)
    feed.offer_again(key, 0 if pub is None else pub.quantity, now_ms if pub is None else pub.event_time, now_ms, now_ms)
    return True


def restamp_task(store: ChannelStore, feeds: Callable[[], Mapping[str, Feed]], now_ms: Callable[[], int],
                 poke: Callable[[], None], metrics: ChannelMetrics) -> asyncio.Task[None] | None:
    """The desk's look for keys to publish again, every ``POLL_S`` until cancelled (the desk's stop); None where
    no publisher can name any (``store.publishers_name_keys``: the simulation's store, which models none)."""
    if not store.publishers_name_keys:
        return None
    looks = Restamps(store, feeds, now_ms, poke, metrics)
    return asyncio.get_running_loop().create_task(looks.run(), name="channel-restamps")


class Restamps:
    def __init__(self, store: ChannelStore, feeds: Callable[[], Mapping[str, Feed]],
                 now_ms: Callable[[], int], poke: Callable[[], None], metrics: ChannelMetrics | None = None) -> None:
        self.store, self._feeds, self._now_ms, self._poke = store, feeds, now_ms, poke
        self._metrics = metrics or ChannelMetrics()
        self._unreadable = EveryInterval(60.0, event="channel_restamps_unread")

    async def run(self) -> None:
        """Until cancelled: a look every ``POLL_S``; Redis away: the next look tries again."""
        while True:
            await asyncio.sleep(POLL_S)
            try:
                await self.look()
            except STORAGE_ERRORS as exc:
                log.debug("keys to publish again not read (%s); next look in %g s", exc, POLL_S)

    async def look(self) -> int:
        """Each key named for a channel offered again, or forgotten once published above the lost version named (C3,
        C4). How many were offered."""
        offered = 0
        for name, feed in list(self._feeds().items()):
            try:
                again = await self._look_at(name, feed)
            except ResponseError as exc:  # this channel's hash unreadable (another type): the others looked at still
                self._unread(name, exc)
                continue
            if again:
                self._metrics.published_again.labels(name).inc(again)
                log.warning("%s: publishing %d keys again at new versions: a publisher delivered them at versions "
                            "Redis has since lost", name, again,
                            extra={"event": "channel_keys_published_again", "channel": name, "keys": again})
            offered += again
        if offered:
            self._poke()
        return offered

    def _unread(self, name: str, exc: ResponseError) -> None:
        self._metrics.restamps_unread.labels(name).inc()
        if (left_out := self._unreadable.due()) is not None:
            log.warning("%s: keys a publisher named to publish again not read (%s; %d such left out); the other "
                        "channels' are", name, exc, left_out, extra={
                            "event": "channel_restamps_unread", "channel": name, "error": str(exc),
                            "left_out": left_out})

    async def _look_at(self, name: str, feed: Feed) -> int:
        offered, done = 0, list[Any]()
        named = await self.store.restamps(name)
        if self._feeds().get(name) is not feed:  # read again meanwhile (a relink, a reload): its published may be lost
            return 0
        for key, lost, field, value in named:
            pub = feed.published.get(key)
            if pub is not None and pub.version > lost:
                done += [field, value]
            elif restamp(feed, key, self._now_ms()):
                offered += 1
        if done:
            await self.store.forget_restamps(name, done)
        return offered
