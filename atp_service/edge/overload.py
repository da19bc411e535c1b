"""Load shedding at the door: when the event loop itself falls behind, new calls are refused at once.

On one Python thread the queue that grows under overload is the event loop's, ahead of any shard
mailbox. A timer asks to wake every ``INTERVAL_S`` and measures how late it was woken (loop lag).
Late past ``max_loop_lag_ms`` several times in a row, the service is overloaded until a wake-up comes
on time, and for a cool-down after the last late one (a single long pause is not overload); the
servicer answers new calls with RESOURCE_EXHAUSTED before doing any work — a refusal costs a
fraction of a decision, so the backlog drains instead of growing until deadlines expire.

With no call for ``RECENT_S`` and the loop on time, the timer wakes every ``IDLE_INTERVAL_S``
instead: each wake-up of an idle process costs CPU (at every 20 ms, about 1 % of a core on a 2-core
VM, for nothing). A late wake-up (work without calls: streams, ingest) or a call brings it back to
``INTERVAL_S``; the first call after a quiet spell brings the next wake-up forward, unless it is
already overdue (its lateness is then measured, not thrown away).

Streams are not refused: each reads its next batch (one opened meanwhile, its first; a watch, its snapshot)
only once the loop is not overloaded (``until_calm``), so their callers' later batches wait in gRPC's flow
control instead of piling work onto the late thread — whose renewals of leased groups, health answers and
every other call wait behind it. Once the cool-down ends, the paused streams go on in the order they paused,
``RESUMED_PER_WAKE`` at each wake-up of the timer: let go all at once, up to ``max_reserve_streams``
batches landed on the thread together and overloaded it again at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque

from atp_service.metrics import EdgeMetrics

INTERVAL_S = 0.02
IDLE_INTERVAL_S = 0.25
"""The wake-up period while no call came for ``RECENT_S`` and the last wake-up was on time."""
RECENT_S = 2.0
"""A call this recent keeps the period at ``INTERVAL_S``: a burst that stalls the loop is measured
closely from its start."""
ON_TIME_S = 0.005
"""A wake-up later than this keeps the period at ``INTERVAL_S`` even without calls (the gauge then
follows a loop busy with streams or ingest)."""
COOLDOWN_S = 0.25
STREAK = 3
"""Late wake-ups in a row before shedding: one long pause (a collection, a big batch) is not overload."""
RESUMED_PER_WAKE = 16
"""Paused streams let go at each wake-up on time past a cool-down (every ``INTERVAL_S``): 800 a second."""


class LoopLagMonitor:
    """Measures the event loop's lag with a timer and says when new calls are to be refused."""

    def __init__(self, max_lag_ms: int, metrics: EdgeMetrics | None = None) -> None:
        metrics = metrics or EdgeMetrics()
        self._gauge, self._paused = metrics.loop_lag, metrics.stream_reads_paused
        self.limit_s = max_lag_ms / 1000
        self.lag_s = 0.0
        self._until = 0.0
        self._late = 0
        self._last_call = -RECENT_S
        """``time.monotonic()`` of the latest call asked about."""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._armed_at = 0.0
        self._interval = INTERVAL_S
        self._paused_streams: deque[asyncio.Future[None]] = deque()
        """Streams waiting for the loop, oldest first: let go ``RESUMED_PER_WAKE`` at each wake-up past a
        cool-down, all of them at the monitor's stop."""

    def start(self) -> None:
        if self.limit_s > 0 and self._timer is None:
            self._loop = asyncio.get_running_loop()
            self._arm(INTERVAL_S)

    async def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._resume(len(self._paused_streams))  # no wake-up will end a cool-down now: no stream waits for one

    def overloaded(self) -> bool:
        """Whether a new call is to be refused now. Asked on every call: time.monotonic, not the
        loop's clock (asyncio.get_running_loop makes a getpid system call on each use in Python
        3.11)."""
        now = time.monotonic()
        if self._interval == IDLE_INTERVAL_S:
            self._bring_forward()
        self._last_call = now
        # Still late at the last wake-up: overloaded whatever time has passed since. The cool-down alone,
        # counted from that wake-up, ran out inside a turn longer than it, so a loop late by more than
        # COOLDOWN_S a turn (the deeper the overload, the longer) let in every call after its first 0.25 s.
        return now < self._until or self._late >= STREAK

    async def until_calm(self, unless: asyncio.Event | None = None) -> None:
        """Returns once new calls would not be refused: an open stream's next batch is read only then,
        so that under overload its caller's later batches wait in gRPC's flow control rather than as
        work on this thread, which the shedding at the door does not bound. Batches taken go on being
        decided meanwhile, and nothing waited for here depends on another process: the lag drains.
        ``unless``: set, it returns at once (a stop's drain: the stream ends once its batches taken are
        answered, not cut at the end of the grace). Streams paused before it go first: it waits behind
        them even once the loop is calm. The wait is counted however it ends (cancelled too)."""
        if not self.overloaded() and not self._paused_streams:
            return
        started = time.monotonic()
        resumed = asyncio.get_running_loop().create_future()
        self._paused_streams.append(resumed)
        waits: list[asyncio.Future[object]] = [resumed]
        if unless is not None:
            waits.append(asyncio.ensure_future(unless.wait()))
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()
            if resumed.cancelled():  # not let go: out of the line
                self._forget(resumed)
            self._paused.inc(time.monotonic() - started)

    def _resume(self, count: int) -> None:
        """The ``count`` streams paused longest go on (those whose wait already ended are passed over)."""
        while count > 0 and self._paused_streams:
            resumed = self._paused_streams.popleft()
            if not resumed.done():
                resumed.set_result(None)
                count -= 1

    def _forget(self, resumed: asyncio.Future[None]) -> None:
        with contextlib.suppress(ValueError):  # let go already
            self._paused_streams.remove(resumed)

    def note(self, lag_s: float, now: float) -> None:
        self.lag_s = lag_s
        self._gauge.set(lag_s)
        self._late = self._late + 1 if lag_s > self.limit_s else 0
        if self._late >= STREAK:
            self._until = now + COOLDOWN_S
        elif now >= self._until:
            self._resume(RESUMED_PER_WAKE)

    def _bring_forward(self) -> None:
        """The first call after a quiet spell: the next wake-up at ``INTERVAL_S`` from now, unless
        the one armed is already overdue (it is then about to measure how late the loop is)."""
        timer, loop = self._timer, self._loop
        if timer is not None and loop is not None and loop.time() < timer.when():
            timer.cancel()
            self._arm(INTERVAL_S)

    def _arm(self, interval: float) -> None:
        assert self._loop is not None
        self._interval, self._armed_at = interval, self._loop.time()
        self._timer = self._loop.call_later(interval, self._woken)

    def _woken(self) -> None:
        assert self._loop is not None
        now = time.monotonic()
        try:
            self.note(max(0.0, self._loop.time() - self._armed_at - self._interval), now)
        finally:  # whatever happened, measuring goes on
            busy = now - self._last_call < RECENT_S or self.lag_s > ON_TIME_S
            self._arm(INTERVAL_S if busy else IDLE_INTERVAL_S)
