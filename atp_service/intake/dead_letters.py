"""Dead letters of the input streams: why an entry was refused, in words and for machines.

Each dead letter carries ``_reason`` (for people: the field and what is wrong with it), ``_field``
(the field at fault, empty when the entry as a whole is) and ``_code``, one of ``CODES``: the API's
reason names where they fit (``reservation.Reason``), and a few of the input streams' own. The
vocabulary is closed and documented in docs/OPERATIONS.md ("Dead letters"); a new code is a
change of the format operators' tooling reads.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Collection, Sequence
from typing import Any, NamedTuple

from atp_service.intake.unread import as_bytes, refused_key, refused_letters_key
from atp_service.logs import EveryInterval
from atp_service.storage.scripts import ACL_LUA
from reservation import InvalidArgument, Reason

log = logging.getLogger(__name__)

ENTRY = "entry"
"""What a refusal of the entry as a whole names (its bytes, not one of its fields)."""

CODES: dict[str, str] = {
    Reason.INVALID_FIELD.name: "a field is missing, malformed or out of range (`_field` names it)",
    Reason.LIMIT_EXCEEDED.name: "a field's length, or the entry's bytes or names and values, pass a named limit "
                                "of the service",
    Reason.REQUEST_MALFORMED.name: "the bytes of a field the service reads are not UTF-8 (`_field` empty)",
    "FIELD_REPEATED": "a field is named more than once in the entry: which value was meant is not known",
    "TRIMMED_WHILE_PENDING": "a pending entry was trimmed from the stream (no fields, `_field` empty): "
                             "not known to be applied",
    "REFUSED_REPEATEDLY": "its fact was refused for a reason that does not pass with time (`_reason` names it) "
                          "and it was delivered `ingest_max_deliveries` times: not applied",
}
"""Every ``_code`` a dead letter may carry, with its meaning (the table in docs/OPERATIONS.md)."""

ANNOTATIONS = ("_reason", "_field", "_code", "_stream", "_id", "_truncated")
"""The fields a dead letter adds to the entry's own."""
ANNOTATION_NAMES = frozenset(name.encode() for name in ANNOTATIONS)
"""``ANNOTATIONS`` as an entry's field names (bytes)."""

KEPT_FIELDS = 16
"""Fields a dead letter keeps of an entry past ``ingest_max_entry_bytes`` (the first ones)."""
KEPT_BYTES = 256
"""Bytes a dead letter keeps of each name and value of an entry past ``ingest_max_entry_bytes``:
with ``KEPT_FIELDS``, its copy is at most 8 KiB whatever the entry held."""
COPIED_PARTS_MAX = 4_000
"""Names and values a dead letter copies whole at most: an entry with more is kept as one past
``ingest_max_entry_bytes`` is (its dead letter's XADD, inside a script, takes them on Lua's stack: 8,000)."""

TRIMMED_WHILE_PENDING = "entry was trimmed from the stream while pending; not known to be applied"
"""The dead letter of a pending entry found trimmed: the consumer that held it may have applied it,
or may yet (a live one), or not (a dead one)."""


class Why(NamedTuple):
    """Why an entry is dead-lettered: its ``_reason``, ``_field`` and ``_code``."""

    reason: str
    field: str
    code: str


REFUSED_REPEATEDLY = "REFUSED_REPEATEDLY"
"""The ``_code`` of an entry whose fact was refused, at every delivery up to the bound, for a reason that
does not pass with time (``refusals.RefusalBound``)."""

TRIMMED = Why(TRIMMED_WHILE_PENDING, "", "TRIMMED_WHILE_PENDING")


class EntryRefused(InvalidArgument):
    """A refusal only the input-stream format has (a field named twice, bytes not UTF-8): its dead
    letter's ``_code`` is ``code``, one of ``CODES``, rather than a ``Reason``'s name."""

    def __init__(self, field: str, problem: str, code: str) -> None:
        super().__init__(field, problem)
        self.code = code


