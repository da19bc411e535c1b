"""Input-stream entries trimmed away before the consumer group read them, counted by the read that
crosses the gap.

Their facts were never applied and never will be, and Redis says nothing of it to a reader:
XREADGROUP simply goes on from the oldest entry left. A producer's ``MAXLEN`` shorter than the
backlog (the service down for a while, or reading slower than the tills write) loses sales and
receipts that way — on_hand wrong, and units sold that are gone.

A gap can be seen only until a read moves the group's position past it, which may be at once: a
reader blocked in XREADGROUP is served right after the producer's MULTI that added and trimmed. So
every read of new entries is one script (``GroupReader``) that looks at the group's position and
the stream, reads, and counts what the read went past: with nothing deleted after the position,
the entries lost are those the stream no longer holds (``entries-added`` less ``length``) less
those the group had read (``entries-read``). Atomic, so exact whatever other consumers of the group
(other processes) read meanwhile. The number is kept owed in Redis (a hash of the reading consumer's,
beside the first stream: its Redis Cluster slot) until that consumer has counted and logged it: a stop
or a timeout losing the script's reply loses no word of the gap, told at the next read. Redis 7.0
goes on counting the lost entries as unread for good (its ``entries-read`` grows by the entries
delivered, not by those skipped: ``lag`` raised, the next gap counted with this one): the script
sets the group's count right as it crosses (``XGROUP SETID … ENTRIESREAD``). The blocking wait for
new entries delivers nothing (``XREAD`` after the group's position), so no read escapes the count.

The same script answers the group's made-again mark (``again.py``) with the entries it delivers, and
forgets it once nothing at or before it can come again; the group is made with it (``_MAKE``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

from atp_service.config_values import MADE_AGAIN, REFUSED, TRIMMED_UNREAD
from atp_service.intake.anew import ANEW_LUA
from atp_service.storage.lua_counts import no_count
from atp_service.storage.resp import as_text
from atp_service.storage.scripts import ACL_LUA
from atp_service.tasks import exception_seen, finish_uncancelled

log = logging.getLogger(__name__)

STREAM_ID_LUA = """
local function field(flat, name)
  for i = 1, #flat, 2 do if flat[i] == name then return flat[i + 1] end end
  return false
end
local function less(a, b)  -- decimal strings without leading zeros, past what a Lua number holds
  if #a ~= #b then return #a < #b end
  return a < b
end
local function after(a, b)  -- stream id a > b
  local am, as = string.match(a, '^(%d+)-(%d+)$')
  local bm, bs = string.match(b, '^(%d+)-(%d+)$')
  if am ~= bm then return less(bm, am) end
  return less(bs, as)
