"""The clock a lease is counted on (R7): every clock of the host at once. A leased service process stops answering
for a group, and a publisher stops sending to its destination, once its lease may have run out by any of them."""

from __future__ import annotations

import math
import time
from collections.abc import Callable


def _boot_s() -> float:
    """``CLOCK_BOOTTIME``: the monotonic clock plus the time the host spent suspended (Linux)."""
    return time.clock_gettime(time.CLOCK_BOOTTIME)


def host_clocks() -> tuple[Callable[[], float], ...]:
    """The host's clocks a lease is counted on besides ``time.monotonic``: ``CLOCK_BOOTTIME`` where the
    platform has it (it counts a system suspend, which ``CLOCK_MONOTONIC`` does not) and the wall clock
    (set forward after a pause no other clock counted: a VM paused, resumed and resynced)."""
    return ((_boot_s,) if hasattr(time, "CLOCK_BOOTTIME") else ()) + (time.time,)


JUMP_S = 0.001
"""How far another clock must have drawn ahead of the monotonic one, past the furthest it had before, before the
lease clock follows it: less is the reads' own noise."""


class LeaseClock:
    """Seconds a lease is counted on here (R7): ``mono`` (``time.monotonic``), moved on besides by every stretch
    another of the host's clocks (``others``: ``host_clocks``) draws ahead of it past the furthest that clock had
    drawn before (the furthest of them, where several do so between two readings). So between any two readings it
    moves at least as far as each of them (to within ``JUMP_S``), but for what a clock only makes up of a fall
    behind the monotonic one (a wall clock put right after a step back; ``CLOCK_BOOTTIME`` never falls behind),
    and a lease deadline is passed once any of them says so: a clock that jumps ahead (a suspend counted by
    ``CLOCK_BOOTTIME``, the wall clock set forward) can only shorten a lease, one that stands still or steps back
    never lengthens it. Each clock's furthest lead is its own: one lead shared by them all (the furthest any had
    drawn) stayed up where the wall clock had once been set ahead and put right, and no suspend shorter than that
    moved the lease clock. Counted on ``time.monotonic`` alone, a host suspended past a lease woke with every
    deadline ahead, and answered reads of groups another process had taken and changed meanwhile. Injected
    (tests): ``mono``, ``others``."""

    __slots__ = ("_ahead_s", "_furthest", "_mono", "_others")

    def __init__(self, mono: Callable[[], float] = time.monotonic,
                 others: tuple[Callable[[], float], ...] | None = None) -> None:
        self._mono, self._others = mono, host_clocks() if others is None else others
        before = mono()
        # Each clock's lead at the start, read high (``mono`` read before it): never taken for a jump later.
        self._furthest = [clock() - before for clock in self._others]
        self._ahead_s = 0.0

    def now(self) -> float:
        readings = [clock() for clock in self._others]
        mono = self._mono()  # read after the others: their lead now read low, so a thread switch between the
        furthest, moved = self._furthest, 0.0  # reads (or a clock set back, then forward) is never taken for a jump
        for i, reading in enumerate(readings):  # written out: asked on every call a shard takes
            drawn = reading - mono - furthest[i]
            if drawn > JUMP_S:
                furthest[i] += drawn
                if drawn > moved:
                    moved = drawn
        self._ahead_s += moved
        return mono + self._ahead_s


class _Unleased(LeaseClock):
    __slots__ = ()

    def now(self) -> float:  # no clock read: asked on every call a shard takes
        return -math.inf


UNLEASED: LeaseClock = _Unleased(mono=lambda: -math.inf, others=())
"""The lease clock of a shard whose process owns the whole keyspace (no lease): no deadline ever passes."""
