"""Load shedding at the door: when the event loop itself falls behind, new calls are refused at once.

On one Python thread the queue that grows under overload is the event loop's, ahead of any shard
mailbox. A timer asks to wake every ``INTERVAL_S`` and measures how late it was woken (loop lag).
Late past ``max_loop_lag_ms`` several times in a row, the service is overloaded for a cool-down (a
single long pause is not overload), and the servicer answers new calls with RESOURCE_EXHAUSTED
before doing any work — a refusal costs a fraction of a decision, so the backlog drains instead of
growing until deadlines expire.

With no call arriving and the loop on time, the timer wakes every ``IDLE_INTERVAL_S`` instead: each
wake-up of an idle process costs CPU (at every 20 ms, about 1 % of a core on a 2-core VM, for
nothing). The first call after a quiet spell brings the next wake-up forward.
"""

from __future__ import annotations

import asyncio
import time

from atp_service.metrics import EdgeMetrics

INTERVAL_S = 0.02
IDLE_INTERVAL_S = 1.0
"""The wake-up period while no call has arrived since the last one and the loop was on time."""
COOLDOWN_S = 0.25
STREAK = 3
"""Late wake-ups in a row before shedding: one long pause (a collection, a big batch) is not overload."""


class LoopLagMonitor:
    """Measures the event loop's lag with a timer and says when new calls are to be refused."""

    def __init__(self, max_lag_ms: int, metrics: EdgeMetrics | None = None) -> None:
        self._gauge = (metrics or EdgeMetrics()).loop_lag
        self.limit_s = max_lag_ms / 1000
        self.lag_s = 0.0
        self._until = 0.0
        self._late = 0
        self._called = False
        """A call has asked since the last wake-up: measure at ``INTERVAL_S``."""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._armed_at = 0.0
        self._interval = INTERVAL_S

    def start(self) -> None:
        if self.limit_s > 0:
            self._loop = asyncio.get_running_loop()
            self._arm(INTERVAL_S)

    async def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def overloaded(self) -> bool:
        """Whether a new call is to be refused now. Asked on every call: time.monotonic, not the
        loop's clock (asyncio.get_running_loop makes a getpid system call on each use in Python
        3.11). The first call after a quiet spell brings the next measurement forward."""
        if not self._called:
            self._called = True
            if self._interval == IDLE_INTERVAL_S and self._timer is not None:
                self._timer.cancel()
                self._arm(INTERVAL_S)
        return self.limit_s > 0 and time.monotonic() < self._until

    def note(self, lag_s: float, now: float) -> None:
        self.lag_s = lag_s
        self._gauge.set(lag_s)
        self._late = self._late + 1 if lag_s > self.limit_s else 0
        if self._late >= STREAK:
            self._until = now + COOLDOWN_S

    def _arm(self, interval: float) -> None:
        assert self._loop is not None
        self._interval, self._armed_at = interval, self._loop.time()
        self._timer = self._loop.call_later(interval, self._woken)

    def _woken(self) -> None:
        assert self._loop is not None
        self.note(max(0.0, self._loop.time() - self._armed_at - self._interval), time.monotonic())
        # Late, or calls arriving: keep measuring closely (a streak needs wake-ups close together).
        self._arm(INTERVAL_S if self._called or self._late else IDLE_INTERVAL_S)
        self._called = False
