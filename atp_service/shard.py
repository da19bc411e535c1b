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
from typing import Any, TypeVar

from redis.exceptions import RedisError

from reservation import DomainError, Ledger, LogEntry, Unavailable, encode_entry
from reservation._errors import ResourceExhausted

from .clock import Clock
from .config import ServiceConfig
from .log import LogStore
from .metrics import METRICS

log = logging.getLogger(__name__)

T = TypeVar("T")
Work = Callable[[Ledger, int], Any]
STORAGE_ERRORS = (RedisError, OSError, asyncio.TimeoutError)


class Envelope:
    """A message and the future its answer goes to."""

    __slots__ = ("message", "reply")

    def __init__(self, message: Work | _Control, reply: asyncio.Future[Any]) -> None:
        self.message = message
        self.reply = reply


class _Control:
    """Messages about the actor itself, handled between batches."""

    __slots__ = ("kind", "resume")

    def __init__(self, kind: str, resume: asyncio.Future[None] | None = None) -> None:
        self.kind = kind
        self.resume = resume


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
        self._doubt: tuple[int, LogEntry] | None = None
        self._stopping = False
        self._snapshot_seq = seq
        self._snapshot_at = time.monotonic()
        self._depth = METRICS.mailbox_depth.labels(str(shard))

    # -- lifecycle ---------------------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"shard-{self.shard}")

    async def stop(self) -> None:
        """Finish the batch in hand, then fail whatever is still waiting (cleanly, not silently)."""
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        while not self._mailbox.empty():
            env = self._mailbox.get_nowait()
            if not env.reply.done():
                env.reply.set_exception(Unavailable("service is shutting down"))

    # -- sending -------------------------------------------------------------
    def submit(self, work: Work) -> asyncio.Future[Any]:
        """Queue work for this shard; refuse at once when the shard cannot take it."""
        if self._stopping:
            raise Unavailable("service is shutting down")
        if self._doubt is not None:
            raise Unavailable(f"shard {self.shard}: log storage unreachable, retry later")
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
        resume: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        paused: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        await self._mailbox.put(Envelope(_Control("pause", resume), paused))
        await paused
        return resume

    def request_maintenance(self) -> None:
        if not self._stopping and not self._mailbox.full():
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._mailbox.put_nowait(Envelope(_Control("maintain"), fut))

    # -- the open batch's fate (also used by a coordinator while this shard is paused) --
    def open_entry(self, now: int) -> tuple[int, LogEntry] | None:
        if not self.ledger.pending:
            return None
        return self.seq + 1, LogEntry(now, list(self.ledger.open_events))

    def landed(self, seq: int, now: int) -> None:
        assert seq == self.seq + 1, "log entries must be consecutive"
        self.ledger.commit(now)
        self.seq = seq

    def not_landed(self, seq: int, entry: LogEntry) -> None:
        """The append failed: undo it in memory at once (reads must not show it), settle it later."""
        METRICS.append_failures.inc()
        self.ledger.rollback()
        self._doubt = (seq, entry)

    async def _settle(self) -> None:
        """Find out whether the failed append reached the log; until then this shard takes no work."""
        assert self._doubt is not None
        seq, entry = self._doubt
        delay = 0.05
        while True:
            try:
                landed = await self._log.last_seq(self.shard) >= seq
                break
            except STORAGE_ERRORS:
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
        if landed:
            log.warning("shard %d: entry %d did land; applying it (its callers were told UNAVAILABLE)",
                        self.shard, seq)
            self.ledger.replay(entry)
            self.seq = seq
        self._doubt = None

    # -- the actor loop ------------------------------------------------------
    async def _run(self) -> None:
        mailbox, limit = self._mailbox, self._config.batch_max
        held: deque[Envelope] = deque()  # taken from the mailbox but behind a control message
        while True:
            first = held.popleft() if held else await mailbox.get()
            if isinstance(first.message, _Control):
                await self._control(first)
                continue
            batch = [first]
            while len(batch) < limit and (held or not mailbox.empty()):
                env = held.popleft() if held else mailbox.get_nowait()
                if isinstance(env.message, _Control):
                    held.appendleft(env)  # a control message closes the batch; it runs next
                    break
                batch.append(env)
            self._depth.set(mailbox.qsize() + len(held))
            await self._apply(batch)

    async def _apply(self, batch: list[Envelope]) -> None:
        if self._doubt is not None:  # never build on a state that may lack a landed entry
            await self._settle()
        ledger, now = self.ledger, self._clock.now_ms()
        answers: list[tuple[asyncio.Future[Any], Any, BaseException | None]] = []
        for env in batch:
            if env.reply.done():  # the caller gave up (deadline or cancel): do not apply
                continue
            work = env.message
            assert not isinstance(work, _Control)
            try:
                answers.append((env.reply, work(ledger, now), None))
            except DomainError as exc:
                answers.append((env.reply, None, exc))
        METRICS.batch_size.observe(len(answers))
        if not ledger.pending:
            ledger.commit(now)  # nothing to log; close the batch so its undo steps are dropped
        elif not await self._append(now):
            failure = Unavailable(f"shard {self.shard}: change not durable (log storage unreachable)")
            answers = [(reply, None, failure) for reply, _, _ in answers]
        for reply, result, error in answers:
            if reply.done():
                continue
            if error is None:
                reply.set_result(result)
            else:
                reply.set_exception(error)

    async def _append(self, now: int) -> bool:
        """Make the open batch durable. False (and state rolled back) when that is not certain."""
        opened = self.open_entry(now)
        assert opened is not None
        seq, entry = opened
        try:
            await self._log.append(self.shard, seq, encode_entry(entry))
        except STORAGE_ERRORS as exc:
            log.warning("shard %d: append of entry %d failed (%s)", self.shard, seq, exc)
            self.not_landed(seq, entry)
            return False
        self.landed(seq, now)
        return True

    async def _control(self, env: Envelope) -> None:
        control = env.message
        assert isinstance(control, _Control)
        if self._doubt is not None:
            await self._settle()
        if control.kind == "pause":
            assert control.resume is not None
            env.reply.set_result(None)
            await control.resume
        elif control.kind == "maintain":
            env.reply.set_result(None)
            await self._maybe_snapshot()

    async def _maybe_snapshot(self, force: bool = False) -> None:
        entries = self.seq - self._snapshot_seq
        due = entries >= self._config.snapshot_every_entries or (
            entries and time.monotonic() - self._snapshot_at >= self._config.snapshot_interval_s
        )
        if not (due or (force and entries)):
            return
        await self.snapshot()

    async def snapshot(self) -> None:
        started = time.perf_counter()
        self.ledger.compact()
        try:
            size = await self._log.save_snapshot(self.shard, self.seq, self.ledger.snapshot())
        except STORAGE_ERRORS as exc:
            log.warning("shard %d: snapshot failed (%s); will retry", self.shard, exc)
            return
        self._snapshot_seq, self._snapshot_at = self.seq, time.monotonic()
        METRICS.snapshot_seconds.observe(time.perf_counter() - started)
        METRICS.snapshot_bytes.labels(str(self.shard)).set(size)
