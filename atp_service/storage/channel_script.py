"""The channel writer script and its refusals: one call appends every channel's updates to its stream and records
them in its state hash, or changes nothing (``ChannelStore.write``). Its checks come before any change, and a refusal
is certain (``WriteRefused``), unlike a timeout; one that says Redis lost versions this service published is
``StreamLost`` (C3, C4, R7).
"""

from __future__ import annotations

import re

from redis.exceptions import RedisError, ResponseError

from atp_service.storage.channel_wire import (
    FOLLOWS_ARG,
    LOCATION_ARG,
    MARKER_ARG,
    SETTLED,
    SKU_ARG,
    STATE_ARG,
    STATE_SEP,
    VERSION_ARG,
    xadd_arguments,
    xadd_marker_arguments,
)
from atp_service.storage.durability import append_failure_reason
from atp_service.storage.nodes import Script
from atp_service.storage.scripts import ACL_LUA, FENCE_LUA, HANDED_OUT_LUA

# Every key shares the channel feeds' hash tag (keys.py): one slot on a cluster.
# KEYS: the owner key, the fence key, then stream and state hash per channel; ARGV: this instance's
# epoch, the desk's fence token, then maxlen, channel, msgpack list of updates per channel. Fenced
# like the log (log.py): an instance replaced by a newer one publishes nothing more; and fenced
# again by the token: a write sent before the desk's last ``fence`` is refused (STALE), so a write
# in doubt cannot land after the desk settled it. Every check comes before the first change — each
# stream's newest id too (TAKEN: a version already in the stream; LOST: an entry following on from one the stream no
# longer holds, a settle's marker linked above the newest id Redis handed out there, or a start's marker on a stream
# whose last id went below the one the start read — a loss between the start's read and its first write — all
# ``StreamLost``), and every
# key's type (KEYTYPE: a stream or state hash key holding another type, which
# would fail the script half-way, its streams written and its hashes not), and that the Redis user may still run
# each XADD and HSET on its key (DENIED, ``ACL_LUA``: an ACL taken away while serving refused the HSET after the XADDs
# landed, the desk took the versions found in the stream for published while the state hash kept the values before
# them, C4) — so a refused write changed nothing, in any channel: a refusal is never part of a landing.
# Numbers travel as strings: Lua 5.1 would print large ones in exponent form. ``published_at`` is
# Redis's clock when the entry was written: the moment the value became visible.
_WRITE = FENCE_LUA + ACL_LUA + HANDED_OUT_LUA + """
-- The id a marker (item) needs Redis to have handed out in its stream, false for none: a settle's (SETTLED), the
-- version it links to, on a stream holding an entry (newest; one made anew empty is no loss); a start's, the newest
-- id Redis had handed out there when the run read it (StartMarker.reached): below it, Redis lost versions since.
local function reached(item, newest)
  if item[$MARKER] == '' or item[$STATE] == '' then return false end
  if item[$STATE] == '$SETTLED' then return newest and tonumber(item[$FOLLOWS]) end
  return tonumber(item[$STATE])
end
local fence = tonumber(redis.call('GET', KEYS[2]) or '0')
if fence > tonumber(ARGV[2]) then
  return redis.error_reply('STALE channel writer token ' .. ARGV[2] .. ' was fenced by ' .. fence)
end
local n = (#KEYS - 2) / 2
local batches = {}
for k = 3, #KEYS do
  local kind, want = redis.call('TYPE', KEYS[k])['ok'], (k % 2 == 1) and 'stream' or 'hash'
  if kind ~= want and kind ~= 'none' then
    return redis.error_reply('KEYTYPE ' .. KEYS[k] .. ' holds a ' .. kind .. ', not a ' .. want .. ': nothing written')
  end
end
local writes = {}
for k = 3, #KEYS, 2 do
  writes[#writes + 1] = {'XADD', KEYS[k], 'MAXLEN', '~', '1', '1-0', 'f', 'v'}
  writes[#writes + 1] = {'HSET', KEYS[k + 1], 'f', 'v'}
end
local refused = denied(writes)
if refused then return refused end
for c = 0, n - 1 do
  local stream = KEYS[2 * c + 3]
  local items = cmsgpack.unpack(ARGV[3 * c + 5])
  local top = redis.call('XREVRANGE', stream, '+', '-', 'COUNT', 1)
  local newest = #top > 0 and #items > 0 and tonumber(string.match(top[1][1], '^%d+'))
  if newest and newest >= tonumber(items[1][$VERSION]) then
    return redis.error_reply('TAKEN ' .. stream .. ': version ' .. items[1][$VERSION] .. ' is not after ' .. top[1][1])
  end
  -- An entry deleted by hand (XDEL) is no loss: Redis handed its id out; a reader that read it goes on, one before
  -- it meets the hole and is told to re-snapshot (C3).
  if newest and items[1][$FOLLOWS] == '' and newest + 1 < tonumber(items[1][$VERSION]) and
      tonumber(handed_out(stream)) + 1 < tonumber(items[1][$VERSION]) then
    return redis.error_reply('LOST ' .. stream .. ': version ' .. items[1][$VERSION] .. ' follows on from the one ' ..
                             'before it, and the stream ends at ' .. top[1][1])
  end
  -- Nothing of the channel at all (no stream, no state hash: Redis back from data saved before its first entry) is
  -- a loss too; a stream deleted alone keeps the values in the state hash, and the write goes on.
  if #items > 0 and not newest and items[1][$FOLLOWS] == '' and tonumber(items[1][$VERSION]) > 1 and
      redis.call('EXISTS', stream, KEYS[2 * c + 4]) == 0 then
    return redis.error_reply('LOST ' .. stream .. ': version ' .. items[1][$VERSION] .. ' follows on from the one ' ..
                             'before it, and Redis holds nothing of the channel')
  end
  local floor = #items > 0 and reached(items[1], newest)
  local handed = floor and (redis.call('EXISTS', stream) == 1 and handed_out(stream) or '0')
  if handed and tonumber(handed) < floor then
    return redis.error_reply('LOST ' .. stream .. ': version ' .. items[1][$VERSION] .. ' follows ' ..
                             items[1][$FOLLOWS] .. ', and the stream ends at ' .. handed .. ', below ' .. floor)
  end
  batches[c + 1] = items
end
local t = redis.call('TIME')
local now = t[1] .. string.format('%03d', math.floor(t[2] / 1000))
for c = 0, n - 1 do
  local stream, state = KEYS[2 * c + 3], KEYS[2 * c + 4]
  local maxlen, channel = ARGV[3 * c + 3], ARGV[3 * c + 4]
  local fields = {}
  for i, u in ipairs(batches[c + 1]) do
    if u[$FOLLOWS] == '' then
      redis.call('XADD', stream, 'MAXLEN', '~', maxlen, u[$VERSION] .. '-0', $XADD_FIELDS)
    elseif u[$MARKER] == '' then  -- a run's first entry: the version it follows (channel_wire.FOLLOWS)
      redis.call('XADD', stream, 'MAXLEN', '~', maxlen, u[$VERSION] .. '-0', $XADD_LINKED)
    else  -- a start's marker: no update, so nothing in the state hash (channel_wire.MARKER)
      redis.call('XADD', stream, 'MAXLEN', '~', maxlen, u[$VERSION] .. '-0', $XADD_MARKER)
    end
    if u[$MARKER] == '' then
      fields[#fields + 1] = u[$SKU] .. '$SEP' .. u[$LOCATION]
      fields[#fields + 1] = u[$STATE]
    end
    if #fields >= 1000 then
      redis.call('HSET', state, unpack(fields))
      fields = {}
    end
  end
  if #fields > 0 then
    redis.call('HSET', state, unpack(fields))
  end
end
return n
"""


