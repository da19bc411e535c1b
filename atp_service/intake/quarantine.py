"""The quarantine stream (E6, E8): a quarantined fact is written to it once, however often it is decided.

A fact's outcome is durable in its shard log before its quarantine entry is written. An input entry's fact is written
there and the entry acknowledged in one script: once the stream holds the fact, its entry is never read again, so what
the stream says stands (E8: decided once). Acknowledged after, a crash (or the write's answer or the acknowledgement
lost) in between had the entry read again and its fact decided again: quarantined again if it was late or in conflict,
but applied if it had been quarantined for want of room (a shard's bound, ``max_on_hand``) and room had come back (the
bound raised and the service restarted, as the runbook says) — while the stream, what operators reconcile against,
showed it not applied, and their resend of it from there was a duplicate. Operators reconcile the quarantine entries
against their own systems, one entry a fact: so each write is keyed by the fact, its identity and payload (E8), and a
script adds the entry only where the set beside the stream (``written_key``: the digests of the facts written, scored
by their entries' times, in the order written) does not hold it. The set is trimmed to the stream's own length, lowest
score first: it says what the stream holds, never more — a flood of late facts costs Redis no more than the stream
does —, the stream being written by nothing else (the dead-letter stream is refused its name at start: dead letters
trimmed it of facts the set still held, never written again). A fact whose input entry's id runs ahead of its write
(a producer's own ids, ``XADD <ms>-<seq>``) has its input stream's newest entry then named beside (``ahead_key``,
while the set holds the fact): a group made again tells the entries added before the write, delivered again, from a
later one (a resend) by it (``again.quarantined_before``).
"""

from __future__ import annotations

import hashlib
import uuid
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, TypeVar

from atp_service.intake import runs
from atp_service.intake.unread import ANSWERED_MS
from atp_service.metrics import IntakeMetrics
from atp_service.storage.durability import STORAGE_ERRORS
from atp_service.storage.nodes import Call, Nodes, Script
from atp_service.storage.scripts import ACL_LUA
from reservation import Fact, FactKind, Reason, Unavailable
from reservation._keys import fact_key, fact_payload

E = TypeVar("E", bound=tuple[Any, ...])
CHUNK = 100
"""Facts one script call writes (its arguments stay far below Lua's stack; a large LoadCounts
quarantining thousands of rows is that many calls pipelined)."""
DOUBT_LIMIT = 10_000
"""Facts whose quarantine write's answer was lost that this process remembers, to count each once
when a retry finds it written (a process restarted, or another claiming the entry, counts it duplicate)."""
_KIND_NAMES = {k.value: k.name for k in FactKind}
_FIELDS = 9
_PER_FACT = 3 + 2 * _FIELDS  # its digest, its entry's stream (KEYS index, 0: none) and id, its fields' names and values

