"""A shard actor: one asyncio task owns one Ledger and works through a bounded mailbox.

No locks: only this task touches its ledger, except a coordinator that first pauses it (see
``engine``). Each turn drains up to ``batch_max`` messages, applies them, appends the resulting
events as one log entry (group commit) and only then answers (R7). An append whose outcome is
unknown is fenced and settled (``durability``) before the shard takes another message.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from atp_service.config import ShardSettings
from atp_service.engine.clock import Clock
from atp_service.engine.listeners import EntryListeners
from atp_service.engine.mailbox import Mailbox, MailboxFull
from atp_service.engine.messages import (
    REPLACED,
    Answer,
    Control,
    Envelope,
    InFlight,
    Maintain,
    Pause,
    Sealed,
    Work,
    deliver,
)
from atp_service.engine.turn import apply_batch, moves_of, refuse_all, take_batch
from atp_service.metrics import EngineMetrics
from atp_service.storage.durability import Checkpoints, LogDiverged, landed_of
from atp_service.storage.log import Fenced, LogStore
from atp_service.tasks import cancel_and_wait
from atp_service.traces import span
from reservation import Ledger, LogEntry, Moved, PositionStore, Reason, ResourceExhausted, Unavailable, encode_entry

log = logging.getLogger(__name__)


class ShardActor(EntryListeners):
    vacant = False  # the shard's group is another process's (``vacant.Vacant``)
    def __init__(self, shard: int, ledger: Ledger, log_store: LogStore, clock: Clock,
                 settings: ShardSettings, seq: int, metrics: EngineMetrics | None = None) -> None:
        super().__init__(shard)
        self.ledger = ledger
        self.seq = seq  # the last entry durable in this shard's log
        self._log = log_store
        self._clock = clock
        self._settings = settings
        self._metrics = metrics = metrics or EngineMetrics()
        self._mailbox: Mailbox[Envelope] = Mailbox(settings.mailbox_size)  # read by _run only
        self._task: asyncio.Task[None] | None = None
        self._set_aside: deque[Envelope] = deque()  # taken from the mailbox but behind a control message
        self._inflight: deque[InFlight] = deque()  # appended, not yet durable; oldest first
        self._doubt: list[tuple[int, LogEntry, bytes]] = []  # failed appends that may have landed
        self.failure: BaseException | None = None
        """Why this shard's task ended while the service runs (a bug): it answers nothing more."""
        self.on_failure: list[Callable[[ShardActor], None]] = []
        """Called once when this shard's task ends while the service runs (see ``failure``)."""
        self._stopping = self._maintain_queued = False
        self._checkpoints = Checkpoints(shard, log_store, settings.snapshot_policy, seq)
        self._settling = asyncio.Lock()
        self._depth = metrics.mailbox_depth.labels(str(shard))
        self._lag_s = 0.0  # how long the message taken last had waited in the mailbox
        self._max_delay_s = settings.max_queue_delay_ms / 1000
        self.lease_until = float("inf")
        """``time.monotonic()`` past which this process's lease on the group may have run out
        (``membership``); the shard refuses all work from then on."""

    def ahead_of_log(self) -> dict[tuple[str, str], int] | None:
        """Per position, how far memory's ``available`` is ahead of the durable log: the moves of
        the batches in flight (None: none in flight). Channels subtract it: they publish only
        durable state (C4), and a batch in flight may yet be undone."""
        return moves_of(self._inflight) if self._inflight else None

    def positions(self) -> PositionStore:
        """This shard's positions as memory holds them (ahead of the log by the batches in flight:
        ``ahead_of_log``), to read between batches; never to change — only the actor changes them."""
        return self.ledger.store

    @property
    def in_doubt(self) -> bool:
        """Appends failed and are not yet settled: the log is unreachable from here."""
        return bool(self._doubt)

    # -- lifecycle ---------------------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"shard-{self.shard}")
        self._task.add_done_callback(self._ended)

    def _ended(self, task: asyncio.Task[None]) -> None:
        """The actor loop never returns while the service runs: if it ended, say so at once and
        loudly (callers, health, metric, log) — never a shard that silently stops answering."""
        if self._stopping or task.cancelled() or self.failure is not None:
            return
        self._report_failure(task.exception() or RuntimeError("the actor loop returned"))

    def break_down(self, error: BaseException) -> None:
        """Stop this shard for good: its memory can no longer be trusted to match its log (a bug
        found outside its own task). Reported like a task that ended (``_ended``)."""
        if self.failure is None and not self._stopping:
            self._report_failure(error)
            if self._task is not None:
                self._task.cancel()

    def _report_failure(self, error: BaseException) -> None:
        self.failure = error
        self._metrics.shard_failures.inc()
        log.error("shard %d stopped working; it answers UNAVAILABLE until the service restarts",
                  self.shard, exc_info=self.failure, extra={"event": "shard_failed", "shard": self.shard})
        self._refuse_waiting(Unavailable(f"shard {self.shard} stopped working; the service restarts",
                                         Reason.SHARD_STOPPED))
        for callback in self.on_failure:
            callback(self)

    async def stop(self, refusal: Unavailable | None = None) -> None:
        """Finish the batch in hand, then fail whatever is still waiting (cleanly, not silently) with
        ``refusal`` (by default: the service is shutting down)."""
        self._stopping = True
        try:
            await asyncio.wait_for(self._drain(), timeout=self._settings.redis_timeout_s * 2)
        except TimeoutError:
            pass  # what is still in doubt is settled by the next start's recovery (it reads the log)
        except LogDiverged:
            log.exception("shard %d: stopping with a log it cannot trust", self.shard)
        if self._task is not None and not self._task.done():  # a failed task was reported already
            await cancel_and_wait(self._task)
        self._refuse_waiting(refusal or Unavailable("service is shutting down", Reason.SHUTTING_DOWN))
        await self._checkpoints.settled()  # a snapshot in writing lands (or fails) before the final one

    # -- sending -------------------------------------------------------------
    def _refuse_if_unable(self) -> None:
        if self._stopping:
            raise Unavailable("service is shutting down", Reason.SHUTTING_DOWN)
        if self.failure is not None:
            raise Unavailable(f"shard {self.shard} stopped working ({self.failure!r}); the service restarts",
                              Reason.SHARD_STOPPED)
        if self._log.is_fenced(self.shard) or self._clock_past_lease():
            raise self._replaced()
        if self._doubt:
            raise Unavailable(f"shard {self.shard}: log storage unreachable, retry later")

    def _clock_past_lease(self) -> bool:
        """This process's lease on the group ran out by its own clock: it may be another's, so nothing is answered."""
        return self.lease_until < time.monotonic()

    def _replaced(self) -> Unavailable:
        """The refusal once another owns the shard: the keyspace's newer instance, or (leased) the group's new owner."""
        return Moved(self.shard, "") if self._log.leased else Unavailable(REPLACED, Reason.INSTANCE_REPLACED)

    def submit(self, work: Work) -> asyncio.Future[Any]:
        """Queue work for this shard; refuse at once when the shard cannot take it."""
        if self._stopping or self.failure is not None or self._doubt or self._log.is_fenced(self.shard) or \
                self._clock_past_lease():
            self._refuse_if_unable()
        if self._lag_s > self._max_delay_s and not self._mailbox.empty():
            raise self._shed(f"overloaded (queued work waits {self._lag_s * 1000:.0f} ms, limit "
                             f"max_queue_delay_ms={self._settings.max_queue_delay_ms})")
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        try:
            self._mailbox.put_nowait(Envelope(work, fut))
        except MailboxFull:
            raise self._shed(f"mailbox full ({self._settings.mailbox_size} waiting)") from None
        return fut

    def _shed(self, why: str) -> ResourceExhausted:
        self._metrics.shed.inc()
        return ResourceExhausted(f"shard {self.shard}: {why}, retry with backoff", metadata={"shard": str(self.shard)})

    async def pause(self) -> asyncio.Future[None]:
        """Wait until this shard is between batches, with nothing in flight, and parked; set the
        returned future to resume it. Cancelled at any point, it leaves the shard running (R8): the
        pause request is then either skipped by the shard or released at once."""
        self._refuse_if_unable()
        resume: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        paused: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        try:
            await self._mailbox.put(Envelope(Pause(resume), paused))
            if self.failure is not None or self._stopping:  # failed while we waited for room: nobody reads it
                self._refuse_if_unable()
            await paused
        except BaseException:
            paused.cancel()
            if not resume.done():
                resume.set_result(None)  # granted meanwhile, or about to be: let the shard go on
            raise
        return resume

    def request_maintenance(self) -> None:
        # Only with something to do: a message that finds nothing still wakes the actor (16 shards, 10
        # passes/s: a third of an idle process's CPU). One at most waits: a shard stuck settling must
        # not fill its mailbox with them.
        if not self._stopping and not self._maintain_queued and not self._mailbox.full() and self._wants_maintenance():
            self._maintain_queued = True
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._mailbox.put_nowait(Envelope(Maintain(), fut))

    # -- a cross-shard change: a coordinator holds this shard paused (nothing in flight) --------
    def seal_part(self, now: int) -> Sealed | None:
        """Seal the open batch as this shard's part of a cross-shard change (None: nothing to log)."""
        if not self.ledger.pending:
            self.ledger.commit(now)
            return None
        assert not self._inflight, "a paused shard has nothing in flight"
        entry, undo, moved = self.ledger.seal(now)
        return Sealed(self.seq + 1, entry, encode_entry(entry), undo, moved)

    def track_part(self, part: Sealed, done: asyncio.Future[None]) -> None:
        """Follow a sealed part to its end like any batch of this shard: durable, or undone and
        settled — whatever happens to the coordinator that sent it (R8)."""
        self._inflight.append(InFlight(part.seq, part.entry, part.data, part.undo, part.moved, [], done))
        done.add_done_callback(self._on_append_done)

    # -- pipelined group commit -------------------------------------------------------
    def _seal(self, now: int, answers: list[Answer]) -> None:
        """Send the open batch to the log and go on; its callers are answered once it is durable
        and every entry before it is (R7). Answers of a batch with nothing to log wait behind
        the newest entry in flight: a replayed decision must not be acknowledged before it is durable."""
        ledger = self.ledger
        if not ledger.pending:
            ledger.commit(now)  # nothing to log; drop its undo steps
            if self._inflight:
                self._inflight[-1].answers.extend(answers)
            else:
                deliver(answers)
            return
        entry, undo, moved = ledger.seal(now)
        seq = self.seq + 1 + len(self._inflight)
        data = encode_entry(entry)
        done = self._log.submit(self.shard, seq, data)
        self._inflight.append(InFlight(seq, entry, data, undo, moved, answers, done))
        done.add_done_callback(self._on_append_done)

    def _on_append_done(self, _: asyncio.Future[None]) -> None:
        """Settle finished appends oldest first: deliver, or take back everything from a failure on."""
        while self._inflight and self._inflight[0].done.done():
            head = self._inflight[0]
            error = None if head.done.cancelled() else head.done.exception()
            if error is not None or head.done.cancelled():
                self._fail_in_flight(error)
                return
            self._inflight.popleft()
            self.seq = head.seq
            deliver(head.answers)
            self._tell(self.listeners, head.entry)

    def _fail_in_flight(self, error: BaseException | None) -> None:
        """An append failed: revert every batch in flight (newest first), answer UNAVAILABLE,
        keep later entries out of the log, and remember them all to settle."""
        self._metrics.append_failures.inc()
        log.warning("shard %d: append of entry %d failed (%s)", self.shard, self._inflight[0].seq, error)
        # Fenced: refused before any write, and every later append is refused too (the epoch only
        # grows), so nothing in flight landed and there is nothing to settle.
        replaced = isinstance(error, Fenced)
        failure = self._replaced() if replaced else Unavailable(
            f"shard {self.shard}: outcome unknown: the change is not known to be durable (log storage "
            "unreachable); retry with the same ids, which answers what was decided", Reason.OUTCOME_UNKNOWN)
        for rec in reversed(self._inflight):
            self.ledger.revert(rec.undo)
            rec.done.cancel()
            deliver([(reply, None, failure) for reply, _, _ in rec.answers])
        if not replaced:
            self._doubt.extend((rec.seq, rec.entry, rec.data) for rec in self._inflight)
        undone = [rec.entry for rec in self._inflight]
        self._inflight.clear()
        self._refuse_waiting(failure)
        if not replaced:
            self.request_maintenance()  # an idle shard settles at once, not at the next message
        for entry in undone:
            self._tell(self.undo_listeners, entry)

    def _refuse_waiting(self, error: Unavailable) -> None:
        """Until the doubt is settled (Redis answering again) nothing here can be decided:
        answer what is waiting now instead of letting it run into its deadline."""
        refuse_all(self._set_aside, self._mailbox, error)
        self._maintain_queued = False  # none waits any more

    def _blocked(self) -> bool:
        """Nothing more may be applied now: a doubt to settle, or pipeline_depth entries in flight."""
        return bool(self._doubt) or len(self._inflight) >= self._settings.pipeline_depth

    async def _ready(self) -> None:
        """Wait until nothing blocks applying more (see ``_blocked``)."""
        while self._blocked():
            if self._doubt:
                await self._settle()
            else:
                await asyncio.wait([self._inflight[0].done])

    async def _drain(self) -> None:
        """Wait until nothing is in flight and nothing is in doubt: memory equals the durable log."""
        while self._inflight or self._doubt:
            if self._inflight:
                await asyncio.wait([rec.done for rec in self._inflight])
            if self._doubt:
                await self._settle()

    async def _settle(self) -> None:
        """Find out which failed appends reached the log anyway, fenced (R7); until then this shard
        takes no work. Those that did are applied (their callers were told UNAVAILABLE: a retry
        with the same ids replays them)."""
        async with self._settling:  # the actor loop and a stop may both ask: one settle, once
            if not self._doubt:
                return
            doubt = self._doubt
            landed = await landed_of(self._log, self.shard, self.seq, doubt)
            self._doubt = []
        if landed is not None:
            for _, entry, _ in doubt[len(landed):]:
                self._tell(self.lost_listeners, entry)
        for seq, entry in landed or ():  # None: replaced; this instance takes no more work and stops
            log.warning("shard %d: entry %d did land; applying it (its callers were told UNAVAILABLE)",
                        self.shard, seq)
            self.ledger.replay(entry)
            self.seq = seq
            self._tell(self.landed_late_listeners, entry)
            self._tell(self.listeners, entry)

    # -- the actor loop ------------------------------------------------------
    async def _run(self) -> None:
        mailbox, limit, set_aside = self._mailbox, self._settings.batch_max, self._set_aside
        while True:
            if not set_aside and mailbox.empty():
                self._lag_s = 0.0  # nothing waits: a backlog long gone must not shed the next burst
            first = set_aside.popleft() if set_aside else await mailbox.get()
            self._lag_s = time.monotonic() - first.at
            if isinstance(first.message, Control):
                try:
                    await self._control(first)
                except BaseException:  # the actor ends inside it (see _ended): its sender is answered too
                    if not first.reply.done():
                        first.reply.set_exception(
                            Unavailable(f"shard {self.shard} stopped working", Reason.SHARD_STOPPED))
                    raise
                continue
            if self._blocked():
                # Wait with the message back in line: should the wait end in doubt (an append
                # failed), _refuse_waiting answers it too instead of leaving it to its deadline.
                set_aside.appendleft(first)
                await self._ready()
                continue
            batch = take_batch(first, set_aside, mailbox, limit)
            self._depth.set(len(mailbox) + len(set_aside))
            try:
                self._apply(batch)
            except BaseException:  # the actor dies (see _ended): the batch in hand is answered too
                deliver([(env.reply, None, Unavailable(f"shard {self.shard} stopped working", Reason.SHARD_STOPPED))
                         for env in batch])
                raise

    def _apply(self, batch: list[Envelope]) -> None:
        now = self._clock.now_ms()
        with span(self._log.tracer, "atp.shard.apply", shard=self.shard, commands=len(batch)):
            self._seal(now, apply_batch(self.ledger, batch, now, self._metrics))

    async def _control(self, env: Envelope) -> None:
        control = env.message
        assert isinstance(control, Control)
        if env.reply.done():  # refused while in doubt, or the coordinator gave up
            return
        if isinstance(control, Pause):
            # A coordinator needs memory == durable log, and must not wait on a Redis outage.
            while self._inflight:
                await asyncio.wait([rec.done for rec in self._inflight])
            if env.reply.done():  # the coordinator gave up while this shard drained (R8)
                return
            if self._doubt:
                env.reply.set_exception(Unavailable(f"shard {self.shard}: log storage unreachable, retry later"))
                return
            env.reply.set_result(None)
            await control.resume
        elif isinstance(control, Maintain):
            self._maintain_queued = False
            env.reply.set_result(None)
            if self._wants_maintenance():  # asked again: the request may be older than the last turn
                await self._drain()  # a snapshot needs memory == durable log; so does compaction (undo)
                self.ledger.forget_old_facts()
                self.ledger.compact_some()
                await self.checkpoint()

    def _wants_maintenance(self) -> bool:
        """Something for a maintenance turn, whose drain holds this shard's new work behind its appends in
        flight: every shard is asked each pass, and a stall of each one each pass would be for nothing."""
        return bool(self._doubt) or self.ledger.housekeeping_wanted() or self._checkpoints.due(self.seq)

    async def checkpoint(self, force: bool = False) -> None:
        """Snapshot when due (``force``: anything, written before this returns, as a stop's final one)."""
        if not self._checkpoints.due(self.seq, force):
            return
        if self._inflight or self._doubt:
            # Memory holds batches the log may not: a snapshot now could count them twice on replay.
            log.warning("shard %d: snapshot skipped, %d entries not yet durable", self.shard,
                        len(self._inflight) + len(self._doubt))
            return
        await self._checkpoints.save(self.seq, self.ledger, wait=force)
