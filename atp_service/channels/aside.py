"""Channels set aside from the desk's writes while one of their keys in Redis holds another type.

The desk writes every channel's updates in one script call, which checks every key's type before its
first change (KEYTYPE, ``storage.channel_store``): a channel's stream or state hash overwritten by
something other than the service (an operator's ``SET`` on the wrong key, another application sharing
the prefix) refused the whole write, and no channel published anything — stock-outs included — for as
long as the key stayed. So the channel the refusal names is set aside: left out of the writes, its
updates kept pending (``atp_channel_oldest_wait_seconds`` grows), the others
published; its keys are looked at again every ``RECHECK_MS`` and it is written again once both are
writable. An operator removes or renames the key.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping

from redis.exceptions import ResponseError

from atp_service.engine.clock import Clock
from atp_service.storage.channel_store import ChannelStore, wrong_type_key
from reservation import Feed

log = logging.getLogger(__name__)
RECHECK_MS = 5_000
"""How often the keys of a channel set aside are looked at again (two TYPE reads)."""


class SetAside:
    """The channels left out of the desk's writes, each with when its keys are looked at again."""

    def __init__(self, store: ChannelStore, clock: Clock) -> None:
        self._store, self._clock = store, clock
        self._until: dict[str, int] = {}

    def __contains__(self, channel: str) -> bool:
        return channel in self._until

    def note(self, error: BaseException, channels: Iterable[str]) -> None:
        """A write of ``channels`` failed with ``error``: the channel whose key a KEYTYPE refusal names
        is set aside."""
        key = wrong_type_key(error)
        if key is None:
            return
        for channel in channels:
            if key in (self._store.stream(channel), self._store.state_key(channel)):
                self._put(channel, key)

    async def last_versions(self, channels: Iterable[str]) -> dict[str, int]:
        """Each channel's newest version in its stream, as a settle reads them after its fence; a channel whose
        stream key holds another type now is set aside and left out (nothing of a write can be read there). Its
        key overwritten while a write was in doubt (or the write's KEYTYPE refusal lost with its reply), the
        read failed WRONGTYPE on every try: the settle waited for ever, and no channel published anything."""
        out: dict[str, int] = {}
        for channel in channels:
            try:
                out[channel] = await self._store.last_version(channel)
            except ResponseError as exc:
                if not str(exc).startswith("WRONGTYPE"):
                    raise
                self._put(channel, self._store.stream(channel))
        return out

    def _put(self, channel: str, key: str) -> None:
        self._until[channel] = self._clock.now_ms() + RECHECK_MS
        log.error("channel %s set aside: its key %s holds another type; its updates wait, the other "
                  "channels publish", channel, key,
                  extra={"event": "channel_set_aside", "channel": channel, "key": key})

    async def recheck(self, channels: Iterable[str]) -> None:
        """Each channel set aside whose time came is written again if its keys are writable now; one no
        longer among ``channels`` (removed by a reload) is forgotten."""
        known, now = set(channels), self._clock.now_ms()
        for channel, until in list(self._until.items()):
            if channel not in known:
                del self._until[channel]
            elif until <= now:
                key = await self._store.wrong_type(channel)
                if key is None:
                    del self._until[channel]
                    log.warning("channel %s written again: its keys are writable", channel,
                                extra={"event": "channel_set_aside_ended", "channel": channel})
                else:
                    self._until[channel] = now + RECHECK_MS

    def sleep_s(self, feeds: Mapping[str, Feed], now: int) -> float | None:
        """How long the desk may sleep before something is due (None: until woken): a feed's next update, or
        the next look at a channel set aside — not its own updates, due but not written meanwhile (the desk
        woke for them at once, round after round)."""
        wakes = [w for name, feed in feeds.items() if name not in self._until
                 and (w := feed.next_wakeup(now)) is not None]
        wakes += self._until.values()
        return None if not wakes else max(0.0, (min(wakes) - now) / 1000)