# KEYS: the stream, the set of written facts' digests, the consumer's run key (``run_key``), the hash of the entries
# whose ids ran ahead of their facts' writes (``ahead_key``), the consumer's draws' record (``drawn_key``: its run
# swept, ``runs.SWEPT``), then the input streams of the entries acknowledged; ARGV: MAXLEN, the consumer group, the
# consumer, its run ('': none), then _PER_FACT values a fact. A write of an earlier run of the consumer (its run key
# moved on since: a restart) acknowledges and writes no input entry's fact (-1): landing late, after the next run
# decided the entry again, it put the fact on the stream as not applied while it was applied (R7, E8). A run key below
# the write's run, or gone, is one Redis lost (a failover, a restart from older data): set back to the write's run
# (gone: by a write holding an entry pending to it only — one holding none, its consumer swept, left a key no sweep
# visits again, for ever), which goes on; left, its writes were refused while it ran (liveness). But a key gone where
# the run is at or below its consumer's own run swept (``runs.SWEPT``, set by the sweep deleting the key: never a shared
# highest, which another's sweep raised past a live run Redis lost), or below a draw its record holds (a later run at
# its name), is a sweep's: taken, a run before's late write, after a sweeper not seeing the process back live deleted
# its run (Redis before 7.2 keeps a consumer's idle time at a read that delivers nothing), wrote and acknowledged an
# entry pending to the process back (E8). Refused (-1): it draws its run again (``keep_run``). Returns, a fact, 1:
# written now, 0: written before, -1: not written, its input entry pending to this consumer no more (claimed by another,
# which decides the fact, or acknowledged by it; or of a run before). The entry, its digest and its input entry's XACK
# go in the same script (atomic, each fact's after its own write: a write refused leaves its entry pending); the set is
# trimmed to MAXLEN, oldest first, as the stream is (about MAXLEN entries). Its score is the write's time, whatever the
# entry's id: scored at an id far ahead (a producer's clock in 2100), a fact kept its place above every later one, each
# of those trimmed at its own write, written again by a retry (E8). Where its input stream's newest entry then (its own,
# or one after it) runs ahead of the write, that entry is named in the hash by the fact's digest (its id, a space, its
# stream): every entry added before the write is at or before it (a producer's retry too, which the write's time tells
# from a later resend only where ids are Redis's), every one added after is later. Taken out with the digest when the
# set is trimmed, no HDEL after the one that empties it (a migrating slot's source failed the script half-way on the key
# gone). A fact written before has its digest's score moved and put back as it was: a write of this call, so the WAIT
# after it (``redis_wait_replicas``) covers the earlier write too, whose answer was lost (R7). Never taken out and put
# back: its one digest out, the set was gone, and a migrating slot's source node fails a script's command on a key not
# there — the ZADD putting it back failed, the fact written again (E8). Every key's type is checked before the first
# write (``_TYPES``): Redis does not undo a script's writes before the command that failed, and a key of another type
# (an operator's, a restore of other data) failed it half-way — a fact's entry added, its digest not, its entry not
# acknowledged: written again at every delivery (E8). Refused so, nothing is written or acknowledged (the facts owed:
# ``write_owed``). So is a command the Redis user's ACL no longer allows (``_ALLOWED``: taken away while serving, ``ACL
# SETUSER svc -zadd``): asked of the ACL before the first write, every one the script may run after it — refused as it
# ran, the ZADD after the XADD, each retry wrote the fact again (E8); a pcall's XPENDING or XACK refused went on as if
# answered.
_TYPES = """
local wanted = {{KEYS[1], 'stream'}, {KEYS[2], 'zset'}, {KEYS[4], 'hash'}}
if ARGV[4] ~= '' then wanted[#wanted + 1] = {KEYS[3], 'string'}; wanted[#wanted + 1] = {KEYS[5], 'zset'} end
for k = 6, #KEYS do wanted[#wanted + 1] = {KEYS[k], 'stream'} end
for _, w in ipairs(wanted) do
  local kind = redis.call('TYPE', w[1])['ok']
  if kind ~= w[2] and kind ~= 'none' then
    return redis.error_reply('WRONGTYPE ' .. w[1] .. ' holds a ' .. kind .. ', not a ' .. w[2] .. ': nothing written')
  end
end
"""
_ALLOWED = """
local asked = {{'ZSCORE', KEYS[2], 'd'}, {'ZADD', KEYS[2], '1', 'd'},
  {'XADD', KEYS[1], 'MAXLEN', '~', '1', '*', 'f', 'v'}, {'HSET', KEYS[4], 'd', 'v'}, {'ZCARD', KEYS[2]},
  {'HLEN', KEYS[4]}, {'ZRANGE', KEYS[2], '0', '0'},
  {'HDEL', KEYS[4], 'd'}, {'ZREMRANGEBYRANK', KEYS[2], '0', '0'}, {'ZSCORE', KEYS[5], 's'},
  {'ZREVRANGE', KEYS[5], '0', '0', 'WITHSCORES'}}
for k = 6, #KEYS do
  asked[#asked + 1] = {'XPENDING', KEYS[k], ARGV[2], '-', '+', '1', ARGV[3]}
  asked[#asked + 1] = {'XREVRANGE', KEYS[k], '+', '-', 'COUNT', '1'}
  asked[#asked + 1] = {'XACK', KEYS[k], ARGV[2], '0-1'}
end
local refused = denied(asked)
if refused then return refused end
"""
_ONCE = ACL_LUA + _TYPES + _ALLOWED + f"""
local function later(a, b)  -- the later of two stream ids (as Redis writes them: digits, no leading zeros)
  local am, as = string.match(a, '^(%d+)-(%d+)$')
  local bm, bs = string.match(b, '^(%d+)-(%d+)$')
  if not bm then return a end
  if not am then return b end
  if #am ~= #bm then return #am > #bm and a or b end
  if am ~= bm then return am > bm and a or b end
  if #as ~= #bs then return #as > #bs and a or b end
  return as >= bs and a or b
end
local written = {{}}
local n = (#ARGV - 4) / {_PER_FACT}
local current = true
if ARGV[4] ~= '' then  -- fenced out by a later run only: a run Redis lost (the key gone, or behind) is taken again
  local held = redis.call('GET', KEYS[3])
  local run, ours = held and tonumber(held) or 0, tonumber(ARGV[4])
  local swept = not held and tonumber(redis.call('ZSCORE', KEYS[5], '{runs.SWEPT}'))
  local drew = not held and tonumber(redis.call('ZREVRANGE', KEYS[5], 0, 0, 'WITHSCORES')[2])
  if (swept and ours <= swept) or (drew and drew > ours) or run > ours then  -- swept, a run before: not taken (E8)
    current = false
  elseif held and run < ours then
    redis.call('SET', KEYS[3], ARGV[4])
  elseif not held then  -- gone: taken back by a write holding an entry pending to it only (else a key left for ever)
    for at = 5, #ARGV - 1, {_PER_FACT} do
      local k = tonumber(ARGV[at + 1])
      local p = k > 0 and redis.pcall('XPENDING', KEYS[k], ARGV[2], ARGV[at + 2], ARGV[at + 2], 1, ARGV[3])
      if p and p['err'] == nil and #p > 0 then redis.call('SET', KEYS[3], ARGV[4]); break end
    end
  end
end
for f = 0, n - 1 do
  local at = 5 + f * {_PER_FACT}
  local input = tonumber(ARGV[at + 1])
  local ours = true
  if input > 0 then  -- NOGROUP: the group is gone, pending nowhere: written as ever
    local held = redis.pcall('XPENDING', KEYS[input], ARGV[2], ARGV[at + 2], ARGV[at + 2], 1, ARGV[3])
    ours = current and (held['err'] ~= nil or #held > 0)
  end
  local before = redis.call('ZSCORE', KEYS[2], ARGV[at])
  if before then
    redis.call('ZADD', KEYS[2], -tonumber(before) - 1, ARGV[at])  -- a score it never holds; never empties the set
    redis.call('ZADD', KEYS[2], before, ARGV[at])
    written[f + 1] = 0
  elseif not ours then
    written[f + 1] = -1
  else
    local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', unpack(ARGV, at + 3, at + {2 + 2 * _FIELDS}))
    local score = string.match(id, '^%d+')
    if input > 0 then  -- E8: a producer's own ids may run ahead of the write; its stream's newest entry named then
      local newest = redis.call('XREVRANGE', KEYS[input], '+', '-', 'COUNT', 1)[1]
      local last = newest and later(newest[1], ARGV[at + 2]) or ARGV[at + 2]
      if tonumber(string.match(last, '^%d+')) > tonumber(score) then
        redis.call('HSET', KEYS[4], ARGV[at], last .. ' ' .. KEYS[input])
      end
    end
    redis.call('ZADD', KEYS[2], score, ARGV[at])
    written[f + 1] = 1
  end
  if input > 0 and ours then
    redis.pcall('XACK', KEYS[input], ARGV[2], ARGV[at + 2])
  end
end
local extra = redis.call('ZCARD', KEYS[2]) - tonumber(ARGV[1])
if extra > 0 then
  local ahead = redis.call('HLEN', KEYS[4])
  if ahead > 0 then
    for _, gone in ipairs(redis.call('ZRANGE', KEYS[2], 0, extra - 1)) do
      ahead = ahead - redis.call('HDEL', KEYS[4], gone)
      if ahead == 0 then break end  -- emptied, gone: no command on a key not there (a migrating slot's source)
    end
  end
  redis.call('ZREMRANGEBYRANK', KEYS[2], 0, extra - 1)
end
return written
"""
WRITE_ONCE_SCRIPT = Script(_ONCE)


