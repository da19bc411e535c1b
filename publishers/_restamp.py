"""Keys this publisher delivered at versions Redis has since lost, named to the service to publish again (C3, C4).

Redis restored from older data (or failed over to a replica behind its primary) and the service started again on it:
its run's first entry follows the newest version Redis held (``follows``) and its own version is above every version
handed out before (C3). A version between the two that this publisher delivered for a key is one Redis lost, and the
destination keeps its value — the highest version it holds for the key — though the service holds another (older, or
none at all: a key the lost entries made). The state hash cannot correct it: its value of the key is at a lower
version, which the destination drops (and which is not delivered: a version at or below the one delivered never is).
So each such key is named in the service's ``restamp`` hash with the newest lost version delivered
(``atp_service/channels/restamp.py``), and the service publishes it again at a version of its run, with its curated
value of what is durable (0 for a key it holds nothing of): read from the stream and delivered as any other (C4).

Found from what this publisher delivered (in memory), at any entry that carries ``follows`` (the first read after
the loss, or one in the middle of a read: the group's restored position below the link), not from the positions: a
group restored below the link reads the older entries first, and its position alone no longer tells the loss. Found
so also by a publisher standing by, which reads no entry through the group (``_standby``): naming needs no lease.

The naming is an aid to C4 after a loss, never a step of delivery: a ``restamp`` key of another type than a hash (an
operator's mistake, a restore of other data) refuses the names, and delivery goes on (``LostNames``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from atp_service.logs import EveryInterval
from atp_service.storage.resp import as_text
from reservation import ChannelUpdate

from ._config import PublisherConfig
from ._metrics import PublisherMetrics

log = logging.getLogger(__name__)
NAME_LOST = """
local kind = redis.call('TYPE', KEYS[1])['ok']
if kind ~= 'hash' and kind ~= 'none' then return kind end
for i = 1, #ARGV, 2 do
  local held = tonumber(redis.call('HGET', KEYS[1], ARGV[i]) or '0') or 0
  if tonumber(ARGV[i + 1]) > held then redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
end
return 0
"""
"""Each key named with the newest lost version delivered (several groups of one channel name the same hash). A key of
another type is left as it is and its type answered (0: named): its WRONGTYPE error read as Redis away, and the read
that found the loss was retried for good, delivering nothing more to the destination. A value naming no version (an
operator's edit; the service skips it, ``ChannelStore.restamps``) is named over: its ``tonumber`` nil failed the
script, with the same stall."""
CHUNK = 1000
REFUSED_LOG_S = 60.0
"""At most one warning this often while the ``restamp`` key refuses the names (each refusal is counted), and one
of keys found delivered at lost versions."""


def still_known(recorded: dict[str, int], known: Mapping[str, int]) -> dict[str, int]:
    """The versions delivered per key as the group's record in Redis has them (``recorded``), raised to those this
    process knows it delivered (``known``): a lease taken again (a restore older than the lease took it away) must
    not forget a version Redis lost, or its key is neither named here (C4) nor its restored entries below it
    skipped (C3: delivered at a version below one delivered). Versions only rise: the record is the highest of every
    holder's, lower than this process's only where Redis lost it."""
    for key, version in known.items():
        if version > recorded.get(key, 0):
            recorded[key] = version
    return recorded


def lost_delivered(delivered: Mapping[str, int], updates: Iterable[ChannelUpdate]) -> dict[str, int]:
    """Keys (``sku<TAB>location``) delivered at a version a run's first entry among ``updates`` says Redis lost:
    above the version it follows and below its own."""
    return lost_between(delivered, [(u.version, u.follows) for u in updates if u.follows is not None])


def lost_between(delivered: Mapping[str, int], links: Iterable[tuple[int, int]]) -> dict[str, int]:
    """Keys delivered at a version one of ``links`` (a run's first entry: its version, the version it follows) says
    Redis lost: above the version it follows and below its own."""
    owed: dict[str, int] = {}
    for version, follows in links:
        owed.update((key, v) for key, v in delivered.items() if follows < v < version)
    return owed


class LostNames:
    """The keys ``lost_delivered`` finds, named in the service's ``restamp`` hash, and kept until they are. Kept in
    this process's memory (at most one entry per key it delivered, as the delivered versions are) while the key refuses
    them (another type than a hash): tried again at the first read ``redis_retry_s`` after a refusal (standing by: at
    the next look, ``_standby``), written as soon as the key is removed or made a hash (no restart, no new loss needed),
    each refusal counted and warned at most once a minute naming the key and its type. A stop before then forgets them,
    as it forgets what it delivered."""

    def __init__(self, config: PublisherConfig, client: Any, metrics: PublisherMetrics,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.config, self.client, self.metrics, self._clock = config, client, metrics, clock
        self.owed: dict[str, int] = {}
        self._retry_at = float("-inf")
        self._refusals = EveryInterval(REFUSED_LOG_S, clock, event="publisher_restamp_refused")
        self._found = EveryInterval(REFUSED_LOG_S, clock)

    async def name(self, delivered: Mapping[str, int], updates: Iterable[ChannelUpdate]) -> None:
        """The keys delivered at versions ``updates`` say Redis lost, and those kept from a refusal, named (C4). A
        Redis error is raised (the read is tried again, and these with it); a refusal is not: delivery goes on."""
        await self.owe(lost_delivered(delivered, updates))

    async def owe(self, found: Mapping[str, int]) -> None:
        """Keys found delivered at versions Redis lost (``found``: key -> the newest such version, logged), and those
        kept from a refusal, named (C4): as ``name``."""
        cfg = self.config
        if found:
            if (left_out := self._found.due()) is not None:  # a comparison repeated at each gap finds them again
                log.warning("%s: %d keys were delivered at versions Redis has since lost (up to %d); the service is "
                            "asked to publish their durable values again at new versions (%s; %d such lines left "
                            "out)", cfg.channel, len(found), max(found.values()), cfg.restamp_key, left_out)
            self.owed = still_known(self.owed, found)
        if self.owed and self._clock() >= self._retry_at:
            refused_by = await self._write(sorted(self.owed.items()))
            if refused_by is None:
                self.owed = {}
            else:
                self._refused(refused_by)
        self.metrics.restamp_owed.labels(cfg.channel).set(len(self.owed))

    async def _write(self, items: list[tuple[str, int]]) -> str | None:
        """None: every key named; else the type the ``restamp`` key holds instead of a hash."""
        for start in range(0, len(items), CHUNK):
            answer = await self.client.eval(NAME_LOST, 1, self.config.restamp_key,
                                            *[x for key, version in items[start:start + CHUNK] for x in (key, version)])
            if answer != 0:
                return as_text(answer)
        return None

    def _refused(self, kind: str) -> None:
        cfg = self.config
        self._retry_at = self._clock() + cfg.redis_retry_s
        self.metrics.restamp_refused.labels(cfg.channel).inc()
        if (left_out := self._refusals.due()) is not None:
            log.warning("%s: %d keys delivered at versions Redis has since lost are not named to the service: %s holds "
                        "a %s, not a hash; kept in this process's memory and named once it is removed (a restart "
                        "forgets them, and their destinations keep the lost values); delivery goes on", cfg.channel,
                        len(self.owed), cfg.restamp_key, kind,
                        extra={"event": "publisher_restamp_refused", "channel": cfg.channel, "key": cfg.restamp_key,
                               "type": kind, "keys": len(self.owed), "left_out": left_out})
