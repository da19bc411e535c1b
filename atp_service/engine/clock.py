"""Clocks. The service stamps every command from one monotonic clock (R6); tests inject a manual one."""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def now_ms(self) -> int:
        """Milliseconds since the epoch; never goes back."""
        ...


class SystemClock:
    """Wall time that never goes back, even if the host clock is stepped backwards."""

    __slots__ = ("_last",)

    def __init__(self) -> None:
        self._last = 0

    def now_ms(self) -> int:
        now = time.time_ns() // 1_000_000
        if now < self._last:
            return self._last
        self._last = now
        return now

    def advance_floor(self, floor_ms: int) -> None:
        """After recovery: never stamp below the newest timestamp already in the log (R6)."""
        self._last = max(self._last, floor_ms)


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
