"""New entries of the channel stream read into the group, and a gap before them owed, in one step.

Versions come without gaps within a run of the service: a read of new entries whose first is more
than one past the group's position means those between were trimmed unread (between the look at the
stream's first entry and the read, or while the read waited). Between runs they jump, and a run's first
entry names the version it follows (``follows``: the newest Redis held at the start): from exactly that
version the jump is no gap; from another, the versions between were trimmed unread, or (the reader past
it) lost by Redis. ``XREADGROUP`` moves the group past them in Redis as it
answers, so nothing but the mark of a resync of every key (``redeliver-all``) says they are owed.
Raised by a second call after the reply, a publisher killed (``kill -9``, an OOM kill, its node
lost) between the two left the group past the gap and nothing owed: the next start found no gap,
and a stock-out among them never reached the destination (C4). So the read, the check and the mark
are one script call: Redis runs all of it or none of it.

The gap is measured from the lower of the group's position and the reader's own (the last version
it read, or owed as a gap): an old holder paused past its lease may have read under its own name
since, taking the group past entries trimmed unread, and what it owed them in its own read (the mark)
no holder whose first redelivery pass is over looks at again. Measured from the group's position
alone, the holder found no gap and a stock-out among them waited for its next start (C4); from its
own, it owes them itself (those the old holder read are delivered twice at most: taken over, and
from the state hash, the second skipped by version).

A script may not block: with nothing new and a wait wanted, ``XREAD`` (which moves nothing) waits
for an entry past the group's position, then the script reads it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from atp_service.storage.channel_wire import follows_of
from atp_service.storage.lua_counts import no_count
from atp_service.storage.resp import as_text
from atp_service.storage.scripts import ACL_LUA
from reservation import ChannelUpdate

from ._config import PublisherConfig


def mark_checked(key: str, nothing: str = "nothing read") -> str:
    """Lua refusing (WRONGTYPE) where the mark of a resync of every key (``key``: its ``KEYS[n]``) holds anything but
    a count, before a script that may raise it moves the group (its read, its takeover's claim)."""
    return f"""
local kind, held = redis.call('type', {key})['ok'], nil
if kind == 'string' then held = redis.call('get', {key}) end
-- a count INCR takes: no leading zero (Redis refuses '01'), under 10^18 (no overflow at INCR's 2^63 - 1)
if (kind ~= 'string' and kind ~= 'none') or (held and {no_count("held")}) then
  return redis.error_reply('WRONGTYPE ' .. {key} .. ' holds ' .. (held or ('a ' .. kind)) ..
                           ', not a count: {nothing}')
end
"""


READ_NEW = ACL_LUA + mark_checked("KEYS[2]") + """
local refused = denied({{'INCR', KEYS[2]}})  -- after XREADGROUP: refused there, the group left past a gap, none owed
if refused then return refused end
local after = false
if redis.call('exists', KEYS[1]) == 1 then
  for _, g in ipairs(redis.call('xinfo', 'groups', KEYS[1])) do
    local name, last = nil, nil
    for i = 1, #g, 2 do
      if g[i] == 'name' then name = g[i + 1] elseif g[i] == 'last-delivered-id' then last = g[i + 1] end
    end
    if name == ARGV[1] then after = last end
  end
end
local reply = redis.call('xreadgroup', 'group', ARGV[1], ARGV[2], 'count', ARGV[3], 'streams', KEYS[1], '>')
local entries, mark = (reply and reply[1][2]) or {}, 0
local own = tonumber(ARGV[4])
local from = math.min(tonumber(string.match(after, '^%d+')), own)
if #entries > 0 then
  local fields, follows = entries[1][2], nil
  for i = 1, #fields, 2 do
    if fields[i] == 'follows' then follows = tonumber(fields[i + 1]) end
  end
  local gap
  if follows then gap = follows ~= from or own > from
  else gap = tonumber(string.match(entries[1][1], '^%d+')) > from + 1 end
  if gap then mark = redis.call('incr', KEYS[2]) end
end
return {after, entries, mark}
"""
"""The group's position before the read (``last-delivered-id``), the new entries read (``XREADGROUP
... >``: NOGROUP where the stream or group is gone, as outside a script), and the mark's new value
when the first does not follow on from the lower of that position and the reader's (``ARGV[4]``; 0: no
gap): it is past the version after it, or it is a start's first entry (``follows``) linked to another
version, or to one below the reader's own (which read versions Redis has since lost). The mark is checked first:
Redis undoes nothing of a script that fails half-way, and a mark of another type (an operator's key, a restore of
other data) failed its INCR after the read had moved the group past the gap, nothing owed (C4). Refused so, nothing
is read."""


@dataclass(slots=True)
class New:
    after: str
    """The group's position (its last-delivered id) before the read."""
    entries: list[tuple[str, dict[Any, Any]]]
    """(entry id, fields) of each entry read, in stream order."""
    mark: int
    """The value the read raised the mark of a resync of every key to (a gap before the entries); 0: none."""


@dataclass(slots=True)
class Read:
    """A batch read, decoded (the publisher's)."""

    ids: list[str]
    updates: list[ChannelUpdate]
    trimmed: set[int] = field(default_factory=set)
    """Versions of own pending entries the stream no longer holds (trimmed while pending)."""


@dataclass(slots=True)
class Gap:
    owed: tuple[int, int]
    """The versions (first, last) whose keys' newest values are owed from the state hash."""
    position: int
    """The reader's position once they are owed: the entry that found the gap follows on from it."""
    lost: tuple[int, int] | None = None
    """Versions (first, last) the reader read that Redis has since lost; None: only trimmed unread."""

    def lost_said(self, stream: str, group: str, version: int) -> str:
        """The log's words for a real loss ("": none)."""
        if self.lost is None:
            return ""
        return (f"versions {self.lost[0]} to {self.lost[1]} that group {group} read are no longer in {stream}: Redis "
                "lost them (restored from older data, or a failover to a replica behind its primary) and the service "
                f"started again above them at {version}")


def gap_before(version: int, follows: int | None, after: int, mine: int | None = None) -> Gap | None:
    """What a reader at ``after`` (the lower of the group's position and its own, ``mine``) missed before the entry of
    ``version``, the first it reads (``follows``: the version it says it follows, a run's first entry). Within a
    run versions come without gaps: one past the next means those between were trimmed unread. A run's first
    entry follows exactly the newest version Redis held at the start, across the jump: no gap from there; from
    below it the versions up to it were trimmed unread; a reader past it (``own``) read versions Redis has since
    lost (restored from older data, a failover to a replica behind its primary), whose values the new run may
    never correct: a real loss, owed and told as a gap is. None: nothing missed."""
    own = after if mine is None else max(mine, after)
    if follows is None:
        return Gap((after + 1, version - 1), version - 1) if version > after + 1 else None
    if version <= after or follows == after == own:  # read already; or the start's jump, from exactly here
        return None
    if follows < own:
        return Gap((after + 1, version - 1), follows, lost=(follows + 1, own))
    return Gap((after + 1, follows), follows)


def link_of(fields: Any) -> int | None:
    """The version an entry says it follows (None: none, or not a version: a foreign entry, read as one
    without it, as ``READ_NEW`` does)."""
    try:
        return follows_of(fields)
    except ValueError:
        return None


class Reader:
    def __init__(self, config: PublisherConfig, client: Any) -> None:
        self.config, self.client = config, client

    async def read_new(self, block_ms: int | None, position: int) -> New:
        """New entries (``read_count`` at most) read into this consumer, a gap before them owed with
        them. ``block_ms``: with none new, wait this long for one (None: no wait). ``position``: the
        last version this reader read or owes as a gap (the gap is measured from it where the group's
        position is past it: another name's late read)."""
        new = await self._read(position)
        if new.entries or block_ms is None:
            return new
        cfg = self.config
        if await self.client.xread({cfg.stream: new.after}, count=1, block=block_ms):
            return await self._read(position)
        return new

    async def _read(self, position: int) -> New:
        cfg = self.config
        after, entries, mark = await self.client.eval(READ_NEW, 2, cfg.stream, cfg.redeliver_all_key,
                                                      cfg.group, cfg.consumer, cfg.read_count, position)
        read = [(as_text(entry_id), dict(zip(flat[::2], flat[1::2], strict=True))) for entry_id, flat in entries]
        return New(as_text(after), read, int(mark))
