"""A shard actor: one asyncio task owns one Ledger and works through a bounded mailbox.

No locks: only this task touches its ledger, except a coordinator that first pauses it (see
``engine``), and a sender that finds the shard idle (the actor waiting for mail, nothing queued,
nothing in flight) and takes that next turn itself, without awaiting anything (``_turn_now``):
the turns stay one at a time and in order, as if the actor had taken the message. Each turn
drains up to ``batch_max`` messages, applies them, appends the resulting events as one log entry
(group commit) and only then answers (R7). An append whose outcome is unknown is fenced and settled
(``durability``) before the shard takes another message.
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
from atp_service.engine.mailbox import Mailbox, MailboxFull
from atp_service.engine.messages import Answer, Control, Envelope, Maintain, Pause, Work, deliver
from atp_service.engine.pipeline import CommitPipeline
from atp_service.engine.turn import apply_batch, refuse_all, take_batch, taken_back
from atp_service.lease_clock import UNLEASED
from atp_service.metrics import EngineMetrics
from atp_service.storage.durability import Checkpoints, landed_of, log_foreign, log_short, said_if_diverged
from atp_service.storage.log import LogStore
from atp_service.tasks import cancel_and_wait, cancel_for_good, in_turns, run_bounded
from atp_service.traces import span
from reservation import DomainError, Ledger, PositionStore, Reason, ResourceExhausted, Unavailable
from reservation._bulk import CountRows, new_positions, room_refusal
from reservation._expiry import EXPIRY_SWEEP_SLICE

log = logging.getLogger(__name__)


class ShardActor(CommitPipeline):
    vacant = False  # the shard's group is another process's (``vacant.Vacant``)
    def __init__(self, shard: int, ledger: Ledger, log_store: LogStore, clock: Clock,
                 settings: ShardSettings, seq: int, metrics: EngineMetrics | None = None, *,
                 snapshot_seq: int | None = None) -> None:
        """``seq``: the last entry of the log ``ledger`` holds; ``snapshot_seq``: the entry the stored
        snapshot covers (by default ``seq``): the entries after it, replayed at a start, count
        towards the next snapshot as much as the entries made since."""
        metrics = metrics or EngineMetrics()
        super().__init__(shard, ledger, log_store, seq, metrics)
        self.clock = clock  # stamps this shard's commands (R6); a group taken over counts its own (GroupClock)
        self._settings = settings
        self._mailbox: Mailbox[Envelope] = Mailbox(settings.mailbox_size)  # read by _run only
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # the actor's (``start``): asked for once, see Mailbox
        self._set_aside: deque[Envelope] = deque()  # taken from the mailbox but behind a control message
        self.failure: BaseException | None = None
        """Why this shard's task ended while the service runs (a bug): it answers nothing more."""
        self.on_failure: list[Callable[[ShardActor], None]] = []
        """Called once when this shard's task ends while the service runs (see ``failure``)."""
        self._stopping = self._maintain_queued = False
        self._checkpoints = Checkpoints(shard, log_store, settings.snapshot_policy,
                                        seq if snapshot_seq is None else snapshot_seq, self.break_down)
        self._settling = asyncio.Lock()
        mailbox, set_aside = self._mailbox, self._set_aside  # not self: a shard given up keeps no ledger alive
        metrics.mailbox_depth.follow(lambda: len(mailbox) + len(set_aside), shard)  # true at any scrape
        self._lag_s = 0.0  # how long the message taken last had waited in the mailbox
        self._parked = False  # the actor waits for a message, with nothing set aside
        self._max_delay_s = settings.max_queue_delay_ms / 1000
        self.lease_until, self.lease_clock = float("inf"), UNLEASED  # the engine's clock once installed (leased)
        """By ``lease_clock``, when this process's lease on the group may have run out (R7): all work refused after."""

    def positions(self) -> PositionStore:
        """This shard's positions as memory holds them (ahead of the log by the batches in flight:
        ``ahead_of_log``), to read between batches; never to change — only the actor changes them."""
        return self.ledger.store

    def room_refusal(self, block: CountRows) -> ResourceExhausted | None:
        """CAPACITY_REACHED if the positions ``block``'s rows would make pass ``max_positions_per_shard``
        now (a read between batches; the shard checks again in its turn)."""
        return room_refusal(self.ledger, new_positions(self.ledger, block))

    # -- lifecycle ---------------------------------------------------------------
    def start(self) -> None:
        loop = self._loop = asyncio.get_running_loop()
        self._task = loop.create_task(self._run(), name=f"shard-{self.shard}")
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
            if self._task is not None:  # again until it ends: one cancel() can be lost (Python 3.11)
                cancel_for_good(self._task)

    def stop_if_log_short(self, durable: int, newest: int) -> None:
        """R7: stop this shard when Redis no longer holds an entry it made durable (restarted from older
        data, a failover to a replica that lagged): memory then holds what Redis lost. Asked by the owner
        check, so an idle shard notices too — at its next write or snapshot alone it would serve the lost
        state (reads, channel feeds) for as long as nothing changes. ``durable`` is this shard's ``seq``
        read before its log's ``newest`` id was: an entry counts only once Redis acknowledged it, and a
        log's newest id never goes back (a trim keeps its own entry).

        E10: it stops too when the log holds an entry past every one it ever sent (``sent_top``, read
        after ``newest`` was: an entry landed by then was sent before) — something else writes the
        group's stream. No other claim's writes pass the owner key (an epoch is its claim's alone, even
        one whose number Redis drew again, ``records.claimed``): a last check. Memory then misses what
        the log holds; the group taken again serves it, instead of stale availability until this
        shard's next write."""
        if self.failure is not None or self._stopping:
            return
        if durable and newest < durable:
            self.break_down(log_short(self.shard, newest, durable))
        elif newest > (sent := self.sent_top()):
            self.break_down(log_foreign(self.shard, newest, sent))

    def _report_failure(self, error: BaseException) -> None:
        self.failure = error
        self._metrics.shard_failures.inc()
        log.error("shard %d stopped working; it answers UNAVAILABLE until it is recovered again (the service "
                  "restarts; leased, its group is given up and taken again)",
                  self.shard, exc_info=self.failure, extra={"event": "shard_failed", "shard": self.shard})
        self._refuse_waiting(Unavailable(f"shard {self.shard} stopped working; the service restarts",
                                         Reason.SHARD_STOPPED))
        for callback in self.on_failure:
            try:
                callback(self)
            except Exception:  # it may run inside a sender's turn (_turn_now): never the sender's error
                log.exception("shard %d: a failure callback failed", self.shard)

    async def stop(self, refusal: Unavailable | None = None) -> None:
        """Finish the batch in hand (past its bound, what is in doubt is the next start's to settle from the
        log), then fail whatever still waits (cleanly, not silently) with ``refusal`` (default: shutting down)."""
        self._stopping, refusal = True, refusal or Unavailable("service is shutting down", Reason.SHUTTING_DOWN)
        try:  # a log it cannot trust said by the drain's task itself: whether or not this stop is still there
            await run_bounded(lambda: said_if_diverged(self._drain(), self.shard, log),  # made in the drain's task
                              self._settings.redis_timeout_s * 2, f"shard-{self.shard}-drain")
        finally:  # this stop cancelled too: the actor does not run on, nobody is left waiting
            if self._task is not None:
                cancel_for_good(self._task)
            self._refuse_waiting(refusal)
        if self._task is not None and not self._task.done():  # a failed task was reported already
            await cancel_and_wait(self._task)
        self._refuse_waiting(refusal)
        await self._checkpoints.settled()  # a snapshot in writing lands (or fails) before the final one

    # -- sending -------------------------------------------------------------
    def _refuse_if_unable(self) -> None:
        if self._stopping:
            raise Unavailable("service is shutting down", Reason.SHUTTING_DOWN)
        if self.failure is not None:
            raise Unavailable(f"shard {self.shard} stopped working ({self.failure!r}); the service restarts",
                              Reason.SHARD_STOPPED)
        if self._log.is_fenced(self.shard) or self.lease_until < self.lease_clock.now():  # the lease ran out by
            raise self._replaced()  # this process's own clock: the group may be another's, nothing is answered
        if self._doubt:
            raise Unavailable(f"shard {self.shard}: log storage unreachable, retry later")

    def submit(self, work: Work) -> asyncio.Future[Any]:
        """Queue work for this shard; refuse at once when the shard cannot take it."""
        if self._stopping or self.failure is not None or self._doubt or self._log.is_fenced(self.shard) or \
                self.lease_until < self.lease_clock.now():
            self._refuse_if_unable()
        if self._lag_s > self._max_delay_s and not self._mailbox.empty():
            raise self._shed(f"overloaded (queued work waits {self._lag_s * 1000:.0f} ms, limit "
                             f"max_queue_delay_ms={self._settings.max_queue_delay_ms})")
        fut: asyncio.Future[Any] = (self._loop or asyncio.get_running_loop()).create_future()
        if self._parked and not self._inflight and self._mailbox.empty():  # idle: see _turn_now
            self._turn_now(work, fut)
            return fut
        try:
            self._mailbox.put_nowait(Envelope(work, fut))
        except MailboxFull:
            raise self._shed(f"mailbox full ({self._settings.mailbox_size} waiting)") from None
        return fut

    def _turn_now(self, work: Work, reply: asyncio.Future[Any]) -> None:
        """The turn the parked actor would take next, for this one message, taken now in the
        sender's task: nothing in it awaits, so no other task runs meanwhile and the shard's turns
        stay one at a time, in order. Saves the message a trip through the mailbox and a wake-up
        of the actor's task. Only for an idle shard (nothing queued, nothing in flight, so nothing
        blocks it either): while an entry is in flight, messages gather in the mailbox and the
        actor applies them together, one log entry for many (ReserveStream, ingest). A turn that
        raises stops the shard as it would in the actor's task."""
        self._parked = False  # work sent from inside this turn is queued: turns never nest
        try:
            if self._log.tracer is None:  # ``_apply`` of this one message (``apply_batch``'s), written out
                now, ledger = self.clock.now_ms(), self.ledger
                assert not isinstance(work, Control)
                mark = ledger.mark()
                try:
                    answer: Answer = (reply, work(ledger, now), None)
                except DomainError as exc:
                    answer = (reply, None, exc)
                except Exception as exc:
                    answer = (reply, None, taken_back(ledger, mark, exc, self._metrics))
                self._metrics.batch_size.sizes[1] += 1  # ``observe(1)`` without its frame (``SizeHistogram``)
                self._seal(now, [answer])
            else:
                self._apply([Envelope(work, reply)])
        except BaseException as exc:
            self._answer_stopped([Envelope(work, reply)])
            self.break_down(exc)
            if not isinstance(exc, Exception):
                raise  # KeyboardInterrupt and its kind are the sender's too
        finally:
            self._parked = True  # the actor's task is still suspended in the mailbox's get

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
            # Waited for room: the shard may have failed (nobody reads the pause), or gone into doubt — the
            # refusal that freed the room came before the pause was in, which would wait behind the settle
            # (for Redis, as long as it takes) with the shards paused before this one held all the while.
            self._refuse_if_unable()
            await paused
        except BaseException:
            paused.cancel()
            if not resume.done():
                resume.set_result(None)  # granted meanwhile, or about to be: let the shard go on
            raise
        return resume

    def request_maintenance(self) -> None:
        # Only with something to do: a message finding nothing still wakes the actor (16 shards, 10 passes/s: a third
        # of an idle process's CPU). One at most waits: a shard stuck settling must not fill its mailbox with them.
        if not self._stopping and not self._maintain_queued and (  # ``_wants_maintenance``, written out
                self._doubt or self.ledger.housekeeping_wanted() or self._checkpoints.due(self.seq)) \
                and not self._mailbox.full():
            self._maintain_queued = True
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._mailbox.put_nowait(Envelope(Maintain(), fut))

    def _refuse_waiting(self, error: Unavailable) -> None:
        """Answer what waits now (a doubt until Redis answers, a stop) instead of leaving it to its deadline."""
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
        for (seq, entry), (_, _, data) in zip(landed or (), doubt, strict=False):  # landed: doubt's first ones
            log.warning("shard %d: entry %d did land; applying it (its callers were told UNAVAILABLE)",
                        self.shard, seq)
            self.ledger.replay(entry)
            self.seq, self.durable_data = seq, data  # as read back, byte for byte (``landed_of``)
            self._tell(self.landed_late_listeners, entry)
            self._tell(self.listeners, entry)
        self._tell_settled()

    # -- the actor loop ------------------------------------------------------
    async def _run(self) -> None:
        mailbox, limit, set_aside = self._mailbox, self._settings.batch_max, self._set_aside
        while True:
            if set_aside:
                first = set_aside.popleft()
            else:
                if mailbox.empty():
                    self._lag_s = 0.0  # nothing waits: a backlog long gone must not shed the next burst
                self._parked = True  # senders may take this shard's next turn themselves (_turn_now)
                try:
                    first = await mailbox.get()
                finally:
                    self._parked = False
            self._lag_s = time.monotonic() - first.at
            if isinstance(first.message, Control):
                try:
                    await self._control(first)
                except BaseException:  # the actor ends inside it (see _ended): its sender is answered too
                    self._answer_stopped([first])
                    raise
                continue
            if self._blocked():
                # Wait with the message back in line: should the wait end in doubt (an append
                # failed), _refuse_waiting answers it too instead of leaving it to its deadline.
                set_aside.appendleft(first)
                await self._ready()
                continue
            batch = take_batch(first, set_aside, mailbox, limit)
            try:
                self._apply(batch)
            except BaseException:  # the actor dies (see _ended): the batch in hand is answered too
                self._answer_stopped(batch)
                raise

    def _answer_stopped(self, envs: list[Envelope]) -> None:
        """Messages in hand when a turn raised (the shard stops): answered, not left to their deadlines."""
        deliver([(env.reply, None, Unavailable(f"shard {self.shard} stopped working", Reason.SHARD_STOPPED))
                 for env in envs])

    def _apply(self, batch: list[Envelope]) -> None:
        now = self.clock.now_ms()
        tracer = self._log.tracer
        if tracer is None:  # tracing off (the usual case): no span's call, keywords and with per turn
            self._seal(now, apply_batch(self.ledger, batch, now, self._metrics))
            return
        with span(tracer, "atp.shard.apply", shard=self.shard, commands=len(batch)):
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
                await self._sweep_expiry()
                await self.checkpoint()

    async def _sweep_expiry(self) -> None:
        """Stale expiry entries dropped a slice at a time, other shards and calls running between
        (this shard's own work waits behind its maintenance turn, as for a snapshot's drain)."""
        await in_turns(self.ledger.expiry_sweep(EXPIRY_SWEEP_SLICE))  # stopped part-way: the rest is kept

    def _wants_maintenance(self) -> bool:
        """Something for a maintenance turn, whose drain holds this shard's new work behind its appends in flight."""
        return bool(self._doubt) or self.ledger.housekeeping_wanted() or self._checkpoints.due(self.seq)

    async def checkpoint(self, force: bool = False) -> None:
        """Snapshot when due (``force``: anything, written before this returns, as a stop's final one)."""
        if not self._checkpoints.due(self.seq, force):
            return
        if self._inflight or self._doubt:  # memory holds batches the log may not: counted twice on replay
            log.warning("shard %d: snapshot skipped, %d entries not yet durable", self.shard,
                        len(self._inflight) + len(self._doubt))
            return
        await self._checkpoints.save(self.seq, self.ledger, wait=force)

    async def final_snapshot(self) -> bool:
        """A stop's snapshot, written before this returns; False when Redis did not answer it."""
        await self.checkpoint(force=True)
        if self._checkpoints.unreachable:
            log.warning("shard %d: final snapshots given up here, Redis not answering; the next start replays "
                        "the logs", self.shard)
        return not self._checkpoints.unreachable