def _with_layout(script: str) -> str:
    """The writer script with the entry layout of ``channel_wire`` filled in (not written out here)."""
    for name, value in (("$XADD_FIELDS", xadd_arguments("u")), ("$XADD_LINKED", xadd_arguments("u", follows=True)),
                        ("$XADD_MARKER", xadd_marker_arguments("u")), ("$MARKER", str(MARKER_ARG)),
                        ("$FOLLOWS", str(FOLLOWS_ARG)), ("$VERSION", str(VERSION_ARG)),
                        ("$SKU", str(SKU_ARG)), ("$LOCATION", str(LOCATION_ARG)), ("$STATE", str(STATE_ARG)),
                        ("$SEP", STATE_SEP), ("$SETTLED", SETTLED)):
        script = script.replace(name, value)
    return script


WRITE = _with_layout(_WRITE)
WRITE_SCRIPT = Script(WRITE)

REFUSALS = ("FENCED", "STALE", "TAKEN", "KEYTYPE", "DENIED")


class StreamLost(Exception):
    """A channel stream no longer holds the version a write follows on from (LOST; nothing written): Redis came back
    from older data while the service ran. Written on unlinked, the next start's marker followed that write, and a
    reader that had read the lost versions crossed it untold, keeping values the restarted desk knows nothing of (C3,
    C4). No retry cures it: the desk reads every channel again from what Redis holds and links its versions there
    (``ChannelDesk._relink``), as a start does."""


class WriteRefused(RedisError):
    """The write script refused the whole write before changing anything (FENCED: a newer instance
    owns the keyspace; STALE: the desk fenced since this write was sent; TAKEN: a version is already
    in the stream; KEYTYPE: a channel's stream or state hash key holds another type, written by something
    else than the service: the desk's writes are refused until it is removed; DENIED: the Redis user may no
    longer run a command of it, its ACL changed while serving). Certain, unlike a
    timeout: nothing of it landed and nothing of it ever will."""


_KEYTYPE = re.compile(r"^KEYTYPE (.+) holds a \w+, not a (?:stream|hash): nothing written$", re.S)


def wrong_type_key(error: BaseException) -> str | None:
    """The key a KEYTYPE refusal names (None: not one)."""
    found = _KEYTYPE.match(str(error)) if isinstance(error, WriteRefused) else None
    return found[1] if found else None


def write_failure_reason(error: BaseException) -> str:
    """Why a channel write (or the fence of its settle) failed, one of ``metrics.APPEND_FAILURE_REASONS``,
    as for the log's appends: the script's FENCED refusal is ``fenced`` (a newer instance owns the
    keyspace), its STALE and TAKEN ``refused``; a full Redis ``out_of_memory``."""
    if isinstance(error, WriteRefused) and str(error).startswith("FENCED"):
        return "fenced"
    return append_failure_reason(error)


def refusal_of(error: ResponseError) -> WriteRefused | StreamLost | None:
    """The script's refusal ``error`` says (None: another error, the write in doubt until fenced)."""
    said = str(error)
    if said.startswith(REFUSALS):
        return WriteRefused(said)
    if said.startswith("LOST"):
        return StreamLost(f"{said}: Redis lost versions this service published (back from older data, a failover to "
                          "a replica behind)")
    return None

