"""A consumer's quarantine run (``QuarantineStream.run_of``): drawn in one script (``DRAW``), once per token — a
retry of a draw whose answer was lost, or that draw landing late, returns the run it drew —, leased marking the
consumer answered; and found swept with its consumer (``swept``) — ``intake/departed.py`` deletes the run key of a
consumer it takes for gone, the run so deleted kept in that consumer's own draws' record (``SWEPT``), left to expire,
and the highest of all in ``quarantine.swept_runs_key`` (a floor for every draw, never a fence of a write)."""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any

from redis.exceptions import RedisError

from atp_service.storage.scripts import ACL_LUA

DRAWN_MS = 86_400_000
"""How long a consumer's draws' record (``quarantine.drawn_key``: each draw's token, scored by the run it drew) is
kept past its last draw: far past any retry of one (the next sweep round, the next start) or late landing of one; the
departed sweep leaves it (a draw landing after the sweep returns its run, moving nothing), and it expires."""

DRAW_TRIES = 16
"""The tries of one draw (``draw``), each answered -1 (the run key moved by another's draw, a write taking back a
key Redis lost, or a sweep, between its read and its try), before it gives up (``DrawContended``): each -1 is
another's progress, so this is reached only where the key moves at every try; the reader retries after its backoff
(its start, its sweep round), under the same token."""

SWEPT = "swept"
"""The member of a consumer's draws' record (``quarantine.drawn_key``) scored by its run the departed sweep deleted
(never a draw's token: those are hex): a write of that run, or one before it, finding the run key gone is refused
while this record lives (``quarantine._ONCE``), and a draw at that name starts above it. The consumer's own record,
never one shared: a sweep of one consumer raising a shared highest swept past another's live run whose key Redis lost
(back from older data) had that live run's writes refused until its next sweep round (E8 held, liveness not). Set
in the sweep's script that deletes the run key (one slot): a Redis back from before the sweep holds the run key
again, never the key gone without its record. Kept a day past the sweep (``DRAWN_MS``); past it, the run key gone
again is one Redis lost, as a run at that name is drawn above the shared highest swept all the same
(``quarantine.swept_runs_key``): a late write of the run swept then lands nothing only where its entries are pending
to it no more (claimed from it before the sweep), and takes no run key back (``quarantine._ONCE``)."""

TOKENS_KEPT = 64
"""The draws a consumer's record keeps (the latest runs), and the tokens of a process's draws at one name it keeps
(``QuarantineStream._drawn``): a draw again happens only at a process's start or at a sweep round where a sweep took
its run, so these reach back far past any draw landing late."""

# KEYS: the consumer's run key, the highest run swept of all (``swept_runs_key``), its draws' record (``drawn_key``:
# its run swept too, ``SWEPT``), the group's drawn names (``drawn_names_key``) and, leased, its answered mark
# (``unread.answered_key``). ARGV: the draw's token (one per draw, the same for each of its retries), the mark's life
# (ms), the run key as the drawing process read it just before ('': none), the consumer's name: named in the set with
# the key's INCR, so the departed sweep finds the key of a process gone before its first read made its consumer, or of
# a consumer removed with its group (neither in ``XINFO CONSUMERS``): else there for ever, one with each such start.
# Returns the run drawn, above the run key, the highest swept and its record's runs — or -1, the
# key moved since that read: read it again and draw (``draw``). Once per token: a draw whose answer was lost (a timeout,
# a cancel) is retried with its token, and the retry — or the lost one landing after it — finds its token in the record
# and returns that run, no INCR: drawn again, the key sat past the run in use,
# and every write of it was refused as one of a run before (E8), for as long as the process ran. The record keeps every
# recent draw's token, not the last only, and outlives a sweep: a draw of a process paused past its lease landing after
# another process started at its address and drew (a later run, its fence, E8) moved the key past that one's run, which
# took it for a later process's fence, its writes refused for as long as it ran; and a draw that had not landed before,
# of a process gone since (a crash), landing after the next process at its address drew, moves nothing either: the key
# is past what that process read. A process's own draws never move its key past its run, so a key past it is another's
# draw at its name (a later process, E8: its fence). Leased, a sweeper not yet seeing the process back at its address
# live took its consumer (idle: it draws before it reads) for gone and deleted the run it had just drawn: a write of a
# run before, landing late, took the key missing for one Redis lost and wrote and acknowledged an entry pending to the
# process back (E8). The mark, set with the draw, keeps the consumer (``departed.py``) for ``claim_idle_ms``, by which
# the process is seen live — not always (its members entry lapsed, holding no group; Redis before 7.2 keeps a consumer's
# idle time at a read that delivers nothing): a run swept all the same is refused for good by the write
# (``quarantine._ONCE``), and drawn again (``QuarantineStream.keep_run``).
DRAW = ACL_LUA + """
for k = 1, #KEYS do
  local kind, wanted = redis.call('TYPE', KEYS[k])['ok'], k == 3 and 'zset' or k == 4 and 'set' or 'string'
  if kind ~= wanted and kind ~= 'none' then
    return redis.error_reply('WRONGTYPE ' .. KEYS[k] .. ' holds a ' .. kind .. ', not a ' .. wanted .. ': no run drawn')
  end
end
local swept = redis.call('GET', KEYS[2])
if swept and not tonumber(swept) then
  return redis.error_reply('WRONGTYPE ' .. KEYS[2] .. ' holds no run: no run drawn')
end
local asked = {{'INCR', KEYS[1]}, {'SET', KEYS[1], '1'}, {'SET', KEYS[2], '0'}, {'ZSCORE', KEYS[3], 't'},
  {'ZREVRANGE', KEYS[3], '0', '0', 'WITHSCORES'},
  {'ZADD', KEYS[3], '1', 't'}, {'ZREMRANGEBYRANK', KEYS[3], '0', '-2'}, {'PEXPIRE', KEYS[3], '1'},
  {'SADD', KEYS[4], 'c'}}
if KEYS[5] then asked[#asked + 1] = {'SET', KEYS[5], '1', 'PX', '1'}; asked[#asked + 1] = {'TIME'} end
local refused = denied(asked)
if refused then return refused end
local function marked(run)
  if KEYS[5] then
    local t = redis.call('TIME')
    redis.call('SET', KEYS[5], tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000), 'PX', ARGV[2])
  end
  return run
end
local drawn = redis.call('ZSCORE', KEYS[3], ARGV[1])
if drawn then  -- this draw landed before (its answer lost): the run it drew, the key not moved
  return marked(tonumber(drawn))
end
if (redis.call('GET', KEYS[1]) or '') ~= ARGV[3] then return -1 end  -- another's draw since the read: none here
local run = redis.call('INCR', KEYS[1])  -- a run key holding no number: an error, nothing written
redis.call('SADD', KEYS[4], ARGV[4])  -- with the key: a sweep finds it whatever became of its consumer
if not swept then  -- there for every script naming it (the sweep's): on a migrating slot's source, one gone fails it
  redis.call('SET', KEYS[2], '0')
end
local own = redis.call('ZREVRANGE', KEYS[3], 0, 0, 'WITHSCORES')[2]  -- its last draw, or its own run swept (``SWEPT``)
local floor = math.max(swept and tonumber(swept) or 0, own and tonumber(own) or 0)
if run <= floor then  -- above its own runs whatever became of the shared highest (an eviction, an operator)
  run = floor + 1
  redis.call('SET', KEYS[1], run)
end
redis.call('ZADD', KEYS[3], run, ARGV[1])
redis.call('ZREMRANGEBYRANK', KEYS[3], 0, """ + str(-TOKENS_KEPT - 1) + """)
redis.call('PEXPIRE', KEYS[3], """ + str(DRAWN_MS) + """)
return marked(run)
"""