def why_refused(error: InvalidArgument) -> Why:
    """The dead letter's fields for an entry (or its fact) refused with ``error``."""
    code = error.code if isinstance(error, EntryRefused) else error.reason.name
    field = "" if error.field == ENTRY else error.field
    return Why(error.message, field, code if code in CODES else Reason.INVALID_FIELD.name)


def dead_letter(flat: list[bytes], why: Why, stream: str, entry_id: bytes, max_entry_bytes: int) -> list[Any]:
    """The dead-letter stream's entry, flat [field, value, …] as XADD takes it: the original fields as the
    entry had them — a field named twice keeps each of its values, so that the dead letter replayed as
    it was is refused again, not read as one of them — then the annotations, last, in place of any the
    entry carried (a dead letter replayed as it was gets its own, not the earlier one's). An entry past
    ``max_entry_bytes``, in bytes or in names and values, is not copied whole (the dead-letter stream
    would hold, and Redis send again, what was refused for its size): ``_truncated`` says how many bytes it had."""
    size = sum(map(len, flat))
    cut = size > max_entry_bytes or len(flat) > min(max_entry_bytes, COPIED_PARTS_MAX)  # as ``decode_fact`` does
    kept = [part[:KEPT_BYTES] for part in flat[:2 * KEPT_FIELDS]] if cut else flat
    fields: list[Any] = []
    for name, value in zip(kept[0::2], kept[1::2], strict=True):
        if name not in ANNOTATION_NAMES:  # a replayed dead letter's own annotations: this one's replace them
            fields += (name, value)
    fields += (b"_reason", why.reason, b"_field", why.field, b"_code", why.code, b"_stream", stream, b"_id", entry_id)
    if cut:
        fields += (b"_truncated", size)
    return fields


async def write(client: Any, dead: Sequence[tuple[str, bytes, list[bytes], Why]], to: str, maxlen: int,
                group: str, max_entry_bytes: int, before: dict[tuple[str, bytes], bytes] | None = None,
                refused: Kept | None = None, *, consumer: str, fence: tuple[str, bytes]) -> Written:
    """Each entry's dead letter (``dead``: stream, entry id, fields, why) written to ``to``, trimmed to about
    ``maxlen``, and the entries acknowledged, in one script (``_WRITE``): Redis runs it whole or refuses it
    before its first write. An XACK queued beside the XADDs in a transaction ran even when its XADD failed
    (WRONGTYPE: every command of a MULTI runs), the entry acknowledged with no dead letter anywhere; sent
    after them, it was lost with a reader killed between the two, and the entry, pending still, dead-lettered
    again when read again. Returns the entries read as trimmed (``TRIMMED``) that the stream holds (Redis came
    back from older data since the read): neither dead-lettered nor acknowledged, left pending to be read again —
    and per entry acknowledged, its dead letter's id. ``before``: per entry, the id of the dead letter written for it
    before (refused by the clock, E7, delivered again): not written again while ``to`` holds it, written again where
    it does not (Redis back from older data lost it with the entry's acknowledgement, or trimmed it). ``refused``: the
    entries refused by the clock (E7) or already, kept in Redis as refused in the same script with their letters
    (``refused_kept.py``), and the most kept per stream; also returned, per stream, how many it forgot past that.

    Only an entry pending to ``consumer`` in ``group`` is written, acknowledged and kept refused: one pending to it no
    more was delivered again elsewhere (the group deleted and made again before this write landed, another process
    reading it; or claimed), and the reader that holds it now judges it — a letter written here said refused of a fact
    that reader applied, and kept refused, a later delivery took it as refused (E7, E8). Those are returned
    (``elsewhere``), neither written nor acknowledged. The group gone (NOGROUP: deleted, not made again yet), an entry
    is written as ever: the group made again after this write finds it kept refused, and delivers it as refused.
    ``fence``: the consumer's fence key and the token it holds (``fence.py``); Redis holding another, nothing is
    written nor acknowledged, every entry returned in ``elsewhere`` and ``fenced`` set."""
    keep = refused or Kept(frozenset(), 0)
    args: list[Any] = [maxlen, group, keep.most, consumer, fence[1]]
    for stream, entry_id, fields, why in dead:
        letter = dead_letter(fields, why, stream, entry_id, max_entry_bytes)
        earlier = (before or {}).get((stream, entry_id), b"")
        remember = packed(why, fields) if (stream, entry_id) in keep.entries else ""
        args += [entry_id, int(why is TRIMMED), earlier, remember, len(letter), *letter]
    streams = [stream for stream, _, _, _ in dead]
    keys = [to, *streams, *(refused_key(s, group) for s in streams), *(refused_letters_key(s, group) for s in streams),
            fence[0]]
    kept, ids, lost, away, fenced = await client.register_script(_WRITE)(keys=keys, args=args)
    letters = {(dead[int(i) - 2][0], dead[int(i) - 2][1]): as_bytes(letter)
               for i, letter in zip(ids[0::2], ids[1::2], strict=True)}  # flat: [index, id, index, id, ...]
    forgotten = {dead[int(i) - 2][0]: int(n) for i, n in zip(lost[0::2], lost[1::2], strict=True)}
    return Written({(dead[int(i) - 2][0], dead[int(i) - 2][1]) for i in kept}, letters, forgotten,
                   {(dead[int(i) - 2][0], dead[int(i) - 2][1]) for i in away}, bool(fenced))


