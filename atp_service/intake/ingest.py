"""Facts from Redis input streams (POS, WMS): a consumer group, acknowledged only once durable.

An entry is XACKed after its fact is durable in its shard log (or after it went to the dead-letter or quarantine
stream): a crash mid-batch leaves the rest pending, the restarted service re-reads its own pending entries first, and
dedupe by ``(source, event_id)`` (E8) makes the outcome exactly-once in effect. Entries that cannot be decoded or
validated go to the dead-letter stream with the reason and their original fields, and never stop the consumer.

With several processes on one keyspace each reads as a consumer of its own in the same group, so Redis spreads the
entries over them. A fact of a group another process owns is sent to that owner (``FactSender``), which applies it and
answers once it is durable there; its entry is acknowledged only then — one it quarantined written to the quarantine
stream here, with its entry's XACK in one script (E8: decided once). One no process owns now stays pending.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from typing import Any

from redis.exceptions import RedisClusterException, RedisError

from atp_service.config import IngestSettings
from atp_service.engine.clock import Clock, Ticks
from atp_service.intake.again import make_group_again, quarantined_before, read_pending
from atp_service.intake.backlog import BacklogGauge
from atp_service.intake.bounds import bound_key, start_again, tag_or_say
from atp_service.intake.claims import Claims
from atp_service.intake.dead_letters import TRIMMED
from atp_service.intake.departed import DepartedConsumers
from atp_service.intake.entries import Entry, Read, decode_all
from atp_service.intake.facts import FactDesk
from atp_service.intake.owners import FactSender, OwnerSends
from atp_service.intake.quarantine import Acks
from atp_service.intake.read_refusals import ReadRefusals
from atp_service.intake.refusals import RefusalBound
from atp_service.intake.refused_kept import recall
from atp_service.intake.settle import Settler
from atp_service.intake.unacked import Unacked
from atp_service.intake.unread import GroupReader
from atp_service.metrics import zeroed
from atp_service.retry import Backoff, BackoffPolicy
from atp_service.storage.resp import as_text, group_lost
from atp_service.tasks import cancel_and_wait, exception_seen, finish_uncancelled, stop_if_cancelled
from reservation import Moved

log = logging.getLogger(__name__)
INGEST_RETRY = BackoffPolicy(first_s=0.05, max_s=2.0)
"""Waits of the ingestor between reads while Redis does not answer."""
PENDING_RETRY = BackoffPolicy(first_s=0.05, max_s=1.0)
"""Waits between passes over this consumer's own pending entries while some cannot be applied yet
(their group being handed over, its owner not answering); new entries are read meanwhile."""
PENDING_PASS_S = 2.0
"""No page of a pass over this consumer's pending entries starts later than this after the pass did: the next pass
goes on from there, new entries read in between. Far below ``claim_idle_ms``: else others claim what it sends."""
PENDING_SETTLE_S = 0.2
"""How long a pass over the pending entries waits for the batches in flight (their entries are in its
list too); one still waiting for an owner then puts the pass off, and new entries are read meanwhile."""

class StreamIngestor:
    """Reads the input streams on its own Redis connection pool, separate from the log's appends.

    ``send``: where facts of groups other processes own go (``ownership = leases``); None: every group is ours.
    ``clock`` judges facts (E7); ``ticks`` times its passes, claims and waits (its owners' too)."""

    def __init__(self, client: Any, desk: FactDesk, settings: IngestSettings, clock: Clock,
                 read_count: int | None = None, send: FactSender | None = None,
                 departed: DepartedConsumers | None = None, ticks: Ticks = time.monotonic) -> None:
        # The raw XREADGROUP reply: redis-py's per-entry dict building cost more than the decoding.
        client.set_response_callback("XREADGROUP", lambda response, **_: response)
        self._client, self._desk = client, desk
        self._owners = OwnerSends(send, desk.quarantined_there, ticks=ticks) if send is not None else None
        self._departed = departed  # leased: consumers of processes gone for good removed, their owed counts told
        self._config, self._clock, self._ticks = settings, clock, ticks
        self._metrics = metrics = desk.metrics
        self._read_count = settings.ingest_count if read_count is None else read_count
        self._streams = list(settings.input_streams)
        zeroed(self._metrics.dead_lettered, *((stream,) for stream in self._streams))  # alerted on by increase()
        zeroed(self._metrics.ingest_trimmed_unread, *((stream,) for stream in self._streams))
        zeroed(self._metrics.ingest_refused_forgotten, *((stream,) for stream in self._streams))
        # Every read of new entries counts the entries it finds were trimmed before it (exactly once).
        self._new = GroupReader(client, self._streams, settings.consumer_group, settings.consumer_name,
                                metrics.ingest_trimmed_unread)
        self._backlog = BacklogGauge(client, settings.consumer_group, self._streams, metrics.ingest_pending,
                                     metrics.ingest_lag, metrics.ingest_consumers)
        self._task: asyncio.Task[None] | None = None
        self._gauge_task: asyncio.Task[None] | None = None
        self._retry_own_pending = True  # first: what this consumer had in hand before a crash
        self._retry_at = 0.0
        self._read_first = False  # a pass failed: a read of new entries is tried before the next
        self._doing = "new"  # what a failure of the reader's loop stopped (``read_refusals.WHAT``)
        self._retries = Backoff(PENDING_RETRY)
        self._pending_after: list[str] | None = None  # where a pass cut short goes on
        self._pending_left = False  # entries were left pending in the passes before, of this round
        self._batches: set[asyncio.Task[int]] = set()
        self._claimed_at = -math.inf  # claimed at the first step: the monotonic clock reads its uptime, maybe 0
        self._claim_from: dict[str, str] = {}  # per stream, where the next XAUTOCLAIM scan goes on
        self._claims = Claims(client, settings.consumer_group, settings.consumer_name, settings.dead_letter_stream,
                              settings.side_stream_maxlen)
        self._unacked = Unacked()  # what a group made again must deliver again, and not judge again (with Redis's)
        self._seen = self._unacked.seen  # per stream, the newest entry id read
        self._consumer_run: int | None = None  # this process's run of the consumer (QuarantineStream.run_of)
        bound = RefusalBound(client, settings.consumer_group, settings.consumer_name, settings.ingest_max_deliveries,
                             metrics.ingest_given_up)
        self._settler = Settler(client, settings, metrics, self._unacked, bound, self._left_pending)
        self._refusals = ReadRefusals(settings.ingest_read_refusals_max, metrics.ingest_read_refused)

    async def start(self) -> None:
        await self._create_groups()
        await self._settler.fence.raised()  # a dead-letter write in doubt of a run before lands nothing (fence.py)
        self._task = asyncio.get_running_loop().create_task(self._run(), name="ingest")
        self._gauge_task = asyncio.get_running_loop().create_task(self._backlog.run(), name="ingest-backlog")

    async def _create_groups(self, again: bool = False) -> None:
        """The group on every input stream where missing. ``again``: one lost while serving (deleted), each said."""
        group, written = self._config.consumer_group, self._desk.quarantine.written_key
        if not again:  # before its own pending entries are read: the runs before's quarantine writes land nothing
            marked = (self._departed.mark, self._departed.mark_ms) if self._departed else ()  # leased: no sweep takes
            self._consumer_run = await self._desk.quarantine.run_of(  # that run (marked at least claim_idle_ms)
                self._client, group, self._config.consumer_name, *marked)
        for stream in self._streams:  # from the beginning: entries appended while the service was down count too
            tagged, seen = start_again(stream, self._unacked) if again else ([], None)
            made, start = await make_group_again(self._client, stream, group, self._unacked, written,
                                                 bound_key(stream, group, self._config.consumer_name), tagged, seen)
            if made and again:
                log.warning("input stream %s had no consumer group %s (the stream or its group was deleted): "
                            "made again, read after entry %s", stream, group, as_text(start),
                            extra={"event": "ingest_group_made_again", "stream": stream, "after": as_text(start)})

    @property
    def task(self) -> asyncio.Task[None] | None:
        """The reading loop (watched by the service: it ends only when stopped, or by a bug)."""
        return self._task

    @property
    def gauge_task(self) -> asyncio.Task[None] | None:
        """The backlog's measuring loop (watched by the service too: it ends only when stopped, or by a bug)."""
        return self._gauge_task

    async def stop(self) -> None:
        """Stop reading; what is not acknowledged stays pending and is read again on the next start.
        Raises how the reading loop ended if it failed, once everything is stopped."""
        try:
            await cancel_and_wait(self._task)
        finally:
            with contextlib.suppress(Exception):  # it only measures: a failure of its own was told when it ended
                await cancel_and_wait(self._gauge_task)
            batches = [*self._batches, *(self._owners.tries if self._owners is not None else ())]  # tries: no one waits
            for task in batches:
                task.cancel()
            for task in batches:  # each cancelled until it ends: a batch's XACK can lose one (redis-py, 3.11)
                with contextlib.suppress(Exception):  # a batch's own failure was logged (_batch_done)
                    await cancel_and_wait(task)
            await self._client.aclose()

    async def _run(self) -> None:
        backoff, group_gone = Backoff(INGEST_RETRY), False
        while True:
            stop_if_cancelled()  # a cancel redis-py lost during the round before: the reader read on for ever
            try:
                if group_gone:  # one read names every stream: one stream without its group stops them all
                    self._doing = "new"  # its refusal keeps every new entry out
                    await self._create_groups(again=True)
                    group_gone = False
                if await self.step():
                    backoff.reset()
            except (RedisError, RedisClusterException, OSError) as exc:  # a cluster no node of which answers
                group_gone, refusal = group_lost(exc), self._refusals.failed(exc, self._doing)
                self._metrics.ingest_read_failures.inc()
                delay = backoff.next_delay()
                log.warning("input streams: %s; retrying in %.2fs", exc, delay,
                            extra={"event": "ingest_read_failed", "error": str(exc), "retry_s": round(delay, 2),
                                   "refusal": refusal or "", "what": self._doing})  # a pass's: new reads go on
                self._retry_own_pending = True
                await asyncio.sleep(delay)

    async def step(self) -> bool:
        """One read; new entries are applied in the background (up to ``ingest_inflight`` batches at once: facts
        commute by E3, so batches need no order between them) while the next is read. This consumer's own pending
        entries are read again when due (``_retry_pending``). True: new entries were asked for (a pass over the
        pending ones, read otherwise, says nothing of that read: its failures, one after each pass, were retried
        at the shortest wait, ~20 a second). A pass that fails is put off as one leaving entries pending is, and a read
        of new entries is tried before the next: one failing for good no more holds back every new entry, nor new reads
        refused keep the pass out."""
        cfg = self._config
        if self._retry_own_pending and self._ticks() >= self._retry_at and not self._read_first:
            self._doing = "pending"
            try:
                passed = await self._retry_pending()
            except BaseException:  # put off as a pass leaving entries pending is, new entries read first: else one
                self._read_first, self._retry_at = True, self._ticks() + self._retries.next_delay()  # failing for
                raise  # good (an entry's batch refused) was due again at each try, and no new entry was read
            if passed:  # one put off for the batches in flight says nothing of a refusal
                self._refusals.read("pending")
            return False
        if self._ticks() - self._claimed_at >= cfg.claim_idle_ms / 1000 / 2:
            self._claimed_at, self._doing = self._ticks(), "claim"  # counted apart: new reads between end no count
            await self._handle(await self._claim(), wait=False)  # in the reading loop: no owner's try waited for
            if self._departed is not None:  # after the claim: a gone consumer's pending entries taken first
                await self._departed.sweep()  # then its own run drawn again, where a sweep took it all the same (E8)
                self._consumer_run = await self._departed.kept_run(self._desk.quarantine)
            await self._tag()  # the bounds raised since, used once Redis holds the token told with them (bounds.py)
            self._refusals.read("claim")
        self._doing = "new"
        while len(self._batches) >= cfg.ingest_inflight:
            await asyncio.wait(self._batches, return_when=asyncio.FIRST_COMPLETED)
        self._read_first = False  # tried, whatever its answer: new reads refused too must not keep the pass out
        entries = await self._read(None, block=self._block_ms())
        self._refusals.read("new")  # a refusal said is over
        if entries:
            task = asyncio.get_running_loop().create_task(self._handle(entries))
            self._batches.add(task)
            task.add_done_callback(self._batch_done)
        return True

    async def _retry_pending(self) -> bool:
        """This consumer's pending entries, read from the start of its list page by page and applied
        (what it had in hand before a restart, or could not apply yet). A pass stops starting pages
        after ``PENDING_PASS_S`` and the next goes on from there; entries still left once the list
        was read through are read again after a growing wait (``PENDING_RETRY``). False: put off, nothing read."""
        if not await self._settle_batches(PENDING_SETTLE_S):  # our pending list includes what is in flight
            self._retry_at = self._ticks() + PENDING_RETRY.first_s
            return False
        left = self._pending_after is not None and self._pending_left
        if self._pending_after is None:
            self._unacked.pass_begun()
        after = self._pending_after or ["0"] * len(self._streams)
        self._retry_own_pending = not await self._desk.wrote_owed()  # owed quarantine writes first (E8); failed: again
        deadline = self._ticks() + PENDING_PASS_S
        while self._ticks() < deadline:
            entries = await self._read(after, block=None)
            if not entries:
                break
            await self._handle(entries, wait=False)  # in the reading loop: no owner's try waited for
            last = {stream: entry_id for stream, entry_id, _ in entries}
            after = [as_text(last[s]) if s in last else a for s, a in zip(self._streams, after, strict=True)]
            for stream, entry_id in last.items():
                self._unacked.pass_at(stream, entry_id)
        else:  # cut short: new entries are read first, then the pass goes on where it stopped
            self._pending_after, self._pending_left = after, left or self._retry_own_pending
            self._retry_own_pending, self._retry_at = True, self._ticks() + PENDING_RETRY.first_s
            return True
        self._pending_after, self._pending_left = None, False
        self._unacked.pass_read_through()
        self._retry_own_pending |= left
        if self._retry_own_pending:
            self._retry_at = self._ticks() + self._retries.next_delay()
        else:
            self._retries.reset()
        await self._tag()  # the bound the pass let go up, used once Redis holds the token told with it
        return True

    async def _tag(self) -> None:
        cfg = self._config
        await tag_or_say(self._client, self._streams, cfg.consumer_group, cfg.consumer_name, self._unacked)

    def _block_ms(self) -> int:
        """How long a read of new entries waits: never past a pass over the pending ones that is due."""
        block = self._config.ingest_block_ms
        if self._retry_own_pending:
            block = min(block, int((self._retry_at - self._ticks()) * 1000))
        return max(1, block)  # BLOCK 0 would wait for ever

    def _batch_done(self, task: asyncio.Task[int]) -> None:
        self._batches.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("input streams: batch failed (%s); its entries stay pending", task.exception(),
                        extra={"event": "ingest_batch_failed", "error": str(task.exception())})
            self._retry_own_pending = True

    async def _settle_batches(self, within_s: float) -> bool:
        """Whether every batch in flight is done (waiting up to ``within_s``)."""
        return not self._batches or not (await asyncio.wait(list(self._batches), timeout=within_s))[1]

    async def _read(self, after: list[str] | None, block: int | None) -> list[Entry]:
        """Entries after these ids, one per stream, of this consumer's pending; None: new ones, and
        the entries trimmed before they were read counted (``GroupReader``)."""
        cfg = self._config
        if after is None:
            reply = await self._new.read(self._read_count, block)
            self._unacked.marked(self._new.marks)  # with the entries it delivers (again.py)
        else:  # the raw reply, not redis-py's per-entry dict building: [[stream, [[id, [f, v…]], …]], …]
            reply, marks = await read_pending(self._client, self._streams, cfg.consumer_group, cfg.consumer_name,
                                              self._read_count, after)  # with the marks, in one step (E8)
            lowest = {as_text(stream): rows[0][0] for stream, rows in reply or [] if rows}  # kept: Redis may lose it
            self._unacked.marked(marks, lowest)  # entries a group made again delivered, that read's answer lost (E8)
        streams = reply.items() if isinstance(reply, dict) else (reply or [])  # RESP3 map or RESP2 list
        entries: list[Entry] = []
        for stream, rows in streams:
            name = as_text(stream)
            entries += [(name, entry_id, flat or None) for entry_id, flat in rows]
            if rows:
                self._unacked.note_seen(name, rows[-1][0], rows[-1][1])
        return entries

    async def _claim(self) -> list[Entry]:
        """Take over entries a dead consumer left pending for longer than claim_idle_ms."""
        with self._unacked.taken() as out:  # a later stream's claim failing: those taken known to be pending
            for stream in self._streams:
                # Whole even if a stop cancels the reader meanwhile: the trimmed ones' dead letters counted.
                claimed = asyncio.ensure_future(self._claim_stream(stream))
                claimed.add_done_callback(exception_seen)  # a stop that gave up waiting: no "never retrieved" line
                out += await finish_uncancelled(claimed)
        if out:
            self._metrics.ingest_claimed.inc(len(out))
            log.info("claimed %d stale pending entries", len(out))
        return out

    async def _claim_stream(self, stream: str) -> list[Entry]:
        """One stream's claim (``Claims``): the entries taken over; the trimmed ones' dead letters told."""
        # Each call scans a bounded part of the group's pending list: the next goes on from the cursor it returns
        start = self._claim_from.get(stream, "0-0")  # (0-0: from the start again): entries far down the list reached
        with self._unacked.claiming(stream, start.encode()):  # its answer lost: those it took known (E6)
            cursor, rows, trimmed, mark = await self._claims.claim(stream, self._config.claim_idle_ms, start,
                                                                   self._read_count)  # a read's batch bound
        self._claim_from[stream] = as_text(cursor)
        self._unacked.marked({stream: mark})  # those claimed may be ones a group made again delivered again
        # Dead-lettered by the claim itself (``Claims``): whether the consumer that held one applied it is not known.
        self._settler.told([(stream, entry_id, [], TRIMMED) for entry_id in trimmed])
        return [(stream, entry_id, flat or None) for entry_id, flat in rows]  # raw: [id, [f, v, …]]

    async def _handle(self, entries: list[Entry], wait: bool = True) -> int:
        """Apply the entries' facts; acknowledge each entry once its fact is durable (here or at its
        group's owner) or dead-lettered. The others stay pending, to be read again — and are known to
        ``Unacked`` meanwhile: a group deleted takes them out of the pending list. One another batch holds in hand
        (delivered again meanwhile) stays pending, judged once that batch settled (``Unacked.busy``)."""
        if busy := self._unacked.busy(entries):
            self._unacked.left(busy)
            self._left_pending()  # read again from our own list: a pass waits for the batches in flight
            entries = [entry for entry in entries if entry[:2] not in busy]
        if not entries:
            return 0
        held = self._unacked.hold(entries)
        try:
            return await self._handle_held(entries, wait)
        except BaseException:
            self._unacked.left((stream, entry_id) for stream, entry_id, _ in entries)  # each stays pending
            raise
        finally:
            self._unacked.release(held)

    async def _handle_held(self, entries: list[Entry], wait: bool) -> int:
        """``_handle``'s work. An entry holds one fact: those applied here are acknowledged before the others' owners
        are waited for; one quarantined here with its quarantine entry, never decided again, as one owed is (E8).
        A fact this process's clock finds in the future (E7) is refused (dead-lettered) unless applied already — by
        a process whose clock ran ahead, which left the entry pending (E8: a duplicate, acknowledged); of a group
        another process owns, its owner judges both. The facts of other processes' groups go to their owners in the
        read's order, those stamped ahead among the others (E8: each shard decides a read's facts in its order)."""
        entries = await self._settler.fence.landed(entries)  # a dead-letter write in doubt of theirs fenced first
        now, cfg = self._clock.now_ms(), self._config
        entries = self._desk.quarantine.not_owed(entries)
        await recall(self._client, cfg.consumer_group, self._unacked, entries)  # E7: refused by any process, any run
        entries, judged = self._unacked.judged(entries)  # judged: E7, before
        facts, read, dead, ahead = await decode_all(entries, now, cfg.limits, cfg.ingest_max_entry_bytes)
        facts, read, ahead, before = await quarantined_before(self._client, self._desk.quarantine, self._unacked,
                                                              facts, read, ahead)  # E8: ahead too (E7 judged after)
        await self._settler.ack(before)
        if judged:  # their dead letters written again only where the dead-letter stream lost them
            await self._settler.dead_letter(judged, ())
        results = await self._desk.record(facts, "stream", acks=self._acks(read)) if facts else []
        if ahead:  # judged after the rest as before it: a fact not ahead never has an ahead one's payload (E8)
            results += await self._desk.applied_or_refused([fact for fact, _, _ in ahead], [r for _, _, r in ahead])
            facts, read = facts + [fact for fact, _, _ in ahead], read + [entry for _, entry, _ in ahead]
        remote = [i for i, result in enumerate(results) if isinstance(result, Moved) and result.owner]
        if self._owners is None or not remote:
            return await self._settler.settle(read, results, dead)
        away = set(remote)
        here = [i for i in range(len(results)) if i not in away]
        count = await self._settler.settle([read[i] for i in here], [results[i] for i in here], dead)
        place = {entry[:2]: n for n, entry in enumerate(entries)}
        remote.sort(key=lambda i: place[read[i][:2]])  # sent first, those stamped ahead were decided out of order
        await self._owners.to_owners(facts, results, remote, wait, self._acks(read))
        return count + await self._settler.settle([read[i] for i in remote], [results[i] for i in remote], [])

    def _acks(self, read: list[Read]) -> Acks:
        """The input entries of facts (one each), acknowledged with their quarantine entries (``QuarantineStream``)."""
        return Acks(self._config.consumer_group, self._config.consumer_name, [r[:2] for r in read], self._consumer_run)

    def _left_pending(self) -> None:
        """Some entries stay pending: read again from this consumer's own list."""
        self._retry_own_pending = True