def drawn_names_key(written: str, group: str) -> str:
    """The names of ``group``'s consumers with a run key (``DRAW`` adds one with its key), beside ``written`` (the
    quarantine stream's ``written_key``: its slot): walked by the departed sweep (``intake/departed.py``), which
    removes a name with its run key, or where it finds no key left."""
    return f"{written}:runs:{group}"


class DrawContended(RedisError):
    """A draw's run key moved between its read and its try at each of ``DRAW_TRIES`` tries: retried after the
    reader's backoff, under the same token (a ``RedisError``: the reading loop's, or the start's, retry)."""


async def draw(client: Any, script: Any, keys: list[str], token: str, answered_ms: int, name: str) -> int:
    """A run drawn (``script``: ``DRAW``) under ``token``: the token of a draw not answered yet (a timeout, a
    cancel) again, its run, however often retried, wherever the lost one landed. Each try names the run key as read
    just before it: one landing after another's draw moved the key draws nothing, and the next try reads again — at
    most ``DRAW_TRIES`` tries, then ``DrawContended``."""
    for _ in range(DRAW_TRIES):
        seen = await client.get(keys[0])
        run = int(await script(keys=keys, args=[token, answered_ms, b"" if seen is None else seen, name]))
        if run >= 0:
            return run
    raise DrawContended(f"{keys[0]}: moved between each read and its draw, {DRAW_TRIES} tries: no run drawn yet")


async def swept(client: Any, keys: tuple[str, str], run: int, tokens: Collection[str]) -> bool:
    """Whether ``run`` (``keys``: its run key, its draws' record) is one the write script refuses for good, to be
    drawn again: its key gone and its record's run swept (``SWEPT``) at or above it — never a key Redis lost, gone
    back to before the draw, where its record holds no run swept at or above it (the write takes it again; a sweep of
    another consumer never fences this one) —, or its key moved past it, or gone with its record past it, by a draw of
    this process itself (``tokens``: each of its draws' at this name, the run's and those before, any of whose answers
    may have been lost) landing late after a sweep had deleted the key (and its record, or the record expired) —
    before the run was drawn again, or after (the record names one of its tokens at that run: another's draw is
    recorded under its own token). Any other key or record is kept: past the run, another process's draw at this
    name (its fence, E8); at or below it, one Redis lost (taken again by the write)."""
    run_key, drawn_key = keys
    held = await client.get(run_key)
    if held is not None:
        if int(held) <= run:
            return False
        drawn = await client.zrangebyscore(drawn_key, int(held), int(held))
        return any(token.decode(errors="replace") in tokens for token in drawn)
    highest = await client.zscore(drawn_key, SWEPT)  # read after: a sweep only raises it
    if highest is not None and run <= int(highest):
        return True
    # Its record past the run (the write refuses it too): its own draw landing late, then a sweep, or another's
    later = await client.zrangebyscore(drawn_key, run + 1, "+inf")
    return any(token.decode(errors="replace") in tokens for token in later)


def tell(again: dict[Any, tuple[int, str]], at: Any, now: int, told: Callable[[int, int, str], None]) -> int:
    """``now``, the run drawn at ``at``; the run before it (``again``: found refused for good, ``swept``) ``told``
    (run before, run now, why) once, here: kept till a draw is answered — one whose answer was lost (a timeout, a
    cancel) drew nothing known, and the next sweep round's tells it (``QuarantineStream.keep_run``)."""
    if (before := again.pop(at, None)) is not None:
        told(before[0], now, before[1])
    return now
