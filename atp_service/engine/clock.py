"""Clocks. The service stamps every command from one monotonic clock (R6); tests inject a manual one."""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def now_ms(self) -> int:
        """Milliseconds since the epoch; never goes back."""
        ...


class SystemClock:
    """Wall time that never goes back and never stands still (R6). Behind the newest timestamp it gave
    or was floored to (a step backwards, a restart on a log stamped ahead), it counts on from that
    timestamp at the host's monotonic rate instead of repeating it until the wall clock caught up —
    which stopped every TTL for as long as the step; it follows the wall clock again once that is ahead."""

    __slots__ = ("_anchor_ms", "_anchor_ns")

    def __init__(self) -> None:
        self._anchor_ms = 0  # a timestamp this clock gave or was floored to...
        self._anchor_ns = time.monotonic_ns()  # ...and the monotonic instant it stood for

    def now_ms(self) -> int:
        mono = time.monotonic_ns()
        counted = self._anchor_ms + (mono - self._anchor_ns) // 1_000_000
        wall = time.time_ns() // 1_000_000
        if wall < counted:
            return counted
        self._anchor_ms, self._anchor_ns = wall, mono
        return wall

    def advance_floor(self, floor_ms: int) -> None:
        """After recovery: never stamp below the newest timestamp already in the log (R6)."""
        if floor_ms > self.now_ms():
            self._anchor_ms, self._anchor_ns = floor_ms, time.monotonic_ns()


class ManualClock:
    """A clock that moves only when told to: time-dependent behaviour is tested without sleeping."""

    __slots__ = ("_now",)

    def __init__(self, start_ms: int = 1_700_000_000_000) -> None:
        self._now = start_ms

    def now_ms(self) -> int:
        return self._now

    def advance(self, ms: int) -> int:
        assert ms >= 0, "a clock never goes back"
        self._now += ms
        return self._now

    def advance_floor(self, floor_ms: int) -> None:
        self._now = max(self._now, floor_ms)