class Acks(NamedTuple):
    """The input entries the facts written came from (one a fact, aligned), acknowledged in the same script, each
    only while pending to ``consumer``: one claimed by another since is that one's to decide (E8: decided once)."""

    group: str
    consumer: str
    entries: Sequence[tuple[str, bytes]]
    """(input stream, entry id) a fact."""
    run: int | None = None
    """The consumer's run (``QuarantineStream.run_of``), None: none. A write of an earlier run lands nothing."""


class QuarantineStream:
    """Writes quarantined facts to ``stream`` (trimmed to about ``maxlen``), each once. The set of what
    it holds sits beside the stream, named after it (its hash tag: the same Redis Cluster slot)."""

    def __init__(self, stream: str, maxlen: int) -> None:
        self.stream, self._maxlen = stream, maxlen
        self.written_key = written_key(stream)
        """The digests of the facts the stream holds (at most about ``maxlen``)."""
        self.ahead_key = ahead_key(stream)
        """Of those, the facts whose input entries' ids ran ahead of their writes: the entry, by digest."""
        self._runs: dict[tuple[str, str], int] = {}  # (group, consumer): this process's run of it (``run_of``)
        self._drawing: dict[tuple[str, str], str] = {}  # (group, consumer): its draw not answered yet's token (DRAW)
        self._drawn: dict[tuple[str, str], list[str]] = {}  # (group, consumer): its draws' tokens (any may land late)
        self._again: dict[tuple[str, str], tuple[int, str]] = {}  # (group, consumer): (run before, why), drawn again
        self._draw: Any = None  # ``runs.DRAW``, registered at its first call
        self._doubt: OrderedDict[str, None] = OrderedDict()
        """Digests of facts whose write's answer was lost here, oldest first: written or not, counted by none."""
        self.owed: OrderedDict[tuple[str, bytes], tuple[Fact, str, str, str, int | None]] = OrderedDict()
        """Input entries whose fact's write (with their acknowledgement) failed here, oldest first: (fact, reason,
        consumer group, consumer, its run) by (stream, entry id), written again before they are read again
        (``write_owed``)."""

    @staticmethod
    def digest(fact: Fact) -> str:
        """What names ``fact`` (its identity and payload) in the set of facts written."""
        return hashlib.blake2b(f"{fact_key(fact)}\x1f{fact_payload(fact)}".encode(), digest_size=16).hexdigest()

    async def write(self, writer: Nodes, facts: Sequence[tuple[Fact, str]],
                    acks: Acks | None = None) -> list[bool | None]:
        """Each (fact, reason) written to the stream unless the stream holds it already; per fact, True:
        written now — or by a write of this process whose answer was lost, counted by none (E6: a metric
        counts each quarantined fact) —, None: not written, its input entry (``acks``) no longer pending to
        this consumer (another claimed it: it decides the fact, and writes it if quarantined there). ``acks``:
        each fact's input entry acknowledged with it. Raises what Redis raised (then any of them may have been
        written, their entries acknowledged: a retry writes the rest). ``writer``: the log's, so a write counts
        only once ``redis_wait_replicas`` replicas hold it (``NotReplicated`` else: in doubt, R7) — on the
        primary alone, a caller told QUARANTINED lost the entry to a failover, and never sent it again."""
        digests = [self.digest(fact) for fact, _ in facts]
        calls = []
        for start in range(0, len(facts), CHUNK):
            keys, values = self._call(facts[start:start + CHUNK], digests[start:start + CHUNK],
                                      acks.entries[start:start + CHUNK] if acks else None, acks)
            reader = (acks.group, acks.consumer, "" if acks.run is None else acks.run) if acks else ("", "", "")
            calls.append(Call(WRITE_ONCE_SCRIPT, keys, [self._maxlen, *reader, *values]))
        try:
            replies = await writer.run(calls)
            failed = next((reply for reply in replies if isinstance(reply, BaseException)), None)
            if failed is not None:
                raise failed
        except BaseException:  # a timeout, a reset, a cancel: each may have been written, uncounted
            self._doubt.update(dict.fromkeys(digests))
            if acks:
                self.owed.update((entry, (*pair, acks.group, acks.consumer, acks.run))
                                 for pair, entry in zip(facts, acks.entries, strict=True))
            for kept in (self._doubt, self.owed):
                while len(kept) > DOUBT_LIMIT:
                    kept.popitem(last=False)
            raise
        for entry in acks.entries if acks and self.owed else ():
            self.owed.pop(entry, None)
        flags = [int(flag) for reply in replies for flag in reply]
        doubted = [self._doubt.pop(d, True) is None for d in digests] if self._doubt else [False] * len(flags)
        return [None if flag < 0 else bool(flag) or was for flag, was in zip(flags, doubted, strict=True)]

    async def settle(self, writer: Nodes, facts: Sequence[Fact], results: list[Any], late: list[int],
                     acks: Acks | None = None, metrics: IntakeMetrics | None = None) -> set[int]:
        """The facts at ``late`` (their results (QUARANTINED, reason)) written to the stream, their input entries
        (``acks``: aligned with ``facts``) acknowledged with them; returns those of them written there before
        (decided again: a caller's retry), each once. A fact not written (Redis did not answer, or its entry is
        another consumer's now) gets a refusal for its result: not acknowledged, delivered again. ``metrics``:
        those written counted here (origin ``stream``: facts an owner decided, ``FactDesk.quarantined_there``)."""
        entries = None if acks is None else acks._replace(entries=[acks.entries[i] for i in late])
        try:
            written = await self.write(writer, [(facts[i], results[i][1]) for i in late], entries)
        except STORAGE_ERRORS as exc:  # a cluster no node of which answers included
            # The facts are durable in the shard logs as quarantined; the operator's copy is not.
            # Refuse the acknowledgement so the caller (or the stream) delivers them again.
            refused = Unavailable(f"quarantine stream unreachable ({exc}); retry")
            written = [None] * len(late)
        else:
            refused = Unavailable("its input entry was claimed by another consumer, which decides its fact",
                                  Reason.CONCURRENT_CHANGE)
        for i, now in zip(late, written, strict=True):
            if now is None:
                results[i] = refused
            elif metrics is not None:
                metrics.facts.labels("stream", _KIND_NAMES[facts[i].kind], "quarantined" if now else "duplicate").inc()
        return {i for i, now in zip(late, written, strict=True) if now is False}

    def not_owed(self, entries: list[E]) -> list[E]:
        """``entries`` but those (stream, entry id, ...) whose fact's write failed here: ``write_owed`` settles them."""
        return [entry for entry in entries if (entry[0], entry[1]) not in self.owed] if self.owed else entries

    async def write_owed(self, writer: Nodes, metrics: IntakeMetrics) -> bool:
        """The facts of the input entries whose write failed here (``owed``) written again, with their entries'
        acknowledgements, and counted (``atp_facts_total``, E6): their shards decided them quarantined, and read
        again first, their entries would be decided again — applied, had room come back — while the stream may
        hold them already (E8: decided once). One whose entry another consumer claimed meanwhile (this one's
        Redis away longer than ``claim_idle_ms``) is not written: that one decides it. False: Redis did not
        answer (they stay owed)."""
        for reader in {(group, consumer, run) for _, _, group, consumer, run in self.owed.values()}:
            owed = [(entry, (fact, reason)) for entry, (fact, reason, *r) in self.owed.items() if tuple(r) == reader]
            acks = Acks(reader[0], reader[1], [e for e, _ in owed], reader[2])
            try:
                flags = await self.write(writer, [pair for _, pair in owed], acks)
            except STORAGE_ERRORS:
                return False
            for (_, (fact, _)), now in zip(owed, flags, strict=True):
                if now is not None:
                    metrics.facts.labels("stream", _KIND_NAMES[fact.kind], "quarantined" if now else "duplicate").inc()
        return True

    def _call(self, facts: Sequence[tuple[Fact, str]], digests: Sequence[str],
              entries: Sequence[tuple[str, bytes]] | None, acks: Acks | None) -> tuple[list[str], list[Any]]:
        """One script call's keys, and its facts' values (ARGV after MAXLEN, the group, the consumer and its run)."""
        inputs = list(dict.fromkeys(stream for stream, _ in entries or ()))  # KEYS[6...]
        index = {stream: 6 + k for k, stream in enumerate(inputs)}
        values: list[Any] = []
        for n, ((fact, reason), d) in enumerate(zip(facts, digests, strict=True)):
            stream, entry_id = entries[n] if entries else ("", b"")
            values += [d, index.get(stream, 0), entry_id, *_flat(fields(fact, reason))]
        run = run_key(self.stream, acks.group, acks.consumer) if acks else self.written_key  # read only with a run
        drawn = drawn_key(self.stream, acks.group, acks.consumer) if acks else self.written_key  # its run swept
        return [self.stream, self.written_key, run, self.ahead_key, drawn, *inputs], values

    async def keep_run(self, client: Any, group: str, consumer: str, mark: str,
                       told: Callable[[int, int, str], None] = lambda *_: None, mark_ms: int = ANSWERED_MS) -> int:
        """Leased, at each sweep: the run drawn here (``run_of``), or drawn again where a sweep deleted it (E8,
        ``runs.swept``; not another's draw at its address, its fence, nor a key Redis lost). ``told``: once."""
        run = self._runs.get(at := (group, consumer))
        keys = (run_key(self.stream, *at), drawn_key(self.stream, *at))
        if run is not None and await runs.swept(client, keys, run, self._drawn.get(at, ())):
            del self._runs[at]  # drawn again now (refused: at the next sweep, its writes refused)
            self._again.setdefault(at, (run, "swept"))  # until told: the draw's answer lost (a timeout, a cancel)
        return runs.tell(self._again, at, await self.run_of(client, group, consumer, mark, mark_ms), told)

    async def run_of(self, client: Any, group: str, consumer: str, mark: str | None = None,
                     mark_ms: int = ANSWERED_MS) -> int:
        """This process's run of ``consumer``, begun at its reader's first start (before it reads its own pending
        entries): the writes of its runs before, in doubt (their answers lost, owed in a memory gone with their
        process), can land nothing now. A reader started again here keeps it: what it wrote in doubt is owed here. A
        draw not answered is retried under its token (``runs.DRAW``: its run, once). ``mark``: leased, the consumer's
        answered mark, set with the draw, kept ``mark_ms`` (``DepartedConsumers.mark_ms``): no sweep takes that run."""
        run = self._runs.get(at := (group, consumer))
        if run is None:
            if self._draw is None:
                self._draw = client.register_script(runs.DRAW)
            token = self._drawing.setdefault(at, uuid.uuid4().hex)  # a new draw's, kept for its retries till answered
            keys = [run_key(self.stream, *at), swept_runs_key(self.stream), drawn_key(self.stream, *at),
                    runs.drawn_names_key(self.written_key, group), *([mark] if mark else [])]
            run = self._runs[at] = await runs.draw(client, self._draw, keys, token, mark_ms, consumer)
            self._drawn[at] = [*self._drawn.get(at, []), self._drawing.pop(at, token)][-runs.TOKENS_KEPT:]
        return run


