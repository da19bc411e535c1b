"""A shard actor: one asyncio task owns one Ledger and works through a bounded mailbox.

No locks: only this task touches its ledger, except a coordinator that first
pauses it (see ``engine``). Each turn drains up to ``batch_max`` messages,
applies them, appends the resulting events as one log entry (group commit) and
only then answers (R7). An append whose outcome is unknown is settled by
reading the log before the shard takes another message.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from redis.exceptions import RedisError

from reservation import DomainError, Ledger, LogEntry, Unavailable, encode_entry
from reservation._errors import ResourceExhausted

from .clock import Clock
from .config import ServiceConfig
from .log import Fenced, LogStore
from .messages import Answer, Control, Envelope, InFlight, Work, deliver
from .metrics import METRICS
from .tasks import cancel_and_wait

log = logging.getLogger(__name__)

STORAGE_ERRORS = (RedisError, OSError, asyncio.TimeoutError)
REPLACED = ("this instance was replaced by a newer one on the same Redis keyspace and takes no more "
            "changes; retry (the newer instance answers)")
SNAPSHOT_RETRY_FIRST_S = 1.0
"""Wait after a first failed snapshot (capped by ``ServiceConfig.snapshot_retry_max_s``)."""


class ShardActor:
    def __init__(self, shard: int, ledger: Ledger, log_store: LogStore, clock: Clock,
                 config: ServiceConfig, seq: int) -> None:
        self.shard = shard
        self.ledger = ledger
        self.seq = seq  # the last entry durable in this shard's log
        self._log = log_store
        self._clock = clock
        self._config = config
        self._mailbox: asyncio.Queue[Envelope] = asyncio.Queue(config.mailbox_size)
        self._task: asyncio.Task[None] | None = None
        self._held: deque[Envelope] = deque()  # taken from the mailbox but behind a control message
        self._inflight: deque[InFlight] = deque()  # appended, not yet durable; oldest first
        self._doubt: list[tuple[int, LogEntry]] = []  # failed appends that may have landed
        self._stopping = False
        self._maintain_queued = False
        self._snapshot_seq = seq
        self._snapshot_at = time.monotonic()
        self._snapshot_failures = 0
        self._snapshot_retry_at = 0.0  # monotonic time before which a failed snapshot is not retried
        self._depth = METRICS.mailbox_depth.labels(str(shard))
        self._lag_s = 0.0  # how long the message taken last had waited in the mailbox
        self._max_delay_s = config.max_queue_delay_ms / 1000
        self.listeners: list[Callable[[int, LogEntry], None]] = []
        """Called with every entry once it is durable (channel feeds); must not raise or block."""

    @property
    def in_doubt(self) -> bool:
        """Appends failed and are not yet settled: the log is unreachable from here."""
        return bool(self._doubt)

    # -- lifecycle ---------------------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"shard-{self.shard}")

    async def stop(self) -> None:
        """Finish the batch in hand, then fail whatever is still waiting (cleanly, not silently)."""
        self._stopping = True
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._drain(), timeout=self._config.redis_timeout_s * 2)
        await cancel_and_wait(self._task)
        while not self._mailbox.empty():
            env = self._mailbox.get_nowait()
            if not env.reply.done():
                env.reply.set_exception(Unavailable("service is shutting down"))

    # -- sending -------------------------------------------------------------
    def submit(self, work: Work) -> asyncio.Future[Any]:
        """Queue work for this shard; refuse at once when the shard cannot take it."""
        if self._stopping:
            raise Unavailable("service is shutting down")
        if self._log.fenced:
            raise Unavailable(REPLACED)
        if self._doubt:
            raise Unavailable(f"shard {self.shard}: log storage unreachable, retry later")
        if self._lag_s > self._max_delay_s and not self._mailbox.empty():
            METRICS.shed.inc()
            raise ResourceExhausted(
                f"shard {self.shard}: overloaded (queued work waits {self._lag_s * 1000:.0f} ms, limit "
                f"max_queue_delay_ms={self._config.max_queue_delay_ms}), retry with backoff")
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        try:
            self._mailbox.put_nowait(Envelope(work, fut))
        except asyncio.QueueFull:
            METRICS.shed.inc()
            raise ResourceExhausted(
                f"shard {self.shard}: mailbox full ({self._config.mailbox_size} waiting), retry with backoff"
            ) from None
        return fut

    async def pause(self) -> asyncio.Future[None]:
        """Wait until this shard is between batches and parked; set the returned future to resume it."""
        if self._doubt:
            raise Unavailable(f"shard {self.shard}: log storage unreachable, retry later")
        resume: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        paused: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        await self._mailbox.put(Envelope(Control("pause", resume), paused))
        await paused
        return resume

    def request_maintenance(self) -> None:
        # One maintain message at most waits at a time: a shard stuck settling must not fill its
        # mailbox with them.
        if not self._stopping and not self._maintain_queued and not self._mailbox.full():
            self._maintain_queued = True
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._mailbox.put_nowait(Envelope(Control("maintain"), fut))

    # -- the open batch's fate when a coordinator holds this shard paused (nothing in flight) --
    def open_entry(self, now: int) -> tuple[int, LogEntry] | None:
        if not self.ledger.pending:
            return None
        assert not self._inflight, "a paused shard has nothing in flight"
        return self.seq + 1, LogEntry(now, list(self.ledger.open_events))

    def landed(self, seq: int, now: int) -> None:
        assert seq == self.seq + 1, "log entries must be consecutive"
        entry = self.ledger.commit(now)
        self.seq = seq
        self._durable(entry)

    def _durable(self, entry: LogEntry) -> None:
        for listener in self.listeners:
            try:
                listener(self.shard, entry)
            except Exception:  # a listener's bug must not break the commit path
                log.exception("shard %d: durable-entry listener failed", self.shard)

    def not_landed(self, seq: int, entry: LogEntry, error: BaseException) -> None:
        """The append failed: undo it in memory at once (reads must not show it), settle it later
        (unless it was fenced: then it certainly did not land)."""
        METRICS.append_failures.inc()
        self.ledger.rollback()
        if not isinstance(error, Fenced):
            self._doubt.append((seq, entry))

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
        entry, undo = ledger.seal(now)
        seq = self.seq + 1 + len(self._inflight)
        done = self._log.submit(self.shard, seq, encode_entry(entry))
        self._inflight.append(InFlight(seq, entry, undo, answers, done))
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
            self._durable(head.entry)

    def _fail_in_flight(self, error: BaseException | None) -> None:
        """An append failed: revert every batch in flight (newest first), answer UNAVAILABLE,
        keep later entries out of the log, and remember them all to settle."""
        METRICS.append_failures.inc()
        log.warning("shard %d: append of entry %d failed (%s)", self.shard, self._inflight[0].seq, error)
        # Fenced: refused before any write, and every later append is refused too (the epoch only
        # grows), so nothing in flight landed and there is nothing to settle.
        replaced = isinstance(error, Fenced)
        failure = Unavailable(REPLACED if replaced else
                              f"shard {self.shard}: change not durable (log storage unreachable)")
        for rec in reversed(self._inflight):
            self.ledger.revert(rec.undo)
            rec.done.cancel()
            deliver([(reply, None, failure) for reply, _, _ in rec.answers])
        if not replaced:
            self._doubt.extend((rec.seq, rec.entry) for rec in self._inflight)
        self._inflight.clear()
        self._refuse_waiting(failure)

    def _refuse_waiting(self, error: Unavailable) -> None:
        """Until the doubt is settled (Redis answering again) nothing here can be decided:
        answer what is waiting now instead of letting it run into its deadline."""
        waiting = list(self._held)
        self._held.clear()
        while not self._mailbox.empty():
            waiting.append(self._mailbox.get_nowait())
        for env in waiting:
            if env.reply.done():
                continue
            if isinstance(env.message, Control) and env.message.kind == "maintain":
                self._maintain_queued = False
                env.reply.set_result(None)
            else:
                env.reply.set_exception(error)  # a coordinator's pause fails too, and it gives up

    def _blocked(self) -> bool:
        """Nothing more may be applied now: a doubt to settle, or pipeline_depth entries in flight."""
        return bool(self._doubt) or len(self._inflight) >= self._config.pipeline_depth

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
        """Find out which failed appends reached the log anyway; until then this shard takes no work."""
        delay = 0.05
        while True:
            try:
                last = await self._log.last_seq(self.shard)
                # Asked after the read: entries up to ``last`` are then this instance's own. Replaced,
                # they may be a newer instance's — which recovered whatever of ours had landed.
                owner = await self._log.still_owner()
                break
            except STORAGE_ERRORS:
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
        if not owner:
            self._doubt.clear()  # this instance takes no more work (submit refuses) and stops
            return
        for seq, entry in self._doubt:
            if seq <= last:
                log.warning("shard %d: entry %d did land; applying it (its callers were told UNAVAILABLE)",
                            self.shard, seq)
                self.ledger.replay(entry)
                self.seq = seq
                self._durable(entry)
        self._doubt.clear()

    # -- the actor loop ------------------------------------------------------
    async def _run(self) -> None:
        mailbox, limit, held = self._mailbox, self._config.batch_max, self._held
        while True:
            first = held.popleft() if held else await mailbox.get()
            self._lag_s = time.monotonic() - first.at
            if isinstance(first.message, Control):
                await self._control(first)
                continue
            if self._blocked():
                # Wait with the message back in line: should the wait end in doubt (an append
                # failed), _refuse_waiting answers it too instead of leaving it to its deadline.
                held.appendleft(first)
                await self._ready()
                continue
            batch = [first]
            while len(batch) < limit and (held or not mailbox.empty()):
                env = held.popleft() if held else mailbox.get_nowait()
                if isinstance(env.message, Control):
                    held.appendleft(env)  # a control message closes the batch; it runs next
                    break
                batch.append(env)
            self._depth.set(mailbox.qsize() + len(held))
            self._apply(batch)

    def _apply(self, batch: list[Envelope]) -> None:
        ledger, now = self.ledger, self._clock.now_ms()
        answers: list[Answer] = []
        for env in batch:
            if env.reply.done():  # the caller gave up (deadline or cancel): do not apply
                continue
            work = env.message
            assert not isinstance(work, Control)
            try:
                answers.append((env.reply, work(ledger, now), None))
            except DomainError as exc:
                answers.append((env.reply, None, exc))
        METRICS.batch_size.observe(len(answers))
        self._seal(now, answers)

    async def _control(self, env: Envelope) -> None:
        control = env.message
        assert isinstance(control, Control)
        if env.reply.done():  # refused while in doubt, or the coordinator gave up
            return
        if control.kind == "pause":
            assert control.resume is not None
            # A coordinator needs memory == durable log, and must not wait on a Redis outage.
            while self._inflight:
                await asyncio.wait([rec.done for rec in self._inflight])
            if self._doubt:
                env.reply.set_exception(Unavailable(f"shard {self.shard}: log storage unreachable, retry later"))
                return
            env.reply.set_result(None)
            await control.resume
        elif control.kind == "maintain":
            self._maintain_queued = False
            env.reply.set_result(None)
            # Draining holds this shard's new work behind its appends in flight, and every shard is
            # asked at once: only when there is something to do (it was a stall of every shard
            # each maintenance pass, 100 ms apart, at any load).
            if self._doubt or self.ledger.has_old_facts() or self._snapshot_due():
                await self._drain()  # a snapshot needs memory == durable log
                self.ledger.forget_old_facts()
                await self.checkpoint()

    async def checkpoint(self, force: bool = False) -> None:
        """Snapshot when enough has been logged since the last one (or, with ``force``, anything)."""
        if self._snapshot_due(force):
            await self._snapshot()

    def _snapshot_due(self, force: bool = False) -> bool:
        entries = self.seq - self._snapshot_seq
        due = entries >= self._config.snapshot_every_entries or (
            entries and time.monotonic() - self._snapshot_at >= self._config.snapshot_interval_s
        )
        if not (due or (force and entries)):
            return False
        # Backing off after a failure: each try costs time in proportion to the state.
        return force or time.monotonic() >= self._snapshot_retry_at

    async def _snapshot(self) -> None:
        if self._inflight or self._doubt:
            # Memory holds batches the log may not: a snapshot now could count them twice on replay.
            log.warning("shard %d: snapshot skipped, %d entries not yet durable", self.shard,
                        len(self._inflight) + len(self._doubt))
            return
        started = time.perf_counter()
        self.ledger.compact()
        try:
            size = await self._log.save_snapshot(self.shard, self.seq, self.ledger.snapshot())
        except STORAGE_ERRORS as exc:
            self._snapshot_failures += 1
            wait = min(SNAPSHOT_RETRY_FIRST_S * 2 ** min(self._snapshot_failures - 1, 20),
                       self._config.snapshot_retry_max_s)
            self._snapshot_retry_at = time.monotonic() + wait
            METRICS.snapshot_failures.inc()
            log.warning("shard %d: snapshot failed (%s); next try in %.1fs", self.shard, exc, wait)
            return
        self._snapshot_failures, self._snapshot_retry_at = 0, 0.0
        self._snapshot_seq, self._snapshot_at = self.seq, time.monotonic()
        METRICS.snapshot_seconds.observe(time.perf_counter() - started)
        METRICS.snapshot_bytes.labels(str(self.shard)).set(size)
