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
group restored below the link reads the older entries first, and its position alone no longer tells the loss.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

from reservation import ChannelUpdate

from ._config import PublisherConfig

log = logging.getLogger(__name__)
NAME_LOST = """
for i = 1, #ARGV, 2 do
  local held = tonumber(redis.call('HGET', KEYS[1], ARGV[i]) or '0')
  if tonumber(ARGV[i + 1]) > held then redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
end
return 0
"""
"""Each key named with the newest lost version delivered (several groups of one channel name the same hash)."""
CHUNK = 1000


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
    owed: dict[str, int] = {}
    for u in updates:
        if u.follows is not None:
            owed.update((key, v) for key, v in delivered.items() if u.follows < v < u.version)
    return owed


async def name_lost(config: PublisherConfig, client: Any, delivered: Mapping[str, int],
                    updates: Iterable[ChannelUpdate]) -> None:
    """The keys ``lost_delivered`` finds named in the service's ``restamp`` hash (none: nothing written)."""
    owed = lost_delivered(delivered, updates)
    if not owed:
        return
    log.warning("%s: %d keys were delivered at versions Redis has since lost (up to %d); the service is asked to "
                "publish their durable values again at new versions (%s)", config.channel, len(owed),
                max(owed.values()), config.restamp_key)
    items = sorted(owed.items())
    for start in range(0, len(items), CHUNK):
        await client.eval(NAME_LOST, 1, config.restamp_key,
                          *[x for key, version in items[start:start + CHUNK] for x in (key, version)])
