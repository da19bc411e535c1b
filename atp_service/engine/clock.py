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

    def mono_ns(self) -> int:
        return self._mono_ns()

    def advance_floor(self, floor_ms: int) -> None:
        """After recovery: never stamp below the newest timestamp already in the log (R6)."""
        if floor_ms > self.now_ms():
            self._anchor_ms, self._anchor_ns = floor_ms, self._mono_ns()


class CountingClock(Clock, Protocol):
    """A process's clock: the timestamps it gives, the monotonic clock it counts on (never stepped), and
    the floor recovery raises it to."""

    def mono_ns(self) -> int:
        """Nanoseconds on the host's monotonic clock: what a taken group's clock counts on (``GroupClock``)."""
        ...

    def advance_floor(self, floor_ms: int) -> None:
        """Never give a timestamp below ``floor_ms`` from now on: recovery raises it to the newest one
        logged (R6), so that a process restarted on a host whose clock is behind never stamps below its log."""
        ...


class GroupClock:
    """The clock of one shard group a process took over (R6): never below what the group's previous owner
    logged, counting on from it at the host's monotonic rate, and the process's own clock once that is as far
    (a step forward, NTP): from then on the lead is gone for good, the process's clock counting on at least at
    that rate. A lead kept for good (the process's clock plus how far the log was ahead when taken) grew by a
    gap at each move from a host ahead to one behind while their clocks were stepped forward in turn: stamps ran
    further ahead of every host than the order-id-reuse rules allow (R3: hosts' clocks within an eighth of the
    retention). The groups the process already served keep its own clock: raising that to a taken group's
    newest timestamp moved every hold it had granted closer to expiry by the whole gap (a 10-minute hold expired
    at once after taking a group from a process whose clock ran an hour ahead)."""

    __slots__ = ("_base", "_logged_ms", "_taken_ns")

    def __init__(self, base: CountingClock, logged_ms: int) -> None:
        self._base, self._logged_ms = base, logged_ms
        self._taken_ns: int | None = base.mono_ns()  # None: the process's clock overtook the logged one

    def now_ms(self) -> int:
        now = self._base.now_ms()
        if self._taken_ns is None:
            return now
        counted = self._logged_ms + (self._base.mono_ns() - self._taken_ns) // 1_000_000
        if now >= counted:
            self._taken_ns = None  # never ahead again: the process's clock counts on at least at the monotonic rate
            return now
        return counted


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

    def mono_ns(self) -> int:
        """Time passes for a manual clock only as it is moved on: it is its own monotonic clock."""
        return self._now * 1_000_000
