"""New entries of the channel stream read into the group, and a gap before them owed, in one step.

Versions come without gaps: a read of new entries whose first is more than one past the group's
position means those between were trimmed unread (between the look at the stream's first entry and
the read, or while the read waited). ``XREADGROUP`` moves the group past them in Redis as it
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

from dataclasses import dataclass
from typing import Any

from atp_service.storage.resp import as_text

from ._config import PublisherConfig

READ_NEW = """
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
local from = math.min(tonumber(string.match(after, '^%d+')), tonumber(ARGV[4]))
if #entries > 0 and tonumber(string.match(entries[1][1], '^%d+')) > from + 1 then
  mark = redis.call('incr', KEYS[2])
end
return {after, entries, mark}
"""
"""The group's position before the read (``last-delivered-id``), the new entries read (``XREADGROUP
... >``: NOGROUP where the stream or group is gone, as outside a script), and the mark's new value
when the first is past the version after the lower of that position and the reader's (``ARGV[4]``;
0: no gap)."""


@dataclass(slots=True)
class New:
    after: str
    """The group's position (its last-delivered id) before the read."""
    entries: list[tuple[str, dict[Any, Any]]]
    """(entry id, fields) of each entry read, in stream order."""
    mark: int
    """The value the read raised the mark of a resync of every key to (a gap before the entries); 0: none."""


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
