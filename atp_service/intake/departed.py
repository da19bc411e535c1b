"""Consumers of the input streams' group whose process is gone for good, removed, what they owed told by a live one.

Under leases each process reads as ``<consumer_name>@<advertised address>``. One that never comes back at that
address (a pod rescheduled with a new IP, a host replaced, a scale-down) leaves its consumer in the group and, where it
had crossed a gap of entries trimmed unread, the count it owed in its own hash (``unread.trimmed_unread_key``), which
only that consumer tells and forgets: those facts lost for good were never said (no ``ingest_trimmed_unread``, no
``atp_ingest_trimmed_unread_total``: E6 — nothing dropped silently), and the hash and the consumer stayed for good, one
more of each with every new address. Its pending entries are taken over already (``claims.py``, after
``claim_idle_ms``).

So a live reader, at each claim, sweeps the group: a consumer named for an address no live process has (not a member,
holding no group) — among the group's consumers, or among those whose reads counted a gap or whose sweeps moved a
count (``unread.owing_key``: one whose group was deleted and made again is in no group, its count still owed; removed
from that set with it), or among those with a run key (``runs.drawn_names_key``: named by the draw, before the first
read makes the consumer, so one whose process died in between, or one removed with its group, is found; its key gone,
removed from that set too) —, is gone
once, on every input stream, nothing is pending under it and it has been idle (no read, no claim) at least
``claim_idle_ms``. One script (``_SWEEP``) checks that and, for each consumer gone, moves its owed counts into the
sweeper's own hash, deletes its hash and removes it from the group (``XGROUP DELCONSUMER``): the sweeper's next read
tells them as its own (``GroupReader``, whose answer a stop or a timeout cannot lose). Atomic, so told once (E8): the
owner coming back at that moment either read before (its read makes it idle no longer: kept) or reads after (its hash
gone: nothing to tell, its consumer made again); two sweepers cannot both move it. A read that delivers nothing leaves
the consumer's idle time as it was before Redis 7.2, yet answers the owed hash, which its reader then tells: that read
marks the hash answered (``unread.answered_key``), and the sweep keeps a consumer whose hash was answered within
``claim_idle_ms`` (moved then, its counts were told by both). Its run beside the quarantine stream
(``quarantine.run_key``, one per name) is deleted with it, the run so deleted kept in its own draws' record
(``runs.SWEPT``, left to expire) and the highest of all in one key (``quarantine.swept_runs_key``, a floor of every
draw): a process back under that name draws its run above it, so a quarantine write of the deleted run landing late
writes and acknowledges nothing (E8) while that record lives (``runs.DRAWN_MS``: past it, taken for a run key Redis
lost, refused only by its entries pending to it no more), and a sweep of one consumer never fences another's live run. A
process swept all the same while it runs (not seen live past its draw's mark) draws its run again at its next sweep
(``kept_run``). Its draws' record (``quarantine.drawn_key``) is left to expire: a draw of it landing late returns
the run it drew, never moving the key past the run of a process started at that name since (its fence, E8).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection
from typing import Any

from redis.exceptions import ResponseError

from atp_service.intake import runs
from atp_service.intake.quarantine import QuarantineStream, drawn_key, run_key, swept_runs_key, written_key
from atp_service.intake.unread import ANSWERED_MS, STREAM_ID_LUA, answered_key, owing_key, trimmed_unread_key
from atp_service.storage.lua_counts import no_count
from atp_service.storage.resp import as_text, no_such_key
from atp_service.storage.scripts import ACL_LUA

log = logging.getLogger(__name__)

SWEPT_AT_ONCE = 100
"""Consumers one script call looks at (Redis answers nothing else meanwhile)."""

_SWEEP = """
-- KEYS: the input streams, then the sweeper's owed hash, the highest run swept (``quarantine.swept_runs_key``), the
-- group's set of consumers owing (``unread.owing_key``), its drawn names (``runs.drawn_names_key``: each with a run
-- key, its consumer perhaps in no group: gone before its first read, or removed with its group), then each candidate's
-- owed hash, its answered mark
-- (``unread.answered_key``), its run beside the quarantine stream (``quarantine.run_key``) and its draws' record
-- (``quarantine.drawn_key``: never deleted; its run swept, ``runs.SWEPT``, set there, left to expire). ARGV: group,
-- least idle ms, then each candidate's name. Returns {name, entries moved} of each consumer removed.
local group, least = ARGV[1], tonumber(ARGV[2])
local n = #KEYS - 4 * (#ARGV - 2) - 4
local mine, swept, owing, names = KEYS[n + 1], KEYS[n + 2], KEYS[n + 3], KEYS[n + 4]
local me = string.sub(mine, #owing + 2)  -- the sweeper's name: its hash is the set's key, ':' and its name (unread.py)
local SWEPT, DRAWN_MS = '""" + runs.SWEPT + """', """ + str(runs.DRAWN_MS) + """
""" + STREAM_ID_LUA + ACL_LUA + """
local kind = redis.call('TYPE', mine)['ok']
if kind ~= 'hash' and kind ~= 'none' then  -- before anything: a candidate's count moved half-way lost for good
  return redis.error_reply('WRONGTYPE ' .. mine .. ' holds a ' .. kind .. ', not a hash: nothing removed')
end
kind = redis.call('TYPE', swept)['ok']
local highest = kind == 'string' and tonumber(redis.call('GET', swept))
if not highest and kind ~= 'none' then  -- a run removed unrecorded: drawn again, a late write of it taken (E8)
  return redis.error_reply('WRONGTYPE ' .. swept .. ' holds no run: nothing removed')
end
highest = highest or 0
kind = redis.call('TYPE', owing)['ok']
if kind ~= 'set' and kind ~= 'none' then
  return redis.error_reply('WRONGTYPE ' .. owing .. ' holds a ' .. kind .. ', not a set: nothing removed')
end
kind = redis.call('TYPE', names)['ok']
if kind ~= 'set' and kind ~= 'none' then
  return redis.error_reply('WRONGTYPE ' .. names .. ' holds a ' .. kind .. ', not a set: nothing removed')
end
local asked = {{'HINCRBY', mine, KEYS[1], '1'}, {'HSETNX', mine, 'f', 'v'}, {'HSET', mine, 'f', 'v'},
  {'SET', swept, '1'}, {'SREM', owing, 'c'}, {'SADD', owing, 'c'}, {'SREM', names, 'c'}}
for i = 1, n do asked[#asked + 1] = {'XGROUP', 'DELCONSUMER', KEYS[i], group, 'c'} end
for j = n + 5, #KEYS do  -- each candidate's keys deleted with it, but its draws' record (every 4th: left to expire)
  if (j - n - 4) % 4 ~= 0 then asked[#asked + 1] = {'DEL', KEYS[j]} else
    for _, c in ipairs({{'ZSCORE', KEYS[j], 's'}, {'ZADD', KEYS[j], '1', 's'}, {'PEXPIRE', KEYS[j], '1'}}) do
      asked[#asked + 1] = c
    end
  end
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local refused = denied(asked)  -- an ACL changed since the start (ACL_LUA): nothing half done
if refused then return refused end
local seen = {}
for i = 1, n do
  seen[i] = {}
  if redis.call('EXISTS', KEYS[i]) == 1 then
    local consumers = redis.pcall('XINFO', 'CONSUMERS', KEYS[i], group)
    if type(consumers) == 'table' and not consumers['err'] then
      for _, c in ipairs(consumers) do seen[i][field(c, 'name')] = {field(c, 'pending'), field(c, 'idle')} end
    end
  end
end
local removed = {}
for j = 3, #ARGV do
  local base = n + 4 + 4 * (j - 3)
  local name, owed, answered, run, drawn = ARGV[j], KEYS[base + 1], KEYS[base + 2], KEYS[base + 3], KEYS[base + 4]
  local gone, present = true, false
  for i = 1, n do
    local c = seen[i][name]
    if c and (c[1] > 0 or c[2] < least) then gone = false end  -- pending (claimed later), or read meanwhile
    present = present or c ~= nil
  end
  -- Its owed counts answered to its read since: being told by it (a read that delivered nothing leaves the
  -- consumer's idle time as it was before Redis 7.2), its acknowledgement to come. Moved, they were told twice.
  local at = redis.call('TYPE', answered)['ok'] == 'string' and tonumber(redis.call('GET', answered))
  if at and now - at < least then gone = false end
  local flat = {}
  kind = redis.call('TYPE', owed)['ok']
  if kind == 'hash' then flat = redis.call('HGETALL', owed) elseif kind ~= 'none' then gone = false end
  local owes = kind ~= 'none'
  -- Its quarantine run, removed with it: kept in its own draws' record (``runs.SWEPT``), so a run drawn again at its
  -- name starts above it and a write of this run landing late lands nothing (E8) — its own, never a shared record
  -- another consumer's sweep raises (that fenced a live run whose key Redis lost) —, and the highest of all, a floor
  -- of every draw. A run key, or a draws' record, of another kind: kept whole.
  kind = redis.call('TYPE', run)['ok']
  local ran = kind == 'string' and tonumber(redis.call('GET', run))
  if kind ~= 'none' and not ran then gone = false end
  -- In no group, owing nothing, no run key: removed by another sweeper since it was listed (not ours), or nothing left
  if not owes and not present and kind == 'none' then
    gone = false
    redis.call('SREM', owing, name)
    redis.call('SREM', names, name)
  end
  kind = redis.call('TYPE', drawn)['ok']
  if kind ~= 'zset' and kind ~= 'none' then gone = false end
  for k = 1, #flat, 2 do  -- every count checked before any is moved: kept whole where one is no count
    if string.sub(flat[k], -1) ~= '\\n' and """ + no_count("flat[k + 1]", signed=True) + """ then gone = false end
  end
  if gone then
    local moved = 0
    if #flat > 0 then  -- owing now: found by a sweep even where its group, and it, are deleted before it reads
      redis.call('SADD', owing, me)
    end
    for k = 1, #flat, 2 do
      local stream, value = flat[k], flat[k + 1]
      if string.sub(stream, -1) == '\\n' then  -- the position before the first gap: the earlier one kept
        local held = redis.call('HGET', mine, stream)
        local ids = held and string.match(held, '^%d+%-%d+$') and string.match(value, '^%d+%-%d+$')
        if not held or (ids and after(held, value)) then redis.call('HSET', mine, stream, value) end
      elseif tonumber(value) > 0 then
        redis.call('HINCRBY', mine, stream, value)
        moved = moved + tonumber(value)
      end
    end
    if ran and ran > highest then
      highest = ran
      redis.call('SET', swept, ran)
    end
    if ran and ran > tonumber(redis.call('ZSCORE', drawn, SWEPT) or 0) then
      redis.call('ZADD', drawn, ran, SWEPT)
      redis.call('PEXPIRE', drawn, DRAWN_MS)  -- a day past the sweep (``runs.DRAWN_MS``), as past a draw
    end
    redis.call('DEL', owed, answered, run)  -- not its draws' record: a draw landing late returns its run
    redis.call('SREM', owing, name)
    redis.call('SREM', names, name)
    for i = 1, n do
      if seen[i][name] then redis.call('XGROUP', 'DELCONSUMER', KEYS[i], group, name) end
    end
    removed[#removed + 1] = {name, moved}
  end
end
return removed
"""


class DepartedConsumers:
    """The sweep of one reader (``consumer``) over its group's consumers (see the module). ``live``: the addresses of
    the live processes (members, and holders of a group); empty: not known yet, nothing swept. ``counter``: by
    consumer removed (``atp_ingest_consumers_removed_total``), or None. ``quarantine``: the quarantine stream, beside
    which each consumer's run (``quarantine.run_key``) is removed with it."""

    def __init__(self, client: Any, streams: list[str], group: str, consumer: str,
                 live: Callable[[], Collection[str]], least_idle_ms: int, counter: Any = None, *,
                 quarantine: str, redrawn: Any = None) -> None:
        self._client, self._streams, self._group, self._consumer = client, streams, group, consumer
        self._quarantine = quarantine
        self._names = runs.drawn_names_key(written_key(quarantine), group)
        self.mark = answered_key(trimmed_unread_key(streams[0], group, consumer))
        """This reader's answered mark, set with its run (``QuarantineStream.run_of``): a sweep meanwhile keeps it."""
        self.mark_ms = max(ANSWERED_MS, least_idle_ms)
        """How long the draw keeps that mark: at least ``least_idle_ms``, the age at which a sweep takes a consumer in
        no group yet (drawn, not read: a slow start, a paused process) kept by the mark alone — gone before (the
        read's ``ANSWERED_MS`` where ``claim_idle_ms`` is longer), its run was taken before ``claim_idle_ms``."""
        self._live, self._least_idle_ms, self._counter, self._redrawn = live, least_idle_ms, counter, redrawn
        self._script: Any = None  # registered at the first sweep

    async def sweep(self) -> list[str]:
        """The consumers removed now (their owed counts this reader's, told at its next read)."""
        live = set(self._live())
        if not live:
            return []
        # A consumer is in no group once its group was deleted (made again since): its count owed found in the set
        names = {as_text(name) for name in await self._client.smembers(owing_key(self._streams[0], self._group))}
        # A consumer with a run key but in no group: its process gone before its first read made it, or its group
        # deleted since — found in the draw's set of names, else its key stays for ever
        names.update(as_text(name) for name in await self._client.smembers(self._names))
        for stream in self._streams:
            try:
                names.update(as_text(c["name"]) for c in await self._client.xinfo_consumers(stream, self._group))
            except ResponseError as exc:
                if not no_such_key(exc) and "NOGROUP" not in str(exc):
                    raise
        gone = sorted(name for name in names if name != self._consumer and "@" in name
                      and name.rpartition("@")[2] not in live)
        removed: list[str] = []
        for start in range(0, len(gone), SWEPT_AT_ONCE):
            removed += self._said(await self._remove(gone[start:start + SWEPT_AT_ONCE]))
        return removed

    async def kept_run(self, quarantine: QuarantineStream) -> int:
        """This reader's quarantine run, drawn again where a sweep took it all the same (``keep_run``)."""
        return await quarantine.keep_run(self._client, self._group, self._consumer, self.mark, self._drawn_again,
                                        self.mark_ms)

    def _drawn_again(self, before: int, now: int, why: str) -> None:
        """Told where ``kept_run`` drew the run again: until now, every quarantine write of it refused (E8)."""
        if self._redrawn is not None:
            self._redrawn.inc()
        log.warning("input streams: consumer %s drew its quarantine run again (run %d %s, now run %d): until now its "
                    "quarantine writes were refused (CONCURRENT_CHANGE), their entries kept pending", self._consumer,
                    before, why, now, extra={"event": "quarantine_run_drawn_again", "consumer": self._consumer,
                                             "run_before": before, "run_now": now, "why": why})

    async def _remove(self, names: list[str]) -> list[Any]:
        if self._script is None:
            self._script = self._client.register_script(_SWEEP)
        first, group = self._streams[0], self._group
        owed = [trimmed_unread_key(first, group, name) for name in names]
        keys = [*self._streams, trimmed_unread_key(first, group, self._consumer), swept_runs_key(self._quarantine),
                owing_key(first, group), self._names,
                *(key for one, name in zip(owed, names, strict=True) for key in (
                    one, answered_key(one), run_key(self._quarantine, group, name),
                    drawn_key(self._quarantine, group, name)))]
        return list(await self._script(keys=keys, args=[group, self._least_idle_ms, *names]))

    def _said(self, removed: list[Any]) -> list[str]:
        names = []
        for name, moved in ((as_text(row[0]), int(row[1])) for row in removed):
            names.append(name)
            if self._counter is not None:
                self._counter.inc()
            log.info("input streams: consumer %s of group %s removed: no live process at its address, nothing "
                     "pending, idle %d ms or more; %d entries it owed as trimmed unread are told by %s", name,
                     self._group, self._least_idle_ms, moved, self._consumer,
                     extra={"event": "ingest_consumer_removed", "consumer": name, "owed": moved})
        return names
