"""Clocks. The service stamps every command from one monotonic clock (R6); tests inject a manual one."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

Ticks = Callable[[], float]
"""Seconds on a monotonic clock: what a component's waits and deadlines are measured on (``time.monotonic`` in the
service). Handed in, not read from ``time``: the deterministic simulation hands its world's clock, so that a seed's
schedule does not depend on how fast the host runs it."""


class Clock(Protocol):
    def now_ms(self) -> int:
        """Milliseconds since the epoch; never goes back."""
        ...


class SystemClock:
    """Wall time that never goes back and never stands still (R6). Behind the newest timestamp it gave
    or was floored to (a step backwards, a restart on a log stamped ahead), it counts on from that
    timestamp at the host's monotonic rate instead of repeating it until the wall clock caught up —
    which stopped every TTL for as long as the step; it follows the wall clock again once that is ahead."""

    __slots__ = ("_anchor_ms", "_anchor_ns", "_mono_ns", "_wall_ns")

    def __init__(self, wall_ns: Callable[[], int] | None = None, mono_ns: Callable[[], int] | None = None) -> None:
        """``wall_ns``, ``mono_ns``: the host's wall and monotonic clocks (``time``'s when None); the
        deterministic simulation gives each simulated host its own, skewed and stepped back (tests/sim/skew.py)."""
        self._wall_ns, self._mono_ns = wall_ns or time.time_ns, mono_ns or time.monotonic_ns
        self._anchor_ms = 0  # a timestamp this clock gave or was floored to...
        self._anchor_ns = self._mono_ns()  # ...and the monotonic instant it stood for

    def now_ms(self) -> int:
        mono = self._mono_ns()
        counted = self._anchor_ms + (mono - self._anchor_ns) // 1_000_000
        wall = self._wall_ns() // 1_000_000
        if wall < counted:
            return counted
        self._anchor_ms, self._anchor_ns = wall, mono
        return wall

    def advance_floor(self, floor_ms: int) -> None:
        """After recovery: never stamp below the newest timestamp already in the log (R6)."""
        if floor_ms > self.now_ms():
            self._anchor_ms, self._anchor_ns = floor_ms, self._mono_ns()


class GroupClock:
    """The clock of one shard group a process took over (R6): the process's own clock plus how far the
    group's log was stamped ahead of it when taken (0 when not ahead). Its stamps never go below what
    the group's previous owner logged, and count on at the process clock's rate, while the groups the
    process already served keep its own clock: raising that to a taken group's newest timestamp moved
    every hold it had granted closer to expiry by the whole gap (a 10-minute hold expired at once after
    taking a group from a process whose clock ran an hour ahead)."""

    __slots__ = ("_base", "_gap_ms")

    def __init__(self, base: Clock, logged_ms: int) -> None:
        self._base = base
        self._gap_ms = max(0, logged_ms - base.now_ms())

    def now_ms(self) -> int:
        return self._base.now_ms() + self._gap_ms


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
