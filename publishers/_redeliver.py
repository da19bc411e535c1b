"""Redelivery of dead-lettered keys: after a destination outage longer than ``max_attempts``, each key
whose newest value was dead-lettered gets the channel's durable value (the state hash) once the
destination answers again (C4: the feed converges to what is durable; a stock-out is not left
unpublished).

- **What is remembered**: each dead-lettered update's key and version, in the hash
  ``<stream>:redeliver:<group>`` (durable: a restart finds it), written in the dead letters' script,
  with its kind: ``retry`` (the last attempt failed with a retryable error: the destination was
  down or slow) or ``refused`` (it said this payload will not be taken: a 4xx, or one update of a
  batch refused alone). Past ``redeliver_max_keys`` keys a counter ``<stream>:redeliver-all:<group>``
  is raised instead: the next pass resyncs every key of the state hash (bounded memory, nothing lost).
  It is raised too while a gap of versions trimmed unread is caught up (the group reads past it
  meanwhile), so that a stop or crash half-way leaves its keys owed.
- **When**: a pass runs before the next read once a delivery succeeded after a retryable dead
  letter, at least every ``redeliver_interval_s`` while ``retry`` keys are owed (a quiet channel),
  and once at each start. ``refused`` keys are passed only until the first pass of a process
  completes: resending what the destination refused at each success would be refused again, but an
  operator's fix (credentials, URL, a store's mapping) comes with a restart.
- **How**: the stock-outs among the owed keys first (C2), then the rest, one page (about
  ``read_count`` keys) per step with a read of the channel stream between steps, through the
  publisher's own delivery (rate limit, retries, delivered versions: a version at or below the one
  delivered is never sent, so an older value never follows a newer one). A key is forgotten once its
  delivered version reaches the state hash's (or its value is gone). A pass stops when a delivery
  fails again after its retries; what it left stays owed, without a second dead letter (one per pass
  would flood the dead-letter stream during an outage). Each of the two sweeps ends only where the hash
  holds no key it did not see: HSCAN's cursor holds within one server's life (``_saw_every_key``).
  A resync of every key goes the same way: a
  step (one HSCAN call of the state hash) at a time, its stock-outs first, the stream read between.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from atp_service.logs import EveryInterval
from atp_service.storage.channel_wire import state_update, to_fields
from atp_service.storage.resp import as_text
from atp_service.storage.scripts import ACL_LUA
from reservation import ChannelUpdate

from ._config import PublisherConfig
from ._lease import Lease
from ._metrics import PublisherMetrics
from ._reading import mark_checked
from ._state_resync import Sweep

log = logging.getLogger(__name__)
RETRY, REFUSED = "retry", "refused"

Deliver = Callable[[list[ChannelUpdate]], Awaitable[bool]]
"""Deliver and record updates (the publisher's way); False: a stop cut it off."""
ResyncStep = Callable[[Sweep], Awaitable[int | None]]
"""One step of a resync of the state hash (``StateResync.step``): how many were sent; None: stopped, or
the destination failed again."""

DEAD_LETTER_LOG_EVERY_S = 1.0
"""A publisher writes at most one ``publisher_dead_lettered`` line this often, the next saying in ``left_out`` how
many were left out: a destination refusing every request (credentials revoked, a schema changed) had each batch
dead-lettered at once with a line of its own, one per update where they come one at a time, for as long as it
refused. The dead-letter stream and ``atp_publisher_dead_lettered_total`` have every one (``deliveries_total`` counts
those refused for good ``failed``, those still failing after their tries ``retried``)."""


DEAD_LETTER = ACL_LUA + """
if redis.call('get', KEYS[1]) ~= ARGV[1] then return -1 end
""" + mark_checked("KEYS[4]", "nothing written") + """
local refused = denied({{'HEXISTS', KEYS[3], 'k'}, {'HLEN', KEYS[3]}, {'INCR', KEYS[4]}, {'HSET', KEYS[3], 'k', 'v'}})
if refused then return refused end  -- after the XADDs: refused there, the dead letters written, no key owed
for k, want in ipairs({'stream', 'hash'}) do  -- every key's type before the first write (the mark's: above)
  local kind = redis.call('type', KEYS[k + 1])['ok']
  if kind ~= want and kind ~= 'none' then
    return redis.error_reply('WRONGTYPE ' .. KEYS[k + 1] .. ' holds a ' .. kind .. ', not a ' .. want ..
                             ': nothing written')
  end
end
local i, owed = 5, tonumber(ARGV[4])
for _ = 1, tonumber(ARGV[3]) do
  local n = tonumber(ARGV[i])
  redis.call('xadd', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', unpack(ARGV, i + 1, i + n))
  i = i + n + 1
end
if owed == 0 then return 0 end
local new = 0
for j = i + 1, #ARGV, 2 do new = new + (1 - redis.call('hexists', KEYS[3], ARGV[j])) end
if new > 0 and redis.call('hlen', KEYS[3]) + new > tonumber(ARGV[i]) then
  redis.call('incr', KEYS[4])
  return 1
end
for j = i + 1, #ARGV, 1000 do redis.call('hset', KEYS[3], unpack(ARGV, j, math.min(j + 999, #ARGV))) end
return 0
"""
"""Under the lease only: each dead letter (its number of names and values, then them) added to the
dead-letter stream, then the keys they leave owed remembered (``redeliver_max_keys``, then keys and
what is owed), or past that many a resync of every key owed (1). Only keys not remembered yet count
toward the bound: a newer value of a key already owed replaces its field. -1: fenced off, nothing written.
Every key's type is checked before the first write: Redis undoes nothing of a script that fails half-way, and the
owed hash (or the resync's counter) of another type — an operator's key, a restore of other data — failed it after
its XADDs, the keys owed never remembered (C4) and the dead letters written again at each delivery tried again.
Refused so (WRONGTYPE), nothing is written: the entries stay pending, tried again once the key is removed. So is a
command after the XADDs the ACL no longer allows (``ACL_LUA``: taken away while the publisher runs): DENIED."""


@dataclass(slots=True)
class _EveryKey:
    """A resync of every key under way: the mark it settles, and its sweep."""

    mark: Any
    sweep: Sweep = field(default_factory=lambda: Sweep(lambda version: True))


class Redelivery:
    def __init__(self, config: PublisherConfig, client: Any, metrics: PublisherMetrics, adapter: str,
                 now_ms: Callable[[], int], delivered_version: Callable[[str], int], deliver: Deliver,
                 resync_all: ResyncStep, lease: Lease, lost: Callable[[str], None],
                 lines: EveryInterval | None = None) -> None:
        self.config, self.client, self.metrics, self.adapter = config, client, metrics, adapter
        self._lines = lines or EveryInterval(DEAD_LETTER_LOG_EVERY_S)
        """Whether a dead letter's line is written now (else left out, counted), with how many were left out
        before it: the publisher's, kept across its takeovers (``Publisher.dead_letter_lines``)."""
        self._lease, self._lost = lease, lost
        """What this forgets, and its dead letters, under the group's lease: a publisher that lost it
        (paused past it) cannot delete keys the one delivering now owes a redelivery (``lost``: told)."""
        self._now_ms, self._delivered_version = now_ms, delivered_version
        self._deliver, self._resync_all = deliver, resync_all
        self.answered = False
        """The destination took the last delivery tried (False after a retryable dead letter)."""
        self._owed = True  # unknown until the first pass: a restart finds what Redis remembered
        self._first, self._refused_due = True, True
        self._last_pass_ms = 0
        self.passing = False
        """A pass is under way: what fails again is still owed, not dead-lettered a second time."""
        self.failed_in_pass = False
        """A delivery of this pass failed after its retries: the pass stops, what it left stays owed."""
        self._cursor, self._stock_outs_phase = 0, True
        """Where the sweep over the remembered keys is (HSCAN's cursor), and in which of its two phases."""
        self._with_refused, self._reowed = True, False
        """This sweep passes refused keys too; a retryable dead letter came since it began."""
        self._left: set[str] = set()
        """The keys this phase of the sweep saw (or dead-lettered since it began) and did not forget: all the
        owed hash holds at its end, where its cursor passed over none (``_saw_every_key``)."""
        self._passed: set[str] | None = None
        """While a phase passes over the hash again for the keys it missed: those it passed already."""
        self._every_key: _EveryKey | None = None
        """A resync of every key under way (more keys were owed than remembered), a step at a time."""
        self.gap_mark: int | None = None
        """The mark of the gap of versions trimmed unread under way, when only that gap raised it (from
        nothing, also for gaps found while it is caught up): the gap forgets it once it is caught up, and
        a pass that reads it leaves it alone. One owner per value: a mark deleted by one, then raised
        from nothing again by dead letters past ``redeliver_max_keys``, has the same value, and the other
        deleted it as its own: their stock-outs were never redelivered (C4)."""

    def succeeded(self) -> None:
        self.answered = True

    def due(self) -> bool:
        if self._first:
            return True
        waited_ms = self._now_ms() - self._last_pass_ms
        return self._owed and (self.answered or waited_ms >= self.config.redeliver_interval_s * 1000)

    def failed_again(self, keys: int, reason: str) -> None:
        """A pass's delivery failed after its retries: those keys stay owed (their first dead letter
        says it already; one per pass would flood the dead-letter stream during an outage)."""
        self.answered, self._owed, self.failed_in_pass = False, True, True
        log.warning("%s: the destination failed again (%s); %d keys stay owed their newest value", self.config.channel,
                    reason[:200], keys)

    async def dead_letter(self, refused: list[tuple[ChannelUpdate, str]], attempts: int, retryable: bool) -> None:
        """Each update to the dead-letter stream with its reason, its key remembered for redelivery."""
        cfg = self.config
        if retryable and self.passing:
            self.failed_again(len(refused), refused[0][1])
            return
        letters = [{**to_fields(u), "reason": reason, "attempts": str(attempts), "adapter": self.adapter}
                   for u, reason in refused]
        owed = {f"{u.sku}\t{u.location}": f"{u.version} {RETRY if retryable else REFUSED}" for u, _ in refused}
        overflowed = await self._write(letters, owed)
        if overflowed is None:
            return
        if not overflowed:
            self._left.update(owed)  # in the owed hash now: a sweep under way ends with them there
        if retryable:
            self.answered, self._owed, self._reowed = False, True, True
        reasons = "; ".join(sorted({reason for _, reason in refused}))[:2000]
        fields = self._lines.fields(event="publisher_dead_lettered", channel=cfg.channel, updates=len(refused),
                                    attempts=attempts, reason=reasons)
        if fields is not None:
            log.warning("%s: %d updates dead-lettered after %d attempts: %s", cfg.channel, len(refused), attempts,
                        reasons, extra=fields)
        if overflowed:
            self.metrics.redeliver_overflows.labels(cfg.channel).inc()
            log.warning("%s: more than redeliver_max_keys=%d keys owed their newest value; the next pass resyncs "
                        "every key of the state hash", cfg.channel, cfg.redeliver_max_keys,
                        extra={"event": "publisher_redeliver_overflow", "channel": cfg.channel,
                               "max_keys": cfg.redeliver_max_keys})

    async def dead_letter_raw(self, entry_id: str, fields: dict[Any, Any], reason: str) -> None:
        """A stream entry that cannot be read as an update, to the dead-letter stream with its reason."""
        body = {as_text(k): as_text(v) for k, v in fields.items()}
        await self._write([{**body, "reason": reason, "entry_id": entry_id}], {})

    async def _write(self, letters: list[dict[str, str]], owed: dict[str, str]) -> bool | None:
        """The dead letters and the keys they leave owed (``owed``: ``redeliver`` fields, or a resync of
        every key past ``redeliver_max_keys``), under the lease: one script, as the publisher's other
        records. A publisher that lost it (paused past it, its request hung meanwhile) wrote them in a
        MULTI all the same: a second dead letter of an update the holder took over and delivered (or
        dead-lettered too), and keys owed in the holder's bookkeeping. True: ``redeliver-all`` was
        raised instead of ``owed``; None: fenced off (nothing written, the entries stay pending)."""
        cfg, lease = self.config, self._lease
        flat = [part for fields in letters for part in (2 * len(fields), *(x for kv in fields.items() for x in kv))]
        remembered = [cfg.redeliver_max_keys, *(x for kv in owed.items() for x in kv)] if owed else []
        said = int(await self.client.eval(DEAD_LETTER, 4, lease.key, cfg.dead_letter_stream, cfg.redeliver_key,
                                          cfg.redeliver_all_key, lease.token, cfg.dead_letter_maxlen, len(letters),
                                          len(owed), *flat, *remembered))
        if said < 0:
            self._lost("its dead letter was fenced off: another publisher holds the lease")
            return None
        self.metrics.dead_lettered.labels(cfg.channel).inc(len(letters))
        return said == 1

    async def owe_every_key(self, raised: int = 0) -> None:
        """Make the next pass resync every key of the state hash, durably (a gap in the stream the
        group reads past is being caught up: a stop or crash half-way must leave it owed). Raised for
        each gap, also one found while another is caught up (a pass may have settled the mark since);
        ``gap_mark`` the gap's own while only gaps caught up since it was nothing raised it. ``raised``:
        the value the read that found the gap raised it to, in its own script (0: raised here)."""
        mark, held = raised or int(await self.client.incr(self.config.redeliver_all_key)), self.gap_mark
        self.gap_mark = mark if mark == 1 or (held is not None and mark == held + 1) else None

    async def forget_every_key(self) -> None:
        """The gap is caught up: its own mark (``gap_mark``) forgotten unless it was raised since."""
        mark, self.gap_mark = self.gap_mark, None
        if mark is not None:
            await self._lease.delete_if_same(self.config.redeliver_all_key, mark)

    async def run_pass(self) -> None:
        """One step of the sweep over what is owed: one page of remembered keys (about
        ``read_count``) that sends something, pages with nothing to send passed over. The channel
        stream is read between steps, so a new change (a new stock-out) never waits behind a long
        redelivery. Returns early when a stop cuts it off or the destination fails again: the page is
        tried again at the next step."""
        self._first, self._last_pass_ms = False, self._now_ms()
        self.passing, self.failed_in_pass = True, False
        done, finished = {"redelivered": 0, "sent": 0}, False
        try:
            if self._cursor == 0 and self._stock_outs_phase and self._every_key is None and self._passed is None:
                self._with_refused, self._reowed, self._left = self._refused_due, False, set()  # a sweep begins
                self._every_key = await self._every_key_owed()
            if self._every_key is not None and not await self._full_resync(self._every_key):
                return
            finished = await self._step(done)
        finally:
            self.passing = False
            if finished:
                self._refused_due = self._refused_due and not self._with_refused
            self._owed = self._reowed if finished else True
            if done["redelivered"]:
                cfg = self.config
                log.info("%s: %d keys owed since a dead letter redelivered from the state hash%s", cfg.channel,
                         done["redelivered"], "" if finished else " (more in the next steps)",
                         extra={"event": "publisher_redelivered", "channel": cfg.channel,
                                "keys": done["redelivered"], "complete": finished})

    async def _every_key_owed(self) -> _EveryKey | None:
        """A resync of every key, when more keys were owed than remembered (the mark is set)."""
        cfg = self.config
        mark = await self.client.get(cfg.redeliver_all_key)
        if mark is None or int(mark) == self.gap_mark:  # the gap under way settles its own mark
            return None
        log.warning("%s: a resync of every key is owed (more keys than redeliver_max_keys=%d were owed their newest "
                    "value after dead letters, or versions trimmed unread were left half caught up); delivering every "
                    "key's newest value from the channel's state hash", cfg.channel, cfg.redeliver_max_keys)
        return _EveryKey(mark)

    async def _full_resync(self, every: _EveryKey) -> bool:
        """Steps of the resync of every key (one HSCAN call each: the stock-outs, then the rest) until
        one sent something, then the channel stream's turn (C2: run to its end, it held a stock-out
        published meanwhile behind every key's value), or until it is over: True, its mark forgotten
        unless raised since. False: not over (the channel stream's turn, a stop, a failure)."""
        while (sent := await self._resync_all(every.sweep)) is not None:
            if every.sweep.done:
                # Begun after the gap's mark was raised (else that is not its value), this resync delivered
                # the gap's keys too: the gap forgets nothing (the value deleted may be raised again).
                self._every_key, self.gap_mark = None, None
                return await self._lease.delete_if_same(self.config.redeliver_all_key, every.mark)
            if sent:
                return False
        return False  # stopped, or the destination failed again: this step again at the next pass

    async def _step(self, done: dict[str, int]) -> bool:
        """The next page of the sweep that sends something: the stock-outs among all owed keys first, then
        the rest (C2). True: the sweep is finished. A page that sends nothing (no stock-out on it, in the
        first phase) is followed at once by the next: returned, the next waited for the pass's timer
        (``redeliver_interval_s``) where nothing had told this process the destination answers again (a
        start, a quiet channel after an outage), and every owed value behind it — a stock-out on a later
        page — waited that long per page (C2, C4)."""
        cfg = self.config
        while True:
            cursor, items = await self.client.hscan(cfg.redeliver_key, self._cursor, count=cfg.read_count)
            page = [(as_text(key), as_text(owed)) for key, owed in items.items()]
            before, sent = done["redelivered"], done["sent"]
            if not await self._page(page, self._stock_outs_phase, self._with_refused, done):
                return False  # the same page again at the next step
            self._cursor = int(cursor)
            if self._cursor:
                if done["sent"] > sent:
                    return False  # the channel stream's turn, then the next page
                continue
            if not await self._saw_every_key():
                return False  # the channel stream's turn, then this phase again for the keys it missed
            self._stock_outs_phase, self._left = not self._stock_outs_phase, set()
            if self._stock_outs_phase:
                return True
            if done["redelivered"] > before:
                return False  # the stock-outs went: the channel stream's turn, then the rest

    async def _saw_every_key(self) -> bool:
        """At the end of a phase of the sweep: True where the owed hash holds only the keys it saw and left
        (or dead-lettered since it began). HSCAN's cursor holds within one server's life: a failover, a
        restart of Redis, or the hash moved to another node builds its table again under another hash seed,
        and the cursor kept across it passed over keys never seen — the sweep ended with them owed and
        nothing owed recorded, and they waited for the next retryable dead letter or a restart (C4; a
        stock-out missed by the first phase went after the other values, C2). Else the phase goes again from
        the hash's start for the keys it missed (those it passed are not sent again): one that spans no such
        change sees every key."""
        owed = int(await self.client.hlen(self.config.redeliver_key))
        if owed == len(self._left):
            self._passed = None
            return True
        cfg = self.config
        log.warning("%s: the redelivery's sweep over the keys owed ended with %d keys owed where it left %d (Redis "
                    "failed over or restarted while it ran: an HSCAN cursor holds within one server's life); "
                    "sweeping the keys owed again for those it missed", cfg.channel, owed, len(self._left),
                    extra={"event": "publisher_redeliver_missed", "channel": cfg.channel, "owed": owed,
                           "seen": len(self._left)})
        self._passed, self._left = (self._passed or set()) | self._left, set()
        return False

    async def _page(self, page: list[tuple[str, str]], stock_outs_only: bool, with_refused: bool,
                    done: dict[str, int]) -> bool:
        """Deliver the newest values of one page of owed keys; forget those settled. False: stop."""
        cfg = self.config
        if not page:
            return True
        keys, passed = [key for key, _ in page], self._passed or set()
        wanted = {key for key, owed in page if (with_refused or owed.endswith(RETRY)) and key not in passed}
        values = await self.client.hmget(cfg.state_key, keys)
        newest = {key: state_update(cfg.channel, key, value) for key, value in zip(keys, values, strict=True)
                  if value is not None}
        # Refused keys outside their pass are only forgotten once a newer value of theirs got through.
        todo = [u for key, u in newest.items() if key in wanted and u.version > self._delivered_version(key)
                and (u.quantity == 0 or not stock_outs_only)]
        done["sent"] += len(todo)
        if todo and not await self._deliver(todo):
            return False
        settled = [key for key in keys if key not in newest or self._delivered_version(key) >= newest[key].version]
        if settled and not await self._lease.forget(cfg.redeliver_key, settled):
            return False  # fenced off: another publisher holds the lease and owns this bookkeeping
        self._left.update(keys)
        self._left.difference_update(settled)
        redelivered = sum(1 for u in todo if self._delivered_version(f"{u.sku}\t{u.location}") >= u.version)
        done["redelivered"] += redelivered
        self.metrics.outcome(cfg.channel, self.adapter, "redelivered", redelivered)
        return not self.failed_in_pass
