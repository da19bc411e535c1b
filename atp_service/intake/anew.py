"""An input stream made anew (deleted, then written again) told from the stream a reader read, where its consumer group
is made again (``unread._MAKE``, ``bounds.start_again``).

Made again, a group starts after the reader's bound (``bounds.py``): past every entry of the stream read that the
reader settled. A stream made anew holds none of those: all of its entries are new to the reader, and a group made
after the bound never delivers those up to it. Its ids alone do not tell it: written again from low ids past the newest
entry the reader read (a producer giving its own ids, before the reader found its group gone), they reach that entry
as the stream read does. What it holds at that id does: the entry read (its fields' digest kept with its id,
``Unacked.seen_entry``; where the group was made again since, the newest entry at or before where ``_MAKE`` made
it, which it answers: ``Unacked.starts_at``), or none where a trim or an ``XDEL`` took it (the stream's first entry
past it, or its ``max-deleted-entry-id`` at or past it). Another entry there, or none that neither took, is a stream
made anew. One written again with ids past every entry read (``*`` ids, later) holds none there, as one trimmed past
it does: taken for the stream read, its entries are all after the bound, and all delivered.
"""

from __future__ import annotations

import hashlib

ANEW_LUA = """
local function digest(flat)  -- ``entry_digest``
  local parts = {}
  for i, one in ipairs(flat) do parts[i] = #one .. ':' .. one end
  return redis.sha1hex(table.concat(parts))
end
local function anew(key, seen, sum)  -- ``seen`` read in the stream ``key`` holds now, its digest ``sum`` ('': unknown)
  if redis.call('EXISTS', key) == 0 then return true end
  local info = redis.call('XINFO', 'STREAM', key)
  if after(seen, field(info, 'last-generated-id')) then return true end
  if sum == '' then return false end  -- the entry read with no fields (deleted while pending): its ids are all
  local at = redis.call('XRANGE', key, seen, seen)[1]
  if at then return digest(at[2]) ~= sum end
  local first = field(info, 'first-entry')
  return first and not after(first[1], seen) and after(seen, field(info, 'max-deleted-entry-id'))
end
local function below(key, id)  -- {the newest entry at or before ``id``, its digest}, or false: none, or id '0'
  local at = id ~= '0' and redis.call('XREVRANGE', key, id, '-', 'COUNT', 1)[1]
  return at and {at[1], digest(at[2])} or false  -- false, not nil: a reply's array ends at its first nil
end
"""
"""The Lua of ``anew`` and ``below`` (what a reader tells a stream made anew by after ``unread._MAKE`` made its group:
``Unacked.starts_at``), after ``unread.STREAM_ID_LUA`` (its ``field`` and ``after``)."""


def entry_digest(flat: list[bytes]) -> str:
    """A digest of an entry's fields' names and values, as ``ANEW_LUA`` computes it of the entry Redis holds at that id
    (SHA-1 of each one's length, ':' and itself). Not a secret: entries told apart, not authenticated."""
    return hashlib.sha1(b"".join(b"%d:%s" % (len(one), one) for one in flat), usedforsecurity=False).hexdigest()