class Written(NamedTuple):
    """What a write of dead letters did (``write``)."""

    kept: set[tuple[str, bytes]]
    """Entries read as trimmed that the stream holds: left pending, to be read again."""
    letters: dict[tuple[str, bytes], bytes]
    """Per entry acknowledged, its dead letter's id."""
    forgotten: dict[str, int]
    """Per stream, how many entries kept refused it forgot past the most."""
    elsewhere: set[tuple[str, bytes]]
    """Entries pending to the consumer no more: delivered again elsewhere, neither written nor acknowledged here."""
    fenced: bool
    """Redis held another token in the consumer's fence (``fence.py``): nothing written, all in ``elsewhere``."""


class Kept(NamedTuple):
    """The entries of a write to keep in Redis as refused (``refused_kept.py``), and the most kept per stream."""

    entries: Collection[tuple[str, bytes]]
    most: int


def packed(why: Why, fields: Sequence[bytes]) -> str:
    """``why`` as kept beside a refused entry's letter id (``refused_kept.py``), after the digest of the entry's
    fields (``fingerprint``): its reason last, which may hold any character."""
    return f"{fingerprint(fields)}\n{why.code}\n{why.field}\n{why.reason}"


def fingerprint(fields: Sequence[bytes | str]) -> str:
    """A digest of an entry's fields' names and values: an entry kept refused is told from another given its id later
    (its stream deleted and written anew from low ids by a producer giving its own ids), 32 hex digits."""
    digest = hashlib.blake2b(digest_size=16)
    for one in fields:
        value = as_bytes(one)
        digest.update(len(value).to_bytes(8, "big") + value)
    return digest.hexdigest()


