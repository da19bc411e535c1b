"""Load shedding at the door: when the event loop itself falls behind, new calls are refused at once.

On one Python thread the queue that grows under overload is the event loop's, ahead of any shard
mailbox. A monitor task asks to wake every ``interval`` and measures how late it was woken (loop
lag). Late past ``max_loop_lag_ms`` several times in a row, the service is overloaded for a cool-down
(a single long pause is not overload), and the servicer answers
new calls with RESOURCE_EXHAUSTED before doing any work — a refusal costs a fraction of a
decision, so the backlog drains instead of growing until deadlines expire.
"""

from __future__ import annotations

import asyncio
import time

from atp_service.metrics import EdgeMetrics
from atp_service.tasks import cancel_and_wait

INTERVAL_S = 0.02
COOLDOWN_S = 0.25
STREAK = 3
"""Late wake-ups in a row before shedding: one long pause (a collection, a big batch) is not overload."""


class LoopLagMonitor:
    def __init__(self, max_lag_ms: int, metrics: EdgeMetrics | None = None) -> None:
        self._gauge = (metrics or EdgeMetrics()).loop_lag
        self.limit_s = max_lag_ms / 1000
        self.lag_s = 0.0
        self._until = 0.0
        self._late = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self.limit_s > 0:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="loop-lag")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)

    @property
    def overloaded(self) -> bool:
        # Asked on every call: time.monotonic, not the loop's clock (asyncio.get_running_loop makes
        # a getpid system call on each use in Python 3.11).
        return self.limit_s > 0 and time.monotonic() < self._until

    def note(self, lag_s: float, now: float) -> None:
        self.lag_s = lag_s
        self._gauge.set(lag_s)
        self._late = self._late + 1 if lag_s > self.limit_s else 0
        if self._late >= STREAK:
            self._until = now + COOLDOWN_S

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            asked = loop.time()
            await asyncio.sleep(INTERVAL_S)
            now = loop.time()
            self.note(max(0.0, now - asked - INTERVAL_S), time.monotonic())