def written_key(stream: str) -> str:
    """The set of what ``stream`` holds, in the stream's Redis Cluster slot (the script's two keys): with
    its hash tag (``atp:{in}:quarantine:written``), or, a stream without one, the stream's name as its
    tag (``atp:quarantine:written:{atp:quarantine}``: nothing asks a cluster without input streams for
    a tag), under the stream's name all the same (an ACL's ``~atp:*`` covers it)."""
    if "{" in stream or "}" in stream:
        return f"{stream}:written"
    return f"{stream}:written:{{{stream}}}"


def ahead_key(stream: str) -> str:
    """The hash of the entries whose ids ran ahead of their facts' writes to ``stream`` (``entry id`` space ``input
    stream``, by digest; no more fields than ``written_key`` has members), in the stream's Redis Cluster slot."""
    return f"{written_key(stream)}:ahead"


def run_key(stream: str, group: str, consumer: str) -> str:
    """The run of ``consumer`` of ``group`` that may write to ``stream`` (``QuarantineStream.run_of``): in the
    stream's Redis Cluster slot, as ``written_key``, one per consumer: removed with it under leases, its process gone
    for good (``intake/departed.py``, ``runs.SWEPT``)."""
    return f"{written_key(stream)}:run:{group}:{consumer}"


def drawn_key(stream: str, group: str, consumer: str) -> str:
    """The recent draws of ``consumer``'s run (``runs.DRAW``: their tokens scored by their runs): a retry of one, or
    one landing late, returns its run. In the run key's slot; left by the departed sweep to expire (``DRAWN_MS``)."""
    return f"{written_key(stream)}:draws:{group}:{consumer}"


def swept_runs_key(stream: str) -> str:
    """The highest run of any consumer whose ``run_key`` a sweep removed (``intake/departed.py``): every run is drawn
    above it, even past its own record's (``runs.SWEPT``, which alone fences a write: E8) expiry."""
    return f"{written_key(stream)}:runs-swept"


def _flat(entry: dict[str, Any]) -> list[Any]:
    return [v for kv in entry.items() for v in kv]


def fields(fact: Fact, reason: str) -> dict[str, Any]:
    """A quarantine entry's fields (OPERATIONS.md): the reason, then the fact as an input entry has it."""
    return {
        "reason": reason, "event_id": fact.event_id, "source": fact.source, "kind": _KIND_NAMES[fact.kind],
        "sku": fact.sku, "location": fact.location, "quantity": fact.quantity,
        "event_time_ms": fact.event_time, "reservation_id": fact.reservation_id,
    }