_WRITE = ACL_LUA + """
-- KEYS: the dead-letter stream, then each dead letter's input stream, then each one's set of entries refused, then
-- each one's hash of their letters (``refused_kept.py``), then the consumer's fence (``fence.py``). ARGV: MAXLEN,
-- group, the most entries kept refused per stream, the consumer, its fence's token, then per dead letter: its entry's
-- id, 1 where it was read trimmed, the id of its dead letter written before or '', '' or why it is kept refused (E7),
-- the number of its fields' names and values, those. An entry read trimmed that the stream holds (Redis back from
-- older data since the read) is left pending, neither dead-lettered nor acknowledged: returns {the KEYS indexes of
-- those, then per entry acknowledged its KEYS index and its dead letter's id, flat, then per stream that forgot
-- entries kept refused past the most, a KEYS index and how many, flat, then the KEYS indexes of the entries pending to
-- the consumer no more, then 1 where fenced}. Such an entry was delivered again elsewhere (its group deleted and made
-- again before this script ran, or claimed): not written, acknowledged nor kept refused here — the reader holding it
-- now judges it (E7, E8). The fence holding another token (set anew since this write was sent, which is in doubt: its
-- entries are judged again), nothing is written, every entry returned as pending to the consumer no more. The group
-- gone (NOGROUP), written as ever: the group made again after this script finds it kept refused. One whose dead letter
-- written before the dead-letter stream holds is acknowledged, not written again: its letter, naming its stream and
-- id (an id alone may name another entry's letter, written since Redis came back from older data by a node whose
-- clock was behind).
local dlq, n = KEYS[1], (#KEYS - 2) / 3
local function ours(stream, id)  -- pending to this consumer in the group; NOGROUP: the group gone, not made again yet
  local held = redis.pcall('XPENDING', stream, ARGV[2], id, id, 1, ARGV[4])
  return held['err'] ~= nil or #held > 0
end
local function holds(earlier, stream, id)
  local found = redis.call('XRANGE', dlq, earlier, earlier)
  if #found == 0 then return false end
  local named = {}
  for j = 1, #found[1][2], 2 do named[found[1][2][j]] = found[1][2][j + 1] end  -- annotations last: theirs kept
  return named['_stream'] == stream and named['_id'] == id
end
local kind = redis.call('TYPE', dlq)['ok']
if kind ~= 'none' and kind ~= 'stream' then  -- before any write: nothing dead-lettered, nothing acknowledged
  return redis.error_reply('WRONGTYPE dead-letter stream ' .. dlq .. ' holds a ' .. kind)
end
local unread = denied({{'GET', KEYS[#KEYS]}})  -- the fence unread: refused naming it, not taken for another token
if unread then return unread end
if redis.pcall('GET', KEYS[#KEYS]) ~= ARGV[5] then  -- pcall: a token of another type (a stray key) is none held
  local all = {}
  for i = 2, n + 1 do all[#all + 1] = i end
  return {{}, {}, {}, all, 1}
end
local asked, at = {{'XADD', dlq, 'MAXLEN', '~', '1', '*', 'f', 'v'}}, 6
for i = 2, n + 1 do
  asked[#asked + 1] = {'XACK', KEYS[i], ARGV[2], '0-1'}
  asked[#asked + 1] = {'XPENDING', KEYS[i], ARGV[2], '0-1', '0-1', '1', ARGV[4]}
  asked[#asked + 1] = {'XRANGE', KEYS[i], '0-1', '0-1'}
  local set, named = KEYS[i + n], KEYS[i + 2 * n]
  if ARGV[at + 3] ~= '' then  -- kept refused: its keys checked before any write, as the dead-letter stream's
    for _, one in ipairs({{set, 'zset'}, {named, 'hash'}}) do
      local held = redis.call('TYPE', one[1])['ok']
      if held ~= 'none' and held ~= one[2] then
        return redis.error_reply('WRONGTYPE ' .. one[1] .. ' holds a ' .. held .. ', not a ' .. one[2])
      end
    end
    for _, command in ipairs({{'ZADD', set, '1', 'm'}, {'ZPOPMIN', set, '1'}, {'ZRANGEBYSCORE', set, '0', '1'},
                              {'ZREMRANGEBYSCORE', set, '0', '1'}, {'ZCARD', set}, {'HSET', named, 'f', 'v'},
                              {'HDEL', named, 'f'}}) do
      asked[#asked + 1] = command
    end
  end
  at = at + 5 + tonumber(ARGV[at + 4])
end
asked[#asked + 1] = {'XRANGE', dlq, '0-1', '0-1'}
local refused = denied(asked)  -- an ACL changed since the start: the pcall's XACK refused went on (ACL_LUA)
if refused then return refused end
local ids, kept, letters, sets, away = {}, {}, {}, {}, {}
at = 6
for i = 2, n + 1 do
  local count, earlier, why = tonumber(ARGV[at + 4]), ARGV[at + 2], ARGV[at + 3]
  if ARGV[at + 1] == '1' and #redis.call('XRANGE', KEYS[i], ARGV[at], ARGV[at]) > 0 then
    kept[#kept + 1] = i
  elseif not ours(KEYS[i], ARGV[at]) then
    away[#away + 1] = i
  else
    ids[i] = ARGV[at]
    letters[#letters + 1] = i
    local letter = earlier
    if earlier == '' or not holds(earlier, KEYS[i], ARGV[at]) then
      letter = redis.call('XADD', dlq, 'MAXLEN', '~', ARGV[1], '*', unpack(ARGV, at + 5, at + 4 + count))
    end
    letters[#letters + 1] = letter
    if why ~= '' then  -- kept refused with its letter (E7): whichever process reads it again, it is not judged again
      redis.call('ZADD', KEYS[i + n], string.match(ARGV[at], '^%d+'), ARGV[at])
      redis.call('HSET', KEYS[i + 2 * n], ARGV[at], letter .. '\\n' .. why)
      sets[KEYS[i + n]] = i
    end
  end
  at = at + 5 + count
end
local forgotten = {}
for set, i in pairs(sets) do
  -- Forgotten once no group made again can deliver them: before the stream's oldest entry (trimmed), or all of
  -- them where it holds none. Then past the most kept, the oldest: told, to be counted.
  local first = redis.call('XRANGE', KEYS[i], '-', '+', 'COUNT', 1)
  local below = #first > 0 and ('(' .. string.match(first[1][1], '^%d+')) or '+inf'
  local gone = redis.call('ZRANGEBYSCORE', set, '-inf', below)
  for j = 1, #gone do redis.call('HDEL', KEYS[i + 2 * n], gone[j]) end
  redis.call('ZREMRANGEBYSCORE', set, '-inf', below)
  local over = redis.call('ZCARD', set) - tonumber(ARGV[3])
  if over > 0 then
    local popped = redis.call('ZPOPMIN', set, over)
    for j = 1, #popped, 2 do redis.call('HDEL', KEYS[i + 2 * n], popped[j]) end
    forgotten[#forgotten + 1] = i
    forgotten[#forgotten + 1] = over
  end
end
for i = 2, n + 1 do
  if ids[i] then  -- NOGROUP: the group is gone, the entry pending nowhere
    redis.pcall('XACK', KEYS[i], ARGV[2], ids[i])
  end
end
return {kept, letters, forgotten, away, 0}
"""


DEAD_LETTER_LOG_EVERY_S = 1.0
"""The reader writes at most one ``ingest_dead_lettered`` line this often, the next saying in ``left_out``
how many were left out: any producer can write malformed entries at will, and a line for each (a till
fleet's every sale, after a typo in its integration) flooded the log and buried everything else. The
dead-letter stream and ``atp_dead_lettered_total`` have every one."""


class DeadLetterLines:
    """The reader's ``ingest_dead_lettered`` lines, at most one per ``DEAD_LETTER_LOG_EVERY_S``."""

    def __init__(self) -> None:
        self._lines = EveryInterval(DEAD_LETTER_LOG_EVERY_S)

    def tell(self, stream: str, entry_id: bytes, why: Why) -> None:
        # The reason as a field, not in the message: the text format quotes it, so a producer's field
        # name holding a line break (named in the reason as it was sent) cannot start a line of its own.
        fields = self._lines.fields(event="ingest_dead_lettered", stream=stream,
                                    entry=entry_id.decode(errors="replace"), field=why.field, code=why.code,
                                    reason=why.reason)
        if fields is None:
            return
        log.warning("dead-lettered an input entry", extra=fields)
