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
"""How far another clock must have drawn ahead of the monotonic one before the lease clock follows it: less is
the reads' own noise."""


class LeaseClock:
    """Seconds a lease is counted on here (R7): ``mono`` (``time.monotonic``) plus the furthest any other of the
    host's clocks (``others``: ``host_clocks``) has drawn ahead of it since this clock began. So it has moved at
    least as far as each of them (to within ``JUMP_S``), and a lease deadline is passed once any of them says so:
    a clock that jumps ahead (a suspend counted by ``CLOCK_BOOTTIME`` alone, the wall clock set forward) can only
    shorten a lease, one that stands still or steps back never lengthens it. Counted on ``time.monotonic`` alone,
    a host suspended past a lease woke with every deadline ahead, and answered reads of groups another process
    had taken and changed meanwhile. Injected (tests): ``mono``, ``others``."""

    __slots__ = ("_ahead_s", "_base", "_mono", "_others")

    def __init__(self, mono: Callable[[], float] = time.monotonic,
                 others: tuple[Callable[[], float], ...] | None = None) -> None:
        self._mono, self._others = mono, host_clocks() if others is None else others
        before = mono()
        # Each clock's lead at the start, read high (``mono`` read before it): never taken for a jump later.
        self._base = [clock() - before for clock in self._others]
        self._ahead_s = 0.0

    def now(self) -> float:
        readings = [clock() for clock in self._others]
        mono = self._mono()  # read after the others: their lead now read low, so a thread switch between the
        ahead = self._ahead_s  # reads (or a clock set back, then forward to where it was) is never taken for a jump
        for reading, base in zip(readings, self._base, strict=True):  # written out: asked on every call a shard takes
            drawn = reading - mono - base
            if drawn > ahead + JUMP_S:
                ahead = drawn
        self._ahead_s = ahead
        return mono + ahead


class _Unleased(LeaseClock):
    __slots__ = ()

    def now(self) -> float:  # no clock read: asked on every call a shard takes
        return -math.inf


UNLEASED: LeaseClock = _Unleased(mono=lambda: -math.inf, others=())
"""The lease clock of a shard whose process owns the whole keyspace (no lease): no deadline ever passes."""