end
"""

ANSWERED_MS = 600_000
"""How long a read's answered mark (``answered_key``) is kept: far past any read's acknowledgement."""

_READ = """
local ANSWERED_MS = """ + str(ANSWERED_MS) + """
-- KEYS: the input streams, then each one's made-again mark (``again.py``), then this consumer's owed hash, then its
-- answered mark (``answered_key``: set where that hash is answered non-empty), then the group's set of the consumers
-- that owed a count (``owing_key``: the sweep's, ``departed.py``). ARGV: group, consumer, count. Returns
-- {the XREADGROUP reply or false, the owed hash (HGETALL: stream -> entries lost, stream..'\\n' -> the position
-- before the first gap) with the gaps this read crossed added, {position per stream}, {mark per stream, or false}}.
local group, consumer, count = ARGV[1], ARGV[2], ARGV[3]
local owing = table.remove(KEYS)
local answered = table.remove(KEYS)
local owed = table.remove(KEYS)
local n = #KEYS / 2
""" + STREAM_ID_LUA + ACL_LUA + """
-- Every key written or read after XREADGROUP is checked before it: Redis undoes nothing of a script that fails
-- half-way, and the owed hash or a mark of another type (an operator's key, a restore of other data) failed it
-- after the read had moved the group past a gap, its entries never counted nor said (their facts never applied).
local kind = redis.call('TYPE', owed)['ok']
if kind ~= 'hash' and kind ~= 'none' then
  return redis.error_reply('WRONGTYPE ' .. owed .. ' holds a ' .. kind .. ', not a hash: nothing read')
end
for i = 1, kind == 'hash' and n or 0 do  -- each stream's count there: one HINCRBY takes (no leading zero, < 10^18)
  local held = redis.call('HGET', owed, KEYS[i])
  if held and """ + no_count("held", signed=True) + """ then
    return redis.error_reply('WRONGTYPE ' .. owed .. ' holds no count for ' .. KEYS[i] .. ': nothing read')
  end
end
kind = redis.call('TYPE', owing)['ok']
if kind ~= 'set' and kind ~= 'none' then
  return redis.error_reply('WRONGTYPE ' .. owing .. ' holds a ' .. kind .. ', not a set: nothing read')
end
for i = n + 1, 2 * n do
  kind = redis.call('TYPE', KEYS[i])['ok']
  if kind ~= 'none' and (kind ~= 'string' or not string.match(redis.call('GET', KEYS[i]), '^%d+%-%d+$')) then
    return redis.error_reply('WRONGTYPE ' .. KEYS[i] .. ' holds no entry id: nothing read')
  end
end
-- So is every command after XREADGROUP asked of the ACL (``ACL_LUA``): one taken away while serving, the read past
-- a gap, its HINCRBY refused, its entries never counted.
local asked = {{'HINCRBY', owed, KEYS[1], '1'}, {'HSETNX', owed, 'f', 'v'}, {'HGETALL', owed},
               {'SET', answered, '1', 'PX', '1'}, {'TIME'}, {'SADD', owing, consumer}}  -- TIME: the answered mark's
for i = 1, n do
  asked[#asked + 1] = {'XGROUP', 'SETID', KEYS[i], group, '0-0', 'ENTRIESREAD', '0'}
  asked[#asked + 1] = {'XPENDING', KEYS[i], group, '-', '+', '1'}
  asked[#asked + 1] = {'GET', KEYS[n + i]}
  asked[#asked + 1] = {'DEL', KEYS[n + i]}
end
local refused = denied(asked)
if refused then return refused end
local gaps, positions, args = {}, {}, {'XREADGROUP', 'GROUP', group, consumer, 'COUNT', count, 'STREAMS'}
for i = 1, n do
  local key = KEYS[i]
  args[#args + 1] = key
  positions[i] = '0-0'
  if redis.call('EXISTS', key) == 1 then  -- else the read says NOGROUP
    local mine = false
    for _, g in ipairs(redis.call('XINFO', 'GROUPS', key)) do
      if field(g, 'name') == group then mine = g end
    end
    if mine then
      local at, info = field(mine, 'last-delivered-id'), redis.call('XINFO', 'STREAM', key)
      local first, deleted = field(info, 'first-entry'), field(info, 'max-deleted-entry-id')
      -- A gap: the oldest entry left is past the position. Entries deleted (XDEL) after the
      -- position are not trimmed ones, and Redis no longer tells them apart: not counted.
      if first and after(first[1], at) and not after(deleted, at) then
        -- entries-read: none when Redis cannot tell; a group that read nothing yet has read 0.
        local read = field(mine, 'entries-read') or (at == '0-0' and 0)
        gaps[key] = {at, read, field(info, 'entries-added') - field(info, 'length')}
      end
      positions[i] = at
    end
  end
end
for _ = 1, n do args[#args + 1] = '>' end
local reply = redis.call(unpack(args))
for _, got in ipairs(reply or {}) do
  local key, rows = got[1], got[2]
  local gap = gaps[key]
  if gap and #rows > 0 then  -- crossed: the group has now read the gone entries and these
    local before_first, read = gap[3], gap[2]
    -- Owed until the reader says it told them (ACK below): a reply lost (a stop, a timeout) loses nothing.
    local lost = read and math.max(0, before_first - read) or 0
    if lost > 0 then
      redis.call('HINCRBY', owed, key, lost)
      redis.call('HSETNX', owed, key .. '\\n', gap[1])
      redis.call('SADD', owing, consumer)  -- found by the sweep even where its group, and it, were deleted since
    end
    redis.call('XGROUP', 'SETID', key, group, rows[#rows][1], 'ENTRIESREAD', before_first + #rows)
  end
  for i = 1, n do if KEYS[i] == key and #rows > 0 then positions[i] = rows[#rows][1] end end
end
local marks = {}
for i = 1, n do
  local mark = redis.call('GET', KEYS[n + i])
  -- Forgotten once no entry at or before it can come again: the group at or past it, none pending up to it.
  if mark and not after(mark, positions[i]) and #redis.call('XPENDING', KEYS[i], group, '-', mark, 1) == 0 then
    redis.call('DEL', KEYS[n + i])
    mark = false
  end
  marks[i] = mark
end
local owes = redis.call('HGETALL', owed)
if #owes > 0 then  -- answered, to be told: a sweep meanwhile must not move it too (``departed.py``), whatever
  -- Redis says of this consumer's idle time (before 7.2 a read that delivers nothing leaves it as it was)
  local t = redis.call('TIME')
  redis.call('SET', answered, tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000), 'PX', ANSWERED_MS)
end
return {reply or false, owes, positions, marks}
"""

_ACK = """
-- KEYS: the owed hash. ARGV: stream, entries told, ... Forgets what was told (more may be owed since). A stream no
-- longer owed (its count told twice, forgotten by the first) is left alone, and nothing follows the HDEL that empties
-- the hash (HLEN counted down): on a Redis Cluster slot being migrated the source node fails a script's command on a
-- key gone since it began (a non local key), the read's reply dropped with it.
local left = redis.call('HLEN', KEYS[1])
for i = 1, #ARGV, 2 do
  if left == 0 then break end
  if redis.call('HEXISTS', KEYS[1], ARGV[i]) == 1
      and redis.call('HINCRBY', KEYS[1], ARGV[i], 0 - tonumber(ARGV[i + 1])) <= 0 then
    left = left - redis.call('HDEL', KEYS[1], ARGV[i], ARGV[i] .. '\\n')
  end
end
"""


REMADE_GROUP_COUNT_MAX = 10_000
"""The most entries after its start a consumer group made again is counted over (one ``XRANGE`` in
Redis, which answers nothing else meanwhile). Past it, Redis has no ``entries-read`` for the group
until it catches up, and a gap crossed before then is not counted."""

_MAKE = """
-- KEYS: the stream, its made-again mark, the quarantine stream's set of facts written, the stream's entries refused
-- (``refused_key``), and where ARGV has tokens the consumer's token beside the stream (``bounds.bound_key``). ARGV:
-- group, '0' or the id to read after, the most entries after it to count, the newest entry read there or '', its
-- digest or '' (``anew.py``), then token, id to read after, ... Returns {1: made now, 0: there already; the mark, or
-- false; the id read after; 1: the stream made anew; ``anew.below`` it}. Made again, the group reads after the id told
-- with the token Redis holds (``bounds.py``: a bound used only while Redis holds its write), else ARGV[2].
-- Made at an id, a group has no entries-read (Redis cannot tell how many entries reach the id), and a read crossing a
-- gap then counts none of the entries lost. Where none after the id is gone (trimmed or deleted), its count is every
-- entry ever added less those still after the id.
local key, mark, written, group, start, most = KEYS[1], KEYS[2], KEYS[3], ARGV[1], ARGV[2], tonumber(ARGV[3])
""" + STREAM_ID_LUA + ANEW_LUA + ACL_LUA + """
local refused = denied({{'XINFO', 'STREAM', key}, {'EXISTS', written}, {'EXISTS', KEYS[4]}, {'DEL', mark},
                        {'SET', mark, '0-1'}})
if refused then return refused end  -- an ACL changed since the start: the group made, its mark refused (ACL_LUA)
local was = (ARGV[4] ~= '' and anew(key, ARGV[4], ARGV[5])) and 1 or 0  -- here: none made anew after it was asked
if #ARGV > 5 and was == 0 then  -- pcall: a token of another type (a stray key) or one denied is none held
  local held = redis.pcall('GET', KEYS[5])
  for i = 6, #ARGV, 2 do
    if ARGV[i] == held then start = ARGV[i + 1] end
  end
end
local below = below(key, start)
local create = {'XGROUP', 'CREATE', key, group, start, 'MKSTREAM'}
if start ~= '0' and redis.call('EXISTS', key) == 1 then
  local info = redis.call('XINFO', 'STREAM', key)
  local first = field(info, 'first-entry')
  if first and not after(first[1], start) and not after(field(info, 'max-deleted-entry-id'), start) then
    local later = redis.call('XRANGE', key, '(' .. start, '+', 'COUNT', most + 1)
    if #later <= most then
      create[#create + 1] = 'ENTRIESREAD'
      create[#create + 1] = field(info, 'entries-added') - #later
    end
  end
end
local made = redis.pcall(unpack(create))
if type(made) == 'table' and made['err'] then
  if string.find(made['err'], 'BUSYGROUP', 1, true) then return {0, redis.call('GET', mark), start, was, below} end
  return made  -- any other refusal, as the error reply itself
end
-- In the same script: every reader is told (the read's reply) that entries up to it may come again. None
-- where the quarantine stream holds no fact (a first start's) and no entry of the stream was refused as stamped in
-- the future (E7): no entry up to it was quarantined or refused, and one quarantined or refused later is one the
-- group made now delivered, its entry acknowledged with it.
local newest = field(redis.call('XINFO', 'STREAM', key), 'last-generated-id')
if newest == '0-0' or (redis.call('EXISTS', written) == 0 and redis.call('EXISTS', KEYS[4]) == 0) then
  redis.call('DEL', mark)
  return {1, false, start, was, below}
end
redis.call('SET', mark, newest)
return {1, newest, start, was, below}
"""


def made_again_key(stream: str, group: str) -> str:
    """The mark of ``group`` made again on ``stream`` (``again.py``): beside the stream (its hash tag, the
    same Redis Cluster slot), the stream's newest entry id when the group was made."""
    return f"{stream}:{MADE_AGAIN}:{group}"


def refused_key(stream: str, group: str) -> str:
    """The set of ``stream``'s entries ``group`` dead-lettered as stamped in the future (E7), scored by their ids' time
    (``refused_kept.py``): beside the stream (its hash tag, the same Redis Cluster slot)."""
    return f"{stream}:{REFUSED}:{group}"


def refused_letters_key(stream: str, group: str) -> str:
    """Beside ``refused_key``: per entry there, its dead letter's id and why it was refused (``refused_kept.py``)."""
    return f"{refused_key(stream, group)}:letters"


def answered_key(owed: str) -> str:
    """The mark, beside an owed hash (its hash tag), of when its consumer's read last answered it non-empty (Redis's
    clock, ms): its counts being told by that consumer, whose acknowledgement follows, so that no sweep moves them
    meanwhile to be told a second time (``departed.py``). Gone after ``ANSWERED_MS``, or with the hash swept."""
    return f"{owed}:answered"


def owing_key(stream: str, group: str) -> str:
    """The set, beside the first input stream (its hash tag), of the consumers of ``group`` whose reads counted entries
    trimmed unread into their owed hash, or whose sweeps moved a departed one's count there: the sweep of departed
    consumers (``departed.py``) finds them there too — a consumer is in no group once its group was deleted (and made
    again), its count still owed. A name stays until a sweep removes it (its process gone) or finds nothing of it left.
    Each consumer's hash (``trimmed_unread_key``) is this key, ':' and its name: the sweep reads its own name there."""
    return f"{stream}:{TRIMMED_UNREAD}:{group}"


def trimmed_unread_key(stream: str, group: str, consumer: str) -> str:
    """The hash of the counts ``consumer`` of ``group`` owes of entries trimmed unread: beside ``stream``, the first
    input stream (its hash tag: the same Redis Cluster slot), this consumer's own — another consumer's gaps are told
    by it (or by its successor under the same name)."""
    return f"{stream}:{TRIMMED_UNREAD}:{group}:{consumer}"


async def make_group_marked(client: Any, stream: str, group: str, start: bytes, written: str, bound: str | None = None,
                            tagged: Sequence[tuple[bytes, bytes]] = (), seen: tuple[bytes, str] | None = None
                            ) -> tuple[bool, bytes | None, bytes, bool, tuple[bytes, str] | None]:
    """``resp.make_group`` after ``start`` (``0``, or a full ``ms-seq`` id) — or after the id told with the token
    ``bound`` holds, of ``tagged`` (token, id), but in a stream made anew since ``seen`` was read (``anew.py``) — the
    group's count of entries read set where it can be known: else the first gap it crosses goes uncounted and unlogged
    — facts lost with no alert (ATPInputTrimmedUnread). Whether it was made now, the group's made-again mark (set now
    where ``written``, the quarantine stream's set, holds any fact or ``refused_key`` any entry, or the one it has:
    ``_MAKE``), the id it was made after, whether the stream was made anew, and the newest entry at or before that id
    with its fields' digest (None: none, or made from the start)."""
    keys = [stream, made_again_key(stream, group), written, refused_key(stream, group),
            *([bound] if tagged and bound is not None else [])]
    pairs = [one for pair in tagged for one in pair] if bound is not None else []
    made, mark, after, anew, below = await client.register_script(_MAKE)(
        keys=keys, args=[group, start, REMADE_GROUP_COUNT_MAX, *(seen or (b"", "")), *pairs])
    return (bool(made), None if mark is None else as_bytes(mark), as_bytes(after), bool(anew),
            None if not below else (as_bytes(below[0]), as_text(below[1])))


def as_bytes(value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()


class GroupReader:
    """Reads new entries of the input streams for one consumer of the group, counting (``counter``,
    by stream) and logging the entries each read finds were trimmed before the group read them."""

    def __init__(self, client: Any, streams: list[str], group: str, consumer: str, counter: Any) -> None:
        self._client = client
        self._streams = streams
        self._group = group
        self._consumer = consumer
        self._counter = counter
        self.owed_key = trimmed_unread_key(streams[0], group, consumer)
        self._owing = owing_key(streams[0], group)
        self._marks = [made_again_key(stream, group) for stream in streams]
        self.marks: dict[str, bytes | None] = {}
        """Per stream, its group's made-again mark as the last read found it (None: none, or forgotten now)."""
        self._script: Any = None  # registered at the first read
        self._ack: Any = None

    async def read(self, count: int, block_ms: int | None) -> Any:
        """Up to ``count`` new entries per stream, as XREADGROUP answers (None: none). ``block_ms``:
        with none yet, wait for one that long (an XREAD after the group's position: it delivers
        nothing, the read after it does), then read once more."""
        reply, positions = await self._read_once(count)
        if reply or block_ms is None:
            return reply
        await self._client.execute_command("XREAD", "COUNT", 1, "BLOCK", block_ms, "STREAMS",
                                           *self._streams, *positions)
        return (await self._read_once(count))[0]

    async def _read_once(self, count: int) -> tuple[Any, list[Any]]:
        if self._script is None:
            self._script, self._ack = self._client.register_script(_READ), self._client.register_script(_ACK)
        reply, owed, positions, marks = await self._script(keys=[*self._streams, *self._marks, self.owed_key,
                                                                 answered_key(self.owed_key), self._owing],
                                                           args=[self._group, self._consumer, count])
        self.marks = {stream: None if mark is None else as_bytes(mark)
                      for stream, mark in zip(self._streams, marks, strict=True)}
        if owed:  # rare: a gap crossed now, or one whose word a stop or a timeout lost before
            told = self._tell_owed(owed)
            # Forgotten only once told, whole even if a stop cancels the reader meanwhile (a word
            # lost here is told again at the next read: counted twice rather than never).
            forget = asyncio.ensure_future(self._ack(keys=[self.owed_key], args=told))
            forget.add_done_callback(exception_seen)  # a stop that gave up waiting: no "never retrieved" line
            await finish_uncancelled(forget)
        return reply, positions

    def _tell_owed(self, owed: list[Any]) -> list[Any]:
        """Each stream's entries owed told (``_tell``); (stream, entries, ...) for ``_ACK``."""
        fields = {as_text(owed[n]): as_text(owed[n + 1]) for n in range(0, len(owed), 2)}
        told: list[Any] = []
        for stream, lost in fields.items():
            if not stream.endswith("\n"):
                self._tell(stream, int(lost), fields.get(stream + "\n", "?"))
                told += [stream, lost]
        return told

    def _tell(self, stream: str, lost: int, after: str) -> None:
        if lost <= 0:
            return
        self._counter.labels(stream).inc(lost)
        log.error("input stream %s: %d entries were trimmed from the stream before consumer group %s read "
                  "them (after entry %s): their facts were never applied; the stream's MAXLEN is shorter "
                  "than the backlog", stream, lost, self._group, after,
                  extra={"event": "ingest_trimmed_unread", "stream": stream, "entries": lost, "after": after})
